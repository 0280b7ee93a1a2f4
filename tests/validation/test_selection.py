"""Nested selection: a setting chosen on the training folds only."""

from __future__ import annotations

import numpy as np

from medlens_validation.selection import choose_by_cv, nested_out_of_fold


def test_the_best_mean_held_out_score_wins_and_ties_keep_the_first() -> None:
    folds = np.repeat(np.arange(4), 5)
    labels = np.tile([0, 1, 0, 1, 1], 4)
    seen: list[tuple[str, int]] = []

    def score(option: str, train: np.ndarray, test: np.ndarray) -> float:
        assert not (train & test).any() and (train | test).all()
        (k,) = set(folds[test].tolist())
        seen.append((option, k))
        # Exact binary fractions: b, c and d all average 0.625, a 0.5.
        return {"a": 0.5, "b": 0.75 if k else 0.25, "c": 0.625, "d": 0.625}[option]

    assert choose_by_cv(["a", "b", "c", "d"], folds, labels, score, "x") == "b"
    assert choose_by_cv(["a", "c", "b"], folds, labels, score, "x") == "c"
    # Every option was scored on every fold, each fold held out once.
    assert sorted(seen[:16]) == sorted((o, k) for o in "abcd" for k in range(4))


def test_default_when_it_cannot_be_told() -> None:
    def never(option: int, train: np.ndarray, test: np.ndarray) -> float:
        raise AssertionError("must not be called")

    one_fold = np.zeros(10, int)
    assert choose_by_cv([1, 2], one_fold, np.tile([0, 1], 5), never, 7) == 7
    # A held-out fold with one class only has no AUROC.
    folds = np.array([0, 0, 0, 1, 1, 1])
    assert choose_by_cv([1, 2], folds, np.array([0, 1, 0, 1, 1, 1]), never, 7) == 7


def test_nested_out_of_fold_never_lets_a_fold_choose_or_fit_for_itself() -> None:
    folds = np.repeat(np.arange(4), 6)
    labels = np.tile([0, 1, 1, 0, 1, 0], 4)
    calls: list[tuple[int, np.ndarray, np.ndarray]] = []

    def fit_predict(option: int, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        assert train.shape == test.shape == folds.shape and not (train & test).any()
        calls.append((option, train.copy(), test.copy()))
        # Option k scores a case by whether its fold is k: the held-out score of option k
        # is the AUROC of nothing, except where the inner choice could see fold k itself.
        return np.where(folds[test] == option, labels[test], 0.5).astype(np.float64)

    def metric(y: np.ndarray, s: np.ndarray) -> float:
        return float(np.mean(np.where(y == 1, s, 1 - s)))  # accuracy-like, higher is better

    oof, chosen = nested_out_of_fold([0, 1, 2, 3], folds, labels, fit_predict, metric, -1)
    # Each outer fold k: the inner choice ran over the other three folds only, and the
    # option that scores itself perfectly on fold k (option k) was never the one fitted
    # to predict fold k with fold k in its data.
    for k, option in enumerate(chosen):
        assert option != k
    for _option, train, test in calls:
        (held,) = set(folds[test].tolist()) if test.any() else {None}
        if held is not None:
            assert not train[folds == held].any()
    outer = [c for c in calls if c[2].sum() == 6 and c[1].sum() == 18]
    assert [int(c[0]) for c in outer[-1:]] == chosen[-1:]
    # The out-of-fold scores are the fitted options' predictions of their held-out fold.
    for k, option in enumerate(chosen):
        expect = np.where(folds[folds == k] == option, labels[folds == k], 0.5)
        np.testing.assert_array_equal(oof[folds == k], expect)
