"""Nested selection: a setting chosen on the training folds only."""

from __future__ import annotations

import numpy as np

from medlens_validation.selection import choose_by_cv


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
