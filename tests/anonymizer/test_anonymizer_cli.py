"""``myovault anonymize SRC_DIR DST_DIR`` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from anon_factory import SECRET, mr_dataset, write
from click.testing import CliRunner
from pydicom import dcmread

from repository.cli.anonymize import SECRET_ENV, anonymize


def _upload(root: Path, *, unsafe: bool = False) -> Path:
    src = root / "upload" / "Doe_Jane_PAT-000123"
    for i in range(3):
        ds = mr_dataset(sop_uid=f"1.2.826.0.1.3680043.99.1.1.1.{i + 1}", position=(0, 0, 5.0 * i))
        write(ds, src / f"Doe^Jane_{i}.dcm")
    (src / "README.txt").write_text("scanned for Jane Doe")
    if unsafe:
        ds = mr_dataset(sop_uid="1.2.826.0.1.3680043.99.1.1.1.9")
        ds.BurnedInAnnotation = "YES"
        write(ds, src / "screenshot.dcm")
    return root / "upload"


def test_writes_safe_files_with_neutral_names(tmp_path: Path) -> None:
    src = _upload(tmp_path)
    secret = tmp_path / "secret.key"
    secret.write_bytes(SECRET + b"\n")
    dst = tmp_path / "out"
    result = CliRunner().invoke(
        anonymize, [str(src), str(dst), "--project", "P1", "--secret-file", str(secret)]
    )
    assert result.exit_code == 0, result.output
    assert "3 written, 0 quarantined, 1 not DICOM" in result.output
    written = sorted(dst.rglob("*.dcm"))
    assert len(written) == 3
    for path in written:
        rel = str(path.relative_to(dst)).lower()
        assert "doe" not in rel and "jane" not in rel and "pat" not in rel
        ds = dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
    assert not list(dst.rglob("*.txt"))  # non-DICOM never copied
    assert not (dst / ".myovault-staging").exists()  # staging always removed
    report = json.loads((dst / "anonymization-report.json").read_text())
    assert report["safe"] and report["files_not_dicom"] == 1
    assert report["profile_version"] == "myovault-ps315-2026c-v1"
    assert "jane" not in json.dumps(report).lower()


def test_secret_from_environment_links_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _upload(tmp_path)
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    runner = CliRunner()
    first = runner.invoke(anonymize, [str(src), str(tmp_path / "a"), "--workers", "1"])
    second = runner.invoke(anonymize, [str(src), str(tmp_path / "b"), "--workers", "1"])
    assert first.exit_code == second.exit_code == 0
    names_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.dcm"))
    names_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.dcm"))
    assert names_a == names_b  # same pseudonym and UIDs: re-uploads link up


def test_without_secret_warns_and_is_still_safe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    src = _upload(tmp_path)
    result = CliRunner().invoke(anonymize, [str(src), str(tmp_path / "out"), "--workers", "1"])
    assert result.exit_code == 0
    assert "one-off random secret" in result.output
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 3


def test_unsafe_file_is_listed_and_exit_is_nonzero(tmp_path: Path) -> None:
    src = _upload(tmp_path, unsafe=True)
    result = CliRunner().invoke(anonymize, [str(src), str(tmp_path / "out"), "--workers", "1"])
    assert result.exit_code == 1
    assert "screenshot.dcm: burned-in-text" in result.output
    stored = (tmp_path / "out" / "anonymization-report.json").read_text().lower()
    assert "jane" not in stored and "screenshot" not in stored
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 3


def test_destination_inside_source_is_refused(tmp_path: Path) -> None:
    src = _upload(tmp_path)
    result = CliRunner().invoke(anonymize, [str(src), str(src / "out")])
    assert result.exit_code == 1 and "must not contain each other" in result.output
