"""A researcher's manifest as spreadsheets write it: accepted, or refused in one line."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from medlens.errors import InputError
from medlens_workflows.validate.dataset import read_manifest


def test_excel_csv_utf8_with_bom_and_crlf_is_read(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    text = "case_id,patient_id,input,reference,site\r\nc1,p1,a.png,1,Zürich\r\nc2,p2,b.png,0,\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    cases = read_manifest(path, reference_is_path=False)
    assert [c.case_id for c in cases] == ["c1", "c2"]
    assert cases[0].attributes["site"] == "Zürich"


def test_a_cp1252_csv_is_refused_in_one_line(tmp_path: Path) -> None:
    """Excel's plain "CSV" export on Windows: cp1252, not UTF-8 (was a UnicodeDecodeError)."""
    path = tmp_path / "m.csv"
    text = "case_id,patient_id,input,reference,site\nc1,p1,a.png,1,Zürich\n"
    path.write_bytes(text.encode("cp1252"))
    with pytest.raises(InputError, match=r"not UTF-8 text \(byte \d+\); export it as CSV UTF-8"):
        read_manifest(path, reference_is_path=False)


def test_a_csv_the_csv_module_cannot_parse_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('case_id,patient_id,input,reference\nc1,p1,"' + "x" * 200_000 + '",1\n')
    with pytest.raises(InputError, match="not readable CSV: field larger than field limit"):
        read_manifest(path, reference_is_path=False)


def test_cases_csv_cells_that_a_spreadsheet_would_run_are_quoted() -> None:
    from medlens_workflows.validate.report import _csv

    text = _csv([{"case_id": "=cmd|' /C calc'!A0", "site": "@SUM(A1)", "age": "-5", "x": "ok"}])
    row = text.splitlines()[1]
    assert row.startswith("'=cmd") and ",'@SUM(A1),-5,ok" in row


def test_cases_csv_numbers_patients_instead_of_copying_their_ids() -> None:
    # A site's patient_id may be a record number; cases.csv is an MLflow artifact.
    from medlens_validation.evaluation import CaseScore
    from medlens_workflows.validate.report import _csv, case_table

    scored = [
        CaseScore("c1", "MRN-0042", {"sex": "F"}, True, None, {}),
        CaseScore("c2", "MRN-0007", {"sex": "M"}, True, None, {}),
        CaseScore("c3", "MRN-0042", {"sex": "F"}, False, "failed", {}),
    ]
    rows = {c.case_id: (c.ok, c.reason, {}, 1.0) for c in scored}
    text = _csv(case_table(scored, rows))
    assert "MRN" not in text and "patient_id" not in text
    got = [(r["case_id"], r["patient"]) for r in csv.DictReader(text.splitlines())]
    assert got == [("c1", "1"), ("c2", "2"), ("c3", "1")]


def test_an_unreadable_registry_is_a_status_not_a_crash(tmp_path: Path) -> None:
    from medlens.gating import validation_status

    db = tmp_path / "corrupt.db"
    db.write_bytes(b"\x13not a database" * 2000)
    status = validation_status("demo", "a" * 64, f"sqlite:///{db}", version="1.0.0")
    assert not status.validated and status.summary.startswith("unknown (registry:")


def test_a_folder_with_a_live_validation_is_refused_even_with_resume(tmp_path: Path) -> None:
    # A --resume beside a live run requeued its running case and scored it twice.
    from medlens.errors import InputError
    from medlens_workflows.validate.store import CaseQueue

    live = CaseQueue(tmp_path / "out", "f" * 16, "demo", ["c1", "c2"], resume=False)
    try:
        with pytest.raises(InputError, match="a validation is running in 'out'"):
            CaseQueue(tmp_path / "out", "f" * 16, "demo", ["c1", "c2"], resume=True)
    finally:
        live.close()
    CaseQueue(tmp_path / "out", "f" * 16, "demo", ["c1", "c2"], resume=True).close()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        # An unquoted comma shifted the row's cells: manufacturer 'GE', thickness 'Inc'.
        ("c1,p1,a.png,1,GE, Inc,3\n", r"line 2 has 7 cells, the header 6 \(quote a cell"),
        ("c1,p1,a.png,1,GE\n", "line 2 has 5 cells, the header 6"),
    ],
)
def test_a_row_with_more_or_fewer_cells_than_the_header_is_refused(
    tmp_path: Path, text: str, match: str
) -> None:
    path = tmp_path / "m.csv"
    path.write_text("case_id,patient_id,input,reference,manufacturer,slice_mm\n" + text)
    with pytest.raises(InputError, match=match):
        read_manifest(path, reference_is_path=False)


