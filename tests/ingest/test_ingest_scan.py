"""Scanning: headers only, non-DICOM skipped, corrupt/truncated/not-de-identified refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ingest_helpers import classic_image, enhanced_image, save
from pydicom.uid import generate_uid

from ingest.errors import MixedPatientsError
from ingest.scan import IssueKind, scan_folder


def _image(path: Path, *, patient_id: str = "PSEUDO01", series_uid: str | None = None, **kw):
    ds = classic_image(
        np.arange(12, dtype=np.uint16).reshape(3, 4),
        position=(0, 0, kw.pop("z", 0.0)),
        patient_id=patient_id,
        series_uid=series_uid or generate_uid(),
        study_uid=kw.pop("study_uid", generate_uid()),
        **kw,
    )
    return save(ds, path)


def test_groups_images_into_series_and_reads_headers(tmp_path: Path) -> None:
    a, b = generate_uid(), generate_uid()
    study = generate_uid()
    for z in range(3):
        _image(tmp_path / "a" / f"{z}.dcm", series_uid=a, z=float(z), study_uid=study)
    _image(tmp_path / "b" / "0.dcm", series_uid=b, study_uid=study, SeriesNumber=2)
    result = scan_folder(tmp_path)
    assert not result.issues
    assert [len(s.instances) for s in result.series] == [3, 1]
    assert {s.series_instance_uid for s in result.series} == {a, b}
    assert result.patient_ids == ("PSEUDO01",)
    assert not result.mixed_patients
    assert result.require_single_patient() == "PSEUDO01"


def test_non_dicom_is_skipped_with_reason(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty.dcm").write_bytes(b"")
    result = scan_folder(tmp_path)
    assert not result.series
    assert {i.kind for i in result.issues} == {IssueKind.SKIPPED}
    assert all("no DICM preamble" in i.reason for i in result.issues)


def test_truncated_pixel_data_is_refused(tmp_path: Path) -> None:
    path = _image(tmp_path / "x.dcm")
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    (issue,) = scan_folder(tmp_path).issues
    assert issue.kind is IssueKind.REFUSED
    assert "truncated" in issue.reason and "pixel data" in issue.reason


def test_truncated_header_is_refused(tmp_path: Path) -> None:
    path = _image(tmp_path / "x.dcm")
    path.write_bytes(path.read_bytes()[:400])
    (issue,) = scan_folder(tmp_path).issues
    assert issue.kind is IssueKind.REFUSED
    assert "truncated or corrupt" in issue.reason


def test_garbage_after_preamble_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" * 8)
    (issue,) = scan_folder(tmp_path).issues
    assert issue.kind is IssueKind.REFUSED


def test_not_deidentified_is_refused_unless_allowed(tmp_path: Path) -> None:
    _image(tmp_path / "x.dcm", PatientIdentityRemoved="NO")
    (issue,) = scan_folder(tmp_path).issues
    assert issue.kind is IssueKind.REFUSED
    assert "not de-identified (PatientIdentityRemoved is NO)" in issue.reason
    assert len(scan_folder(tmp_path, require_deidentified=False).series) == 1


def test_mixed_patients_detected(tmp_path: Path) -> None:
    _image(tmp_path / "a.dcm", patient_id="P1")
    _image(tmp_path / "b.dcm", patient_id="P2")
    result = scan_folder(tmp_path)
    assert result.mixed_patients
    assert result.patient_ids == ("P1", "P2")
    with pytest.raises(MixedPatientsError, match="2 distinct PatientIDs"):
        result.require_single_patient()


def test_series_mixing_patients_is_refused(tmp_path: Path) -> None:
    uid = generate_uid()
    _image(tmp_path / "a.dcm", patient_id="P1", series_uid=uid)
    _image(tmp_path / "b.dcm", patient_id="P2", series_uid=uid, z=1.0)
    result = scan_folder(tmp_path)
    assert not result.series
    assert all("mixed patients within one series" in i.reason for i in result.issues)


def test_duplicate_file_kept_once(tmp_path: Path) -> None:
    path = _image(tmp_path / "a.dcm")
    (tmp_path / "copy.dcm").write_bytes(path.read_bytes())
    result = scan_folder(tmp_path)
    assert len(result.series[0].instances) == 1
    (issue,) = result.issues
    assert issue.kind is IssueKind.SKIPPED and "duplicate" in issue.reason


def test_enhanced_mr_gives_one_record_per_frame(tmp_path: Path) -> None:
    frames = np.arange(3 * 2 * 4, dtype=np.uint16).reshape(3, 2, 4)
    ds = enhanced_image(
        frames,
        positions=[(0, 0, 0), (0, 0, 5), (0, 0, 10)],
        echo_times_ms=[11.0, 11.0, 11.0],
        series_uid=generate_uid(),
        study_uid=generate_uid(),
    )
    save(ds, tmp_path / "e.dcm")
    (series,) = scan_folder(tmp_path).series
    assert [r.frame_index for r in series.instances] == [0, 1, 2]
    assert [r.image_position_patient_mm[2] for r in series.instances] == [0.0, 5.0, 10.0]
    assert {r.echo_time_ms for r in series.instances} == {11.0}
    first = series.instances[0]
    assert first.repetition_time_ms == 3000.0
    assert first.flip_angle_deg == 180.0
    assert first.pixel_spacing_mm == (1.0, 1.0)
    assert first.scanning_sequence == ("SE",)
    assert first.complex_image_component == "MAGNITUDE"


def test_enhanced_with_wrong_frame_count_is_refused(tmp_path: Path) -> None:
    frames = np.zeros((2, 2, 4), dtype=np.uint16)
    ds = enhanced_image(
        frames,
        positions=[(0, 0, 0), (0, 0, 5)],
        echo_times_ms=[11.0, 11.0],
        series_uid=generate_uid(),
        study_uid=generate_uid(),
    )
    ds.NumberOfFrames = 3
    ds.PixelData = np.zeros((3, 2, 4), dtype=np.uint16).tobytes()
    save(ds, tmp_path / "e.dcm")
    (issue,) = scan_folder(tmp_path).issues
    assert issue.kind is IssueKind.REFUSED and "PerFrameFunctionalGroupsSequence" in issue.reason


def test_series_with_a_new_study_uid_per_file_is_one_visit(tmp_path: Path) -> None:
    """Some de-identifiers give each file its own StudyInstanceUID (the real Siemens MESE
    sample); the visit is then StudyDate + StudyTime."""
    uid = generate_uid()
    for z in range(3):
        _image(tmp_path / f"{z}.dcm", series_uid=uid, z=float(z), study_uid=generate_uid())
    (series,) = scan_folder(tmp_path).series
    assert len(series.instances) == 3
    assert series.session_key == "20240101T120000"


def test_series_spanning_two_dates_is_refused(tmp_path: Path) -> None:
    uid = generate_uid()
    _image(tmp_path / "a.dcm", series_uid=uid, StudyDate="20240101")
    _image(tmp_path / "b.dcm", series_uid=uid, z=1.0, StudyDate="20240102")
    result = scan_folder(tmp_path)
    assert not result.series
    assert all("spans 2 visits" in i.reason for i in result.issues)
