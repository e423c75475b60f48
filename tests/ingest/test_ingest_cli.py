"""`myovault convert SRC_DIR DST_DIR` through click's CliRunner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner
from ingest_helpers import classic_image, save
from pydicom.uid import generate_uid

from repository.cli.convert import convert as convert_command


def _mese(folder: Path, **extra: object) -> None:
    series_uid, study_uid = generate_uid(), generate_uid()
    for k in range(2):
        for e, te in enumerate((10.0, 20.0)):
            ds = classic_image(
                np.full((3, 4), k * 10 + e, dtype=np.uint16),
                position=(0, 0, 4.0 * k),
                echo_time_ms=te,
                series_uid=series_uid,
                study_uid=study_uid,
                ScanningSequence="SE",
                ImageType=["ORIGINAL", "PRIMARY", "M", "ND"],
                **extra,
            )
            save(ds, folder / f"{series_uid[-5:]}_{k}_{e}.dcm")


def test_convert_success_prints_summary(tmp_path: Path) -> None:
    _mese(tmp_path / "src")
    (tmp_path / "src" / "notes.txt").write_text("x")
    result = CliRunner().invoke(convert_command, [str(tmp_path / "src"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "converted  sub-PSEUDO01/ses-1/mr-anat/sub-PSEUDO01_ses-1_MESE.nii.gz" in result.output
    assert "skipped    notes.txt" in result.output
    assert (
        "summary: 1 file(s) from 4 image(s), 1 participant(s), 1 session(s); 1 skipped; 0 not converted"
        in result.output
    )
    assert (tmp_path / "out" / "participants.tsv").exists()


def test_convert_lists_each_failure_and_exits_non_zero(tmp_path: Path) -> None:
    _mese(tmp_path / "src")
    _mese(tmp_path / "src" / "raw", PatientIdentityRemoved="NO")
    broken = next((tmp_path / "src").glob("*.dcm"))
    (tmp_path / "src" / "cut.dcm").write_bytes(broken.read_bytes()[:-10])
    result = CliRunner().invoke(convert_command, [str(tmp_path / "src"), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.count("not de-identified") == 4
    assert "NOT CONVERTED  cut.dcm: truncated DICOM" in result.output
    assert "5 not converted" in result.output


def test_destination_inside_source_is_a_usage_error(tmp_path: Path) -> None:
    _mese(tmp_path / "src")
    result = CliRunner().invoke(
        convert_command, [str(tmp_path / "src"), str(tmp_path / "src" / "out")]
    )
    assert result.exit_code == 2
    assert "must not be inside" in result.output
