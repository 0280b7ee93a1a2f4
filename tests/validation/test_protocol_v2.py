"""Schema 2 protocols: loading (TOML/JSON, v1 still loads), locks and refusals."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from medlens_validation.errors import ProtocolError
from medlens_validation.protocol import ValidationProtocol, load_protocol
from medlens_validation.protocol_v2 import ProtocolV2

SHA = "a" * 64


def _doc(**over: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "schema_version": "2",
        "id": "demo-val",
        "title": "Demo",
        "task": "classification",
        "seed": 1,
        "plugin": {"id": "demo", "version": "1.0.0", "weights_sha256": SHA},
        "dataset": {"name": "d", "manifest": "m.csv", "manifest_sha256": SHA, "n_cases": 4},
        "operating_points": [{"name": "screen", "threshold": 0.3}],
        "metrics": [
            {
                "metric": "auroc",
                "label": "pneumonia",
                "statistic": "ci_low",
                "comparator": ">=",
                "threshold": 0.8,
            },
            {
                "metric": "sensitivity",
                "label": "pneumonia",
                "operating_point": "screen",
                "statistic": "ci_low",
                "comparator": ">=",
                "threshold": 0.9,
            },
        ],
    }
    doc.update(over)
    return doc


def test_toml_and_json_give_the_same_protocol_and_fingerprint(tmp_path: Path) -> None:
    j = tmp_path / "p.json"
    j.write_text(json.dumps(_doc()))
    t = tmp_path / "p.toml"
    t.write_text(
        'schema_version = "2"\nid = "demo-val"\ntitle = "Demo"\ntask = "classification"\n'
        f'seed = 1\n[plugin]\nid = "demo"\nversion = "1.0.0"\nweights_sha256 = "{SHA}"\n'
        f'[dataset]\nname = "d"\nmanifest = "m.csv"\nmanifest_sha256 = "{SHA}"\nn_cases = 4\n'
        '[[operating_points]]\nname = "screen"\nthreshold = 0.3\n'
        '[[metrics]]\nmetric = "auroc"\nlabel = "pneumonia"\nstatistic = "ci_low"\n'
        'comparator = ">="\nthreshold = 0.8\n'
        '[[metrics]]\nmetric = "sensitivity"\nlabel = "pneumonia"\noperating_point = "screen"\n'
        'statistic = "ci_low"\ncomparator = ">="\nthreshold = 0.9\n'
    )
    a, b = load_protocol(j), load_protocol(t)
    assert isinstance(a, ProtocolV2) and a == b
    assert a.fingerprint() == b.fingerprint()


def test_a_files_lock_is_fingerprinted_and_its_absence_changes_no_fingerprint(
    tmp_path: Path,
) -> None:
    # Protocols locked before files_sha256 existed keep their fingerprints (a report and
    # its registry version name them); one that pins the files is another protocol.
    j = tmp_path / "p.json"
    j.write_text(json.dumps(_doc()))
    plain = load_protocol(j)
    assert isinstance(plain, ProtocolV2) and plain.dataset.files_sha256 is None
    assert "files_sha256" not in plain.canonical_json()
    doc = _doc()
    doc["dataset"] = {**doc["dataset"], "files_sha256": "b" * 64}  # type: ignore[dict-item]
    j.write_text(json.dumps(doc))
    pinned = load_protocol(j)
    assert '"files_sha256":"' + "b" * 64 in pinned.canonical_json()
    assert pinned.fingerprint() != plain.fingerprint()


def test_schema_1_loads_through_load_protocol(tmp_path: Path) -> None:
    doc = {
        "id": "old",
        "title": "Old",
        "plugin_id": "demo",
        "plugin_version": "1.0.0",
        "dataset": {"name": "d", "manifest": "m.csv", "manifest_sha256": SHA, "n_cases": 1},
        "metrics": [{"metric": "dice", "statistic": "mean", "comparator": ">=", "threshold": 0.5}],
        "random_seed": 0,
    }
    f = tmp_path / "old.json"
    f.write_text(json.dumps(doc))
    assert isinstance(load_protocol(f), ValidationProtocol)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"task": "segmentation"}, "does not apply"),
        ({"operating_points": []}, "unknown operating point"),
        ({"schema_version": "2", "seed": -1}, "seed"),
    ],
)
def test_incoherent_protocols_are_refused_in_one_line(
    tmp_path: Path, change: dict[str, object], match: str
) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps(_doc(**change)))
    with pytest.raises(ProtocolError, match=match) as e:
        load_protocol(f)
    assert "\n" not in str(e.value)


def test_direction_of_each_metric_is_enforced() -> None:
    doc = _doc()
    doc["metrics"] = [
        {"metric": "ece", "label": "x", "statistic": "ci_high", "comparator": ">=", "threshold": 1}
    ]
    with pytest.raises(ValueError, match="'<='"):
        ProtocolV2.model_validate(doc)


def test_locks_refuse_another_version_weights_or_manifest(tmp_path: Path) -> None:
    p = ProtocolV2.model_validate(_doc())
    p.check_lock("demo", "1.0.0", SHA)
    with pytest.raises(ProtocolError, match=r"locked to demo 1\.0\.0"):
        p.check_lock("demo", "1.0.1", SHA)
    with pytest.raises(ProtocolError, match="weights sha256"):
        p.check_lock("demo", "1.0.0", "b" * 64)
    m = tmp_path / "m.csv"
    m.write_text("case_id\n")
    with pytest.raises(ProtocolError, match="dataset changed"):
        p.check_dataset(m)
    locked = ProtocolV2.model_validate(
        _doc(
            dataset={
                "name": "d",
                "manifest": "m.csv",
                "manifest_sha256": hashlib.sha256(m.read_bytes()).hexdigest(),
                "n_cases": 1,
            }
        )
    )
    assert locked.manifest_path(tmp_path / "p.toml") == tmp_path / "m.csv"
    assert locked.check_dataset(m) == locked.dataset.manifest_sha256


def test_a_byte_order_mark_loads_and_other_encodings_are_refused_in_one_line(
    tmp_path: Path,
) -> None:
    """Windows editors save UTF-8 with a BOM; cp1252 text was a UnicodeDecodeError."""
    plain, bom = tmp_path / "p.json", tmp_path / "bom.json"
    plain.write_text(json.dumps(_doc(title="Zürich")), encoding="utf-8")
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert load_protocol(bom) == load_protocol(plain)
    latin = tmp_path / "latin.json"
    latin.write_bytes(json.dumps(_doc(title="Zürich"), ensure_ascii=False).encode("cp1252"))
    with pytest.raises(ProtocolError, match=r"'latin.json' is not UTF-8 text \(byte \d+\)"):
        load_protocol(latin)


@pytest.mark.parametrize(
    ("toml", "match"),
    [
        # Scored every case, then crashed writing the report (and -inf left the gate open).
        ("threshold = nan", "finite"),
        ("threshold = -inf", "finite"),
        ("bins = [0, nan, 200]", "bins must be finite"),
        # 10**12 resamples asked numpy for 43.7 TiB after every case was scored.
        ("n_resamples = 1000000000000", "less than or equal to 100000"),
    ],
)
def test_non_finite_or_unbounded_settings_are_refused_at_load(
    tmp_path: Path, toml: str, match: str
) -> None:
    key = toml.split(" = ")[0]
    where = {"threshold": "metrics", "bins": "subgroups", "n_resamples": "bootstrap"}[key]
    lines = [
        'schema_version = "2"',
        'id = "x"',
        'title = "x"',
        'task = "classification"',
        "seed = 1",
        "[plugin]",
        'id = "demo"',
        'version = "1.0.0"',
        "[dataset]",
        'name = "d"',
        'manifest = "m.csv"',
        f'manifest_sha256 = "{SHA}"',
        "n_cases = 4",
    ]
    metric = [
        "[[metrics]]",
        'metric = "auroc"',
        'label = "pneumonia"',
        'statistic = "ci_low"',
        'comparator = ">="',
    ]
    metric.append(toml if where == "metrics" else "threshold = 0.8")
    lines += metric
    if where == "subgroups":
        lines += ["[[subgroups]]", 'attribute = "age"', toml]
    if where == "bootstrap":
        lines += ["[bootstrap]", toml]
    f = tmp_path / "p.toml"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(ProtocolError, match=match) as e:
        load_protocol(f)
    assert "\n" not in str(e.value)


def test_a_deeply_nested_protocol_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(ProtocolError, match="nests too deeply"):
        load_protocol(f)


@pytest.mark.parametrize(
    ("metric", "statistic", "comparator", "threshold", "match"),
    [
        ("lesion_volume_rel_error", "ci_high", "<=", 10, r"fraction from 0 to 1.*write 10 % as"),
        ("dice", "ci_low", ">=", 90, "fraction from 0 to 1"),
        ("auroc", "ci_low", ">=", -0.1, "fraction from 0 to 1"),
        ("fp_per_case", "ci_high", "<=", -1, "never negative"),
    ],
)
def test_a_threshold_outside_its_metrics_range_is_refused(
    metric: str, statistic: str, comparator: str, threshold: float, match: str
) -> None:
    # "10" meant as 10 % passed a 30 % error and set validated.
    doc = _doc()
    row = {"metric": metric, "statistic": statistic, "comparator": comparator}
    doc["metrics"] = [{**row, "label": "x", "threshold": threshold}]
    doc["task"] = "segmentation"
    doc.pop("operating_points", None)
    with pytest.raises(ValueError, match=match):
        ProtocolV2.model_validate(doc)
