"""Real samples: classic GE and Siemens, enhanced multi-frame Siemens XA (not de-identified)."""

from __future__ import annotations

from pathlib import Path

import pytest
from anon_factory import SECRET
from pydicom import dcmread
from pydicom.dataset import Dataset

from anonymizer import JobConfig, Pseudonymizer, anonymize_directory, load_profile
from anonymizer.verify import capture_identifiers, find_needles

FOLDERS = ["ge_megre_thigh", "siemens_mese_thigh", "siemens_xa_enhanced_mese_calf"]
RESEARCH = [
    "EchoTime",
    "RepetitionTime",
    "FlipAngle",
    "MagneticFieldStrength",
    "Manufacturer",
    "ManufacturerModelName",
    "SequenceName",
    "ImageType",
    "PixelSpacing",
    "SliceThickness",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "RescaleSlope",
    "RescaleIntercept",
    "Rows",
    "Columns",
    "BitsStored",
    "PatientSex",
    "PatientWeight",
    "PatientSize",
    "EchoNumbers",
    "NumberOfFrames",
]
SHARED = [
    "PixelMeasuresSequence",
    "PlaneOrientationSequence",
    "MRTimingAndRelatedParametersSequence",
    "MRFOVGeometrySequence",
    "MRModifierSequence",
    "MRImagingModifierSequence",
    "MRReceiveCoilSequence",
    "MRTransmitCoilSequence",
    "PixelValueTransformationSequence",
]


def _outputs(dst: Path) -> dict[str, Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in map(dcmread, dst.rglob("*.dcm"))}


def _frame_values(ds: Dataset) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for item in ds.get("PerFrameFunctionalGroupsSequence") or []:
        pos = item.PlanePositionSequence[0].ImagePositionPatient
        echo = item.MREchoSequence[0].EffectiveEchoTime if "MREchoSequence" in item else None
        out.append((tuple(pos), echo))
    return out


@pytest.mark.realdata
@pytest.mark.parametrize("folder", FOLDERS)
def test_real_folder(shared_data: Path, tmp_path: Path, folder: str) -> None:
    src = shared_data / "real" / folder
    report = anonymize_directory(src, tmp_path / "out", JobConfig(SECRET, "P1", "S1"), 2)
    inputs = sorted(p for p in src.iterdir() if p.is_file())
    assert report.safe, report.quarantined[:5]
    assert report.files_written == len(inputs) and report.verifier_passed
    assert len(report.subjects) == 1 and not report.pixel_actions  # thighs/calves: no face
    outputs = _outputs(tmp_path / "out")
    pseudo = Pseudonymizer(SECRET, "P1", "S1")
    profile = load_profile()
    for path in inputs:
        original = dcmread(path)
        out = outputs[pseudo.remap_uid(str(original.SOPInstanceUID))]
        assert out.PixelData == original.PixelData
        for keyword in RESEARCH:
            if keyword in original:
                assert out[keyword].value == original[keyword].value, keyword
        if "SharedFunctionalGroupsSequence" in original:
            shared_in = original.SharedFunctionalGroupsSequence[0]
            shared_out = out.SharedFunctionalGroupsSequence[0]
            for keyword in SHARED:
                if keyword in shared_in:
                    assert str(shared_out[keyword].value) == str(shared_in[keyword].value)
        assert _frame_values(out) == _frame_values(original)
        assert out.PatientIdentityRemoved == "YES"
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        assert "PatientBirthDate" not in out or not out.PatientBirthDate
        ids = capture_identifiers(original, profile)
        header = out.copy()  # independent re-check on the file as written
        del header.PixelData
        text = str(header).lower()
        assert not find_needles(text, [n for n in ids.needles() if n[1] != "uid"])
        for uid in ids.uids:
            assert uid not in text
    if folder == "ge_megre_thigh":
        assert all(0x0043102F in ds for ds in outputs.values())  # magnitude/phase/real/imag


@pytest.mark.realdata
def test_xa_identifiers_gone(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "real" / "siemens_xa_enhanced_mese_calf"
    report = anonymize_directory(src, tmp_path / "out", JobConfig(SECRET, "P1"), 1)
    assert report.safe
    for path in (tmp_path / "out").rglob("*.dcm"):
        data = path.read_bytes().lower()
        for word in (
            b"basel",
            b"awp66003",
            b"19881212",
            b"jessica",
            b"loeschen",
            b"66003",
            b"2025.01.21",
            b"20250121",
        ):
            assert word not in data, word
        ds = dcmread(path)
        assert ds.PatientAge == "036Y" and ds.StudyDate != "20250121"