def test_a_column_twice_or_an_image_under_two_cases_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("case_id,patient_id,input,reference,sex,sex\nc1,p1,a.png,1,F,M\n")
    with pytest.raises(InputError, match=r"has column\(s\) sex twice"):
        read_manifest(path, reference_is_path=False)
    path.write_text("case_id,patient_id,input,reference\nc1,p1,a.png,1\nc2,p2,./a.png,0\n")
    with pytest.raises(InputError, match="case 'c2' has the same input as 'c1'"):
        read_manifest(path, reference_is_path=False)


def test_a_bad_rows_line_number_is_the_files_after_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("case_id,patient_id,input,reference\nc1,p1,a.png,1\n\n\nc2,,b.png,0\n")
    with pytest.raises(InputError, match="line 5: case_id and patient_id are required"):
        read_manifest(path, reference_is_path=False)


def test_a_new_sqlite_store_is_created_whole_or_not_at_all(tmp_path: Path) -> None:
    # kill -9 while MLflow built a new mlflow.db left half a schema: every --resume then
    # failed ("table secrets already exists").
    import threading

    from medlens_workflows.validate.tracking import ensure_store

    (tmp_path / ".mlflow.db.dead0000.creating").write_bytes(b"half a schema")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Two validations starting on one new store (a probe's finding: each removed the
    # other's side file; the first failed after scoring): creations take turns.
    errors: list[BaseException] = []

    def create() -> None:
        try:
            ensure_store(uri)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mlflow.db.lock", "mlflow.db"]
    before = (tmp_path / "mlflow.db").stat().st_mtime_ns
    ensure_store(uri)  # an existing store is left as it is
    assert (tmp_path / "mlflow.db").stat().st_mtime_ns == before
    from mlflow import MlflowClient

    assert MlflowClient(tracking_uri=uri).search_experiments()  # the Default experiment


@pytest.mark.parametrize("what", ["folder", "text"])
def test_an_existing_store_that_is_no_database_is_refused_before_scoring(
    tmp_path: Path, what: str
) -> None:
    # A probe's finding: a folder or another file at the store's path passed the check;
    # every case was scored, then the run failed (after minutes of retries for a folder).
    from medlens.errors import OutputError
    from medlens_workflows.validate.tracking import ensure_store

    db = tmp_path / "x.db"
    if what == "folder":
        db.mkdir()
    else:
        db.write_text("schema_version = 2\n")
    with pytest.raises(OutputError, match=r"x\.db"):
        ensure_store(f"sqlite:///{db}")


def test_a_password_holding_an_at_sign_is_taken_out_whole() -> None:
    from medlens_workflows.validate.runner import _no_credentials

    assert _no_credentials("http://alice:p@ss@127.0.0.1:1/x") == "http://127.0.0.1:1/x"


def test_a_nul_or_a_link_loop_in_a_manifest_is_one_line(tmp_path: Path) -> None:
    # A probe's finding: both were tracebacks (ValueError, RuntimeError).
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    path = tmp_path / "m.csv"
    path.write_text("case_id,patient_id,input,reference\nc1,p1,loop,1\n")
    (case,) = read_manifest(path, reference_is_path=False)  # fails when it runs, one line
    assert case.input.name == "loop"
    path.write_text("case_id,patient_id,input,reference\nc1,p1,a\x00.png,1\n")
    with pytest.raises(InputError, match="input holds a NUL character"):
        read_manifest(path, reference_is_path=False)


def test_a_store_in_a_folder_named_with_url_characters_is_the_one_checked(
    tmp_path: Path,
) -> None:
    # The job store's twin: '#' cut the SQLite URI's path, so another file was opened
    # (and created) instead of the store, and a store that is no database passed.
    from medlens.errors import OutputError
    from medlens_workflows.validate.tracking import ensure_store

    folder = tmp_path / "site#1?x"
    folder.mkdir()
    db = folder / "x.db"
    db.write_text("schema_version = 2\n")
    with pytest.raises(OutputError, match=r"x\.db"):
        ensure_store(f"sqlite:///{db}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site#1?x"]


def test_the_files_hash_walks_a_case_folder_linking_to_itself_once(tmp_path: Path) -> None:
    # helper-71: two links to '.' inside a case folder made lock and validate walk for ever.
    from medlens_workflows.validate.dataset import DatasetCase
    from medlens_workflows.validate.files import files_sha256

    plain, looped = tmp_path / "plain", tmp_path / "looped"
    for d in (plain, looped):
        d.mkdir()
        (d / "img.dcm").write_bytes(b"pixels")
    (looped / "a").symlink_to(".")
    (looped / "b").symlink_to(".")

    def case(folder: Path) -> DatasetCase:
        return DatasetCase("c1", "p1", folder, "pneumonia", {})

    got = files_sha256([case(looped)], reference_is_path=False)
    assert got == files_sha256([case(plain)], reference_is_path=False)
    (plain / "img.dcm").write_bytes(b"pixelz")
    assert files_sha256([case(plain)], reference_is_path=False) != got
