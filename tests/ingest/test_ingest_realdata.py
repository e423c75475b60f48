"""Real samples (../shared/data/real): GE MEGRE 4 parts, Siemens MESE classic, Siemens XA enhanced.

The samples are not marked de-identified; the tests convert marked copies (``mark_deidentified``
sets the flag and blanks PatientName/BirthDate — a test stand-in, not the de-identifier).
Geometry is checked image by image against the DICOM headers read here with pydicom.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from ingest_helpers import mark_deidentified

from ingest.convert import ConversionResult, convert, plan_conversion
from ingest.scan import IssueKind, scan_folder

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

SAMPLES = {
    "ge_megre_thigh": "PGE01",
    "siemens_mese_thigh": "PSIEMENS02",
    "siemens_xa_enhanced_mese_calf": "PXA03",
}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def converted(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, ConversionResult]:
    root = tmp_path_factory.mktemp("real")
    for name, pseudonym in SAMPLES.items():
        mark_deidentified(shared_data / "real" / name, root / "src" / name, patient_id=pseudonym)
    plan = plan_conversion(scan_folder(root / "src"))
    assert not plan.not_converted, [(n.what, n.reason) for n in plan.not_converted]
    result = convert(plan, root / "out")
    assert not result.failed
    return root / "out", result


def dicom_images(folder: Path) -> list[tuple[np.ndarray, dict]]:
    """(pixels, geometry) of every 2D image, read directly with pydicom."""
    images = []
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        if "PerFrameFunctionalGroupsSequence" in ds:
            frames = ds.pixel_array
            shared = ds.SharedFunctionalGroupsSequence[0]
            for n, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
                orient = (item.get("PlaneOrientationSequence") or shared.PlaneOrientationSequence)[
                    0
                ]
                measures = (item.get("PixelMeasuresSequence") or shared.PixelMeasuresSequence)[0]
                images.append(
                    (
                        frames[n],
                        {
                            "ipp": np.array(
                                item.PlanePositionSequence[0].ImagePositionPatient, float
                            ),
                            "iop": np.array(orient.ImageOrientationPatient, float),
                            "ps": np.array(measures.PixelSpacing, float),
                            "te": float(item.MREchoSequence[0].EffectiveEchoTime),
                            "ge_part": None,
                        },
                    )
                )
        else:
            part = ds.get((0x0043, 0x102F))
            images.append(
                (
                    ds.pixel_array,
                    {
                        "ipp": np.array(ds.ImagePositionPatient, float),
                        "iop": np.array(ds.ImageOrientationPatient, float),
                        "ps": np.array(ds.PixelSpacing, float),
                        "te": float(ds.EchoTime),
                        "ge_part": None if part is None else int(part.value),
                    },
                )
            )
    return images


def check_against_dicom(
    nifti_path: Path, images: list[tuple[np.ndarray, dict]], *, scale: float | None = None
) -> None:
    """Each DICOM image is the NIfTI slice (k, e) where k orders positions along the normal and
    e orders echo times, and the affine puts pixel (r, c) at IPP + c·Δc·X + r·Δr·Y."""
    image = nib.load(nifti_path)
    data = np.asanyarray(image.dataobj)
    affine = image.affine
    tes = sorted({g["te"] for _, g in images})
    iop = images[0][1]["iop"]
    normal = np.cross(iop[:3], iop[3:])
    distances = sorted({round(float(g["ipp"] @ normal), 2) for _, g in images})
    assert data.shape[2] == len(distances) and data.shape[3] == len(tes)
    for pixels, g in images:
        k = distances.index(round(float(g["ipp"] @ normal), 2))
        e = tes.index(g["te"])
        if scale is None:
            np.testing.assert_array_equal(data[:, :, k, e], pixels.T)
        else:  # phase in radians (float32)
            np.testing.assert_allclose(
                data[:, :, k, e], pixels.T.astype(np.float32) * np.float32(scale), rtol=1e-6
            )
        rows, cols = pixels.shape
        for r, c in ((0, 0), (rows - 1, 0), (0, cols - 1), (rows // 2, cols // 3)):
            lps = g["ipp"] + c * g["ps"][1] * g["iop"][:3] + r * g["ps"][0] * g["iop"][3:]
            np.testing.assert_allclose(affine @ [c, r, k, 1], [*(LPS_TO_RAS @ lps), 1], atol=0.02)


def test_originals_without_deidentification_flag_are_refused(shared_data: Path) -> None:
    result = scan_folder(shared_data / "real" / "siemens_xa_enhanced_mese_calf")
    assert not result.series
    assert len(result.issues) == 17
    assert all(
        i.kind is IssueKind.REFUSED and "not de-identified" in i.reason for i in result.issues
    )


def test_ge_megre_four_parts(converted, shared_data: Path) -> None:
    out, result = converted
    ge = {f.part: f for f in result.files if f.participant_id == "sub-PGE01"}
    assert set(ge) == {"magnitude", "phase", "real", "imaginary"}
    stem = out / "sub-PGE01/ses-1/mr-anat/sub-PGE01_ses-1"
    names = {
        "magnitude": "_MEGRE",
        "phase": "_part-phase_MEGRE",
        "real": "_part-real_MEGRE",
        "imaginary": "_part-imag_MEGRE",
    }
    images = dicom_images(shared_data / "real" / "ge_megre_thigh")
    for n, (part, suffix) in enumerate(names.items()):
        assert ge[part].nifti_path == Path(f"{stem}{suffix}.nii.gz")
        assert ge[part].shape == (256, 256, 32, 2)
        check_against_dicom(
            ge[part].nifti_path,
            [im for im in images if im[1]["ge_part"] == n],
            scale=np.pi / 4096 if part == "phase" else None,
        )
        sidecar = json.loads(ge[part].sidecar_path.read_text())
        if part == "phase":
            assert sidecar["Units"] == "rad"
            assert sidecar["MyoVault"]["PhaseScaling"]["Rule"] == "ge-signed"
        else:
            assert "Units" not in sidecar
        assert sidecar["EchoTime"] == [3.9, 6.3]
        assert sidecar["ImagePart"] == part
        assert sidecar["Manufacturer"] == "GE MEDICAL SYSTEMS"
        assert sidecar["MagneticFieldStrength"] == 3.0
        assert sidecar["FlipAngle"] == 50.0


def test_ge_phase_radians_agree_with_real_and_imaginary(converted) -> None:
    """The radians written for GE's phase part match atan2(imaginary, real) of the same scan
    (GE filters its phase image, so not exactly: median well under 0.3 rad over tissue)."""
    _out, result = converted
    ge = {f.part: f for f in result.files if f.participant_id == "sub-PGE01"}
    load = {part: np.asanyarray(nib.load(ge[part].nifti_path).dataobj) for part in ge}
    tissue = load["magnitude"] > np.percentile(load["magnitude"], 60)
    reference = np.arctan2(load["imaginary"], load["real"])
    difference = np.angle(np.exp(1j * (load["phase"] - reference)))[tissue]
    assert np.median(np.abs(difference)) < 0.3
    # milliradians, the other common reading of GE phase, would be far off
    milli = np.angle(np.exp(1j * (load["phase"] * 4096 / np.pi / 1000 - reference)))[tissue]
    assert np.median(np.abs(milli)) > 0.6


def test_siemens_mese_classic(converted, shared_data: Path) -> None:
    _out, result = converted
    (mese,) = [f for f in result.files if f.participant_id == "sub-PSIEMENS02"]
    assert mese.nifti_path.name == "sub-PSIEMENS02_ses-1_MESE.nii.gz"
    assert mese.shape[2:] == (7, 17)
    check_against_dicom(mese.nifti_path, dicom_images(shared_data / "real" / "siemens_mese_thigh"))
    sidecar = json.loads(mese.sidecar_path.read_text())
    assert len(sidecar["EchoTime"]) == 17
    assert sidecar["EchoTime"][0] == 10.9 and sidecar["EchoTime"][-1] == 185.3
    assert sidecar["EchoTime"] == sorted(sidecar["EchoTime"])


def test_siemens_xa_enhanced_mese(converted, shared_data: Path) -> None:
    out, result = converted
    (mese,) = [f for f in result.files if f.participant_id == "sub-PXA03"]
    assert mese.shape == (256, 128, 8, 17)
    check_against_dicom(
        mese.nifti_path, dicom_images(shared_data / "real" / "siemens_xa_enhanced_mese_calf")
    )
    sidecar = json.loads(mese.sidecar_path.read_text())
    assert sidecar["EchoTime"] == [11.0 * n for n in range(1, 18)]
    assert sidecar["RepetitionTime"] == 5000.0
    assert sidecar["RefocusingFlipAngle"] == 180.0
    assert sidecar["MyoVault"]["EnhancedMR"] is True
    sessions = (out / "sub-PXA03" / "sub-PXA03_sessions.tsv").read_text().splitlines()
    assert sessions == ["session_id\tage\tdays_from_first_visit", "ses-1\t36\t0"]
    participants = (out / "participants.tsv").read_text()
    assert "sub-PXA03\tO" in participants


def test_no_identifier_in_any_output(converted) -> None:
    out, _ = converted
    assert not list(out.rglob("*patient*"))
    for path in out.rglob("*.json"):
        text = path.read_text()
        for needle in ("loeschen", "19881212", "mpMRI", "Universitaetsspital", "PatientName"):
            assert needle not in text


def test_direct_pixel_reads_match_pydicom(shared_data: Path) -> None:
    """The converter's offset-based reader against pydicom's decoder, every real image."""
    from ingest.convert import PixelReader, native_dtype

    reader = PixelReader()
    checked = 0
    for name in SAMPLES:
        scan = scan_folder(shared_data / "real" / name, require_deidentified=False)
        for series in scan.series:
            decoded: dict[Path, np.ndarray] = {}
            for record in series.instances:
                assert native_dtype(record) is not None  # all three samples are native LE
                if record.path not in decoded:
                    decoded[record.path] = pydicom.dcmread(record.path).pixel_array
                expected = decoded[record.path]
                if record.frame_index is not None:
                    expected = expected[record.frame_index]
                got = reader(record)
                assert got.dtype == expected.dtype
                np.testing.assert_array_equal(got, expected)
                checked += 1
    assert checked == 256 + 119 + 136


def test_ge_parts_are_physically_consistent(converted) -> None:
    """The (0043,102F) mapping is right: |real + i·imag| = magnitude, and phase follows
    atan2(imag, real) (GE stores it scaled and not wrapped to ±π, so correlation only)."""
    _out, result = converted
    ge = {
        f.part: np.asanyarray(nib.load(f.nifti_path).dataobj).astype(np.float64)
        for f in result.files
        if f.participant_id == "sub-PGE01"
    }
    mask = ge["magnitude"] > 200
    modulus = np.hypot(ge["real"], ge["imaginary"])[mask]
    assert abs(np.median(ge["magnitude"][mask] / modulus) - 1) < 0.01
    assert np.corrcoef(ge["magnitude"][mask], modulus)[0, 1] > 0.99
    angle = np.arctan2(ge["imaginary"], ge["real"])[mask]
    assert np.corrcoef(ge["phase"][mask], angle)[0, 1] > 0.9
