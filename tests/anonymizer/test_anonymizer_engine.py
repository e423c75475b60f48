"""Engine: pseudonyms, UID and date consistency, sequences, private tags, marking, verifier."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from anon_factory import SECRET, mr_dataset, write
from pydicom import dcmread

from anonymizer import Deidentifier, Pseudonymizer, SecretError, write_dataset
from anonymizer.dates import age_string, shift_da, shift_dt


@pytest.fixture
def deid() -> Deidentifier:
    return Deidentifier(SECRET, "P1", "S1")


def _day(value: str) -> dt.date:
    return dt.datetime.strptime(value, "%Y%m%d").date()


def test_pseudonym_is_keyed_and_deterministic() -> None:
    a = Pseudonymizer(SECRET, "P1", "S1")
    assert a.subject_pseudonym("123") == Pseudonymizer(SECRET, "P1", "S1").subject_pseudonym("123")
    assert a.subject_pseudonym("123") != a.subject_pseudonym("124")
    assert a.subject_pseudonym("123") != Pseudonymizer(SECRET, "P2", "S1").subject_pseudonym("123")
    assert a.subject_pseudonym("123") != Pseudonymizer(SECRET, "P1", "S2").subject_pseudonym("123")
    other = Pseudonymizer(b"another-secret-0123456789", "P1", "S1")
    assert a.subject_pseudonym("123") != other.subject_pseudonym("123")
    assert a.subject_pseudonym("123").isalnum()


def test_uid_remap_is_valid_and_project_scoped() -> None:
    a = Pseudonymizer(SECRET, "P1")
    uid = a.remap_uid("1.2.3.4")
    assert uid == a.remap_uid("1.2.3.4") and uid != a.remap_uid("1.2.3.5")
    assert uid.startswith("2.25.") and len(uid) <= 64
    assert int(uid[5:]) >> 76 & 0xF == 8  # UUID version 8
    assert uid != Pseudonymizer(SECRET, "P2").remap_uid("1.2.3.4")
    rooted = Pseudonymizer(SECRET, "P1", uid_root="1.2.826.0.1.3680043.10.99")
    assert rooted.remap_uid("1.2.3.4").startswith("1.2.826.0.1.3680043.10.99.")
    assert len(rooted.remap_uid("1.2.3.4")) <= 64


def test_date_shift_is_per_subject_and_never_zero() -> None:
    a = Pseudonymizer(SECRET, "P1", "S1")
    shifts = {a.date_shift_days(str(i)) for i in range(200)}
    assert all(-4015 < s <= -365 for s in shifts) and len(shifts) > 150


@pytest.mark.parametrize("secret", [b"", b"short", "not-bytes-0123456789"])
def test_weak_secret_is_refused(secret: object) -> None:
    with pytest.raises(SecretError):
        Deidentifier(secret, "P1")  # type: ignore[arg-type]


def test_dates_helpers() -> None:
    assert shift_da("20240315", -366) == "20230315"
    assert shift_dt("20240315101010.5+0100", 1) == "20240316101010.5+0100"
    assert shift_da("2024", 1) is None and shift_dt("2024", 1) is None
    assert age_string("19800316", "20240315") == "043Y"
    assert age_string("20240101", "20240315") == "002M"
    assert age_string("20240201", "20240315") == "043D"
    assert age_string("20230101", "20240315") == "014M"


def test_identifiers_removed_and_research_kept(deid: Deidentifier) -> None:
    result = deid.deidentify_dataset(mr_dataset())
    assert result.status == "written", result.findings
    out = result.dataset
    assert out is not None and result.encoded is not None
    text = result.encoded.decode("latin-1").lower()
    for secret in (
        "doe",
        "jane",
        "pat-000123",
        "elsewhere",
        "harbour",
        "gregory",
        "ratched",
        "acc99887766",
        "alt-4455667",
        "mrc40123",
        "45358",
        "strange",
        "20240315",
        "19800101",
        "elm street",
        "hospscanner1",
        "1.2.826.0.1.3680043.99",
    ):
        assert secret not in text, secret
    assert out.PatientName == out.PatientID == result.subject
    assert out.PatientSex == "F" and out.PatientAge == "044Y"  # computed from birth date
    assert out.SeriesDescription == "t2_mese_tra"  # cleaned of its date
    assert "StudyDescription" not in out  # carried a name: free text not retained
    assert out.EchoTime == 10.9 and out.SequenceName == "*se2d17"


def test_marking_and_valid_file_meta(deid: Deidentifier, tmp_path: Path) -> None:
    result = deid.deidentify_dataset(mr_dataset())
    assert result.encoded is not None
    path = tmp_path / result.output_name
    write_dataset(result.encoded, path)
    out = dcmread(path)
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "myovault-ps315-2026c-v1" in out.DeidentificationMethod[0]
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107", "113108", "113105", "113111"]
    assert all(i.CodingSchemeDesignator == "DCM" for i in out.DeidentificationMethodCodeSequence)
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPClassUID == out.SOPClassUID
    assert "SourceApplicationEntityTitle" not in out.file_meta
    assert result.subject in result.output_name and "PAT" not in result.output_name


def test_uids_and_dates_consistent_across_files_and_studies(deid: Deidentifier) -> None:
    first = mr_dataset(sop_uid="1.2.826.0.1.3680043.99.1.1.1.1")
    second = mr_dataset(sop_uid="1.2.826.0.1.3680043.99.1.1.1.2")
    # second file references the first one
    second.ReferencedImageSequence[0].ReferencedSOPInstanceUID = first.SOPInstanceUID
    later = mr_dataset(
        study_uid="1.2.826.0.1.3680043.99.2",
        series_uid="1.2.826.0.1.3680043.99.2.1",
        sop_uid="1.2.826.0.1.3680043.99.2.1.1",
        study_date="20250320",
    )
    a, b, c = (deid.deidentify_dataset(ds).dataset for ds in (first, second, later))
    assert a is not None and b is not None and c is not None
    assert a.StudyInstanceUID == b.StudyInstanceUID != c.StudyInstanceUID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert a.PatientID == c.PatientID  # same participant, two visits
    interval = _day(c.StudyDate) - _day(a.StudyDate)
    assert interval == _day("20250320") - _day("20240315")  # exact interval between visits
    assert a.StudyDate != "20240315" and a.StudyTime == "101500"
    other = deid.deidentify_dataset(mr_dataset(patient_id="PAT-999")).dataset
    assert other is not None and other.PatientID != a.PatientID


def test_sequences_processed_recursively(deid: Deidentifier) -> None:
    ds = mr_dataset()
    result = deid.deidentify_dataset(ds)
    out = result.dataset
    assert out is not None and result.encoded is not None
    assert "RequestAttributesSequence" not in out
    assert b"Strange" not in result.encoded and b"Thigh MRI for Jane" not in result.encoded
    ref = out.ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID.startswith("2.25.")
    assert ref.ReferencedSOPClassUID == ds.SOPClassUID


def test_private_tags_removed_except_safe_list(deid: Deidentifier) -> None:
    out = deid.deidentify_dataset(mr_dataset()).dataset
    assert out is not None
    private = {int(t) for t in list(out.keys()) if t.group & 1}
    assert private == {0x00430010, 0x0043102F}
    assert out[0x0043102F].value == 1
    assert out[0x00430010].value == "GEMS_PARM_01"


def test_verifier_quarantines_a_surviving_identifier(deid: Deidentifier) -> None:
    ds = mr_dataset()
    # an operator typed the patient's name into a kept technical attribute
    ds.WindowCenterWidthExplanation = "window for Jane Doe"
    result = deid.deidentify_dataset(ds)
    assert result.status == "quarantined" and result.reason == "verifier"
    assert result.findings and all("jane" not in f.lower() for f in result.findings)
    assert result.dataset is None and result.encoded is None


def test_verifier_quarantines_identifier_patterns(deid: Deidentifier) -> None:
    ds = mr_dataset()
    ds.WindowCenterWidthExplanation = "call +41 61 265 2525 or x@y.org"
    result = deid.deidentify_dataset(ds)
    assert result.status == "quarantined"
    kinds = " ".join(result.findings)
    assert "phone number" in kinds and "e-mail address" in kinds


def test_missing_patient_id_is_keyed_by_study(deid: Deidentifier) -> None:
    ds = mr_dataset(patient_id="")
    result = deid.deidentify_dataset(ds)
    assert result.status == "written" and result.warnings


def test_non_dicom_and_dicomdir(deid: Deidentifier, tmp_path: Path) -> None:
    note = tmp_path / "notes.txt"
    note.write_text("Jane Doe, born 1980")
    assert deid.deidentify_file(note).status == "not-dicom"
    ds = mr_dataset()
    ds.SOPClassUID = "1.2.840.10008.1.3.10"
    result = deid.deidentify_file(write(ds, tmp_path / "DICOMDIR"))
    assert result.status == "quarantined" and result.reason == "dicomdir"


def test_unexpected_error_keeps_the_file_in_quarantine(deid: Deidentifier) -> None:
    ds = mr_dataset()
    del ds.Rows  # pixel data that cannot be interpreted
    result = deid.deidentify_dataset(ds)
    assert result.status == "quarantined" and result.reason == "processing-error"
    assert result.encoded is None
