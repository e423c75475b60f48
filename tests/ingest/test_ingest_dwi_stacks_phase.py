"""DWI (bval/bvec), multi-stack series (chunks) and phase scaling, on synthetic series."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import generate_uid

from ingest.convert import convert, plan_conversion
from ingest.scan import scan_folder
from tests.ingest.ingest_helpers import classic_image, save

ROWS, COLS = 6, 5


def _rotation_x(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])


def _oblique() -> tuple[np.ndarray, np.ndarray]:
    rot = _rotation_x(20.0) @ np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float)
    return rot[:, 0], rot[:, 1]  # row and column direction cosines (LPS)


def _expected_bvec(affine: np.ndarray, g_lps: np.ndarray) -> np.ndarray:
    """Independent route: the gradient in RAS through the written affine, FSL x flip."""
    m = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    v = np.linalg.solve(m, np.diag([-1.0, -1.0, 1.0]) @ g_lps)
    if np.linalg.det(affine[:3, :3]) > 0:
        v[0] = -v[0]
    return v / np.linalg.norm(v)


def _write_dwi(root: Path, vendor: str) -> list[tuple[float, np.ndarray | None]]:
    row, col = _oblique()
    normal = np.cross(row, col)
    volumes: list[tuple[float, np.ndarray | None]] = [
        (0.0, None),
        (1000.0, np.array([1.0, 0.0, 0.0])),
        (1000.0, np.array([0.0, 0.6, 0.8])),
        (500.0, np.array([0.0, 0.0, -1.0])),
        (0.0, None),
    ]
    series, study = generate_uid(), generate_uid()
    instance = 0
    for v, (b, g) in enumerate(volumes):
        for k in (2, 0, 1):  # slices out of order on purpose
            instance += 1
            pixels = np.full((ROWS, COLS), 100 * v + k, dtype=np.uint16)
            ds = classic_image(
                pixels,
                position=tuple(10 + 4.0 * k * normal),
                orientation=(*row, *col),
                spacing=(1.5, 2.0),
                echo_time_ms=80.0,
                series_uid=series,
                study_uid=study,
                Manufacturer={"siemens": "SIEMENS", "ge": "GE MEDICAL SYSTEMS"}.get(
                    vendor, "Philips Medical Systems"
                ),
                ScanningSequence="EP",
                SequenceName="*ep_b1000#1",
                ImageType=["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"],
                InstanceNumber=instance,
                SeriesDescription="dwi thigh",
            )
            if vendor == "siemens":
                block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
                block.add_new(0x0C, "IS", str(int(b)))
                if g is not None:
                    block.add_new(0x0E, "FD", list(g))
            elif vendor == "philips":  # b-value and direction (LPS) as FL
                block = ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
                block.add_new(0x03, "FL", float(b))
                mr = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
                for off, value in zip(
                    (0xB0, 0xB1, 0xB2), np.zeros(3) if g is None else g, strict=True
                ):
                    mr.add_new(off, "FL", float(value))
            else:  # GE: b-value with the 1e9 flag offset, direction in the image frame
                block = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
                block.add_new(0x39, "IS", [str(int(b) + 1_000_000_000), "8", "0", "0"])
                acq = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
                gi = np.zeros(3) if g is None else np.array([g @ row, g @ col, g @ normal])
                for off, value in zip((0xBB, 0xBC, 0xBD), gi, strict=True):
                    acq.add_new(off, "DS", f"{value:.6f}")
            save(ds, root / f"IM{instance:03d}.dcm")
    return volumes


@pytest.mark.parametrize("vendor", ["siemens", "ge", "philips"])
def test_dwi_bval_bvec_rotated_into_the_image_frame(tmp_path: Path, vendor: str) -> None:
    volumes = _write_dwi(tmp_path / "in", vendor)
    plan = plan_conversion(scan_folder(tmp_path / "in"))
    assert not plan.not_converted, plan.not_converted
    result = convert(plan, tmp_path / "out")
    (dwi,) = result.files
    assert dwi.nifti_path.name == "sub-PSEUDO01_ses-1_dwi.nii.gz"
    assert dwi.nifti_path.parent.name == "mr-dwi"
    assert dwi.bval_path == dwi.nifti_path.with_name("sub-PSEUDO01_ses-1_dwi.bval")
    image = nib.load(dwi.nifti_path)
    data = np.asanyarray(image.dataobj)
    assert data.shape == (COLS, ROWS, 3, 5)
    for v in range(5):  # volumes in acquisition order, slices ascending along the normal
        for k in range(3):
            assert np.all(data[:, :, k, v] == 100 * v + k)
    assert dwi.bval_path is not None and dwi.bvec_path is not None
    bvals = [float(x) for x in dwi.bval_path.read_text().split()]
    assert bvals == [b for b, _ in volumes]
    bvecs = np.array(
        [[float(x) for x in line.split()] for line in dwi.bvec_path.read_text().splitlines()]
    )
    assert bvecs.shape == (3, 5)
    for v, (_b, g) in enumerate(volumes):
        if g is None:
            assert np.all(bvecs[:, v] == 0)
        else:
            np.testing.assert_allclose(bvecs[:, v], _expected_bvec(image.affine, g), atol=1e-5)
    sidecar = json.loads(dwi.sidecar_path.read_text())
    assert sidecar["EchoTime"] == 80.0
    assert sidecar["MyoVault"]["DiffusionVolumes"] == 5
    assert sidecar["MyoVault"]["DiffusionSource"] == vendor


def test_dwi_image_without_direction_is_refused_and_derived_maps_skipped(tmp_path: Path) -> None:
    series, study = generate_uid(), generate_uid()
    for k in range(2):
        for n, (b, image_type) in enumerate(
            ((0, "DIFFUSION"), (1000, "DIFFUSION"))  # b=1000 with no direction: a trace
        ):
            ds = classic_image(
                np.zeros((4, 4)),
                position=(0, 0, 3.0 * k),
                series_uid=series,
                study_uid=study,
                ImageType=["ORIGINAL", "PRIMARY", image_type, "NONE"],
                ScanningSequence="EP",
                InstanceNumber=10 * n + k,
            )
            ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", str(b))
            save(ds, tmp_path / "in" / f"a{k}{n}.dcm")
    adc = generate_uid()
    for k in range(2):
        ds = classic_image(
            np.zeros((4, 4)),
            position=(0, 0, 3.0 * k),
            series_uid=adc,
            study_uid=study,
            SeriesNumber=2,
            ImageType=["DERIVED", "PRIMARY", "DIFFUSION", "ADC"],
            ScanningSequence="EP",
        )
        save(ds, tmp_path / "in" / f"adc{k}.dcm")
    plan = plan_conversion(scan_folder(tmp_path / "in"))
    assert not plan.files
    reasons = {
        item.what.split(" ")[1]: (item.kind.value, item.reason) for item in plan.not_converted
    }
    assert reasons["1"][0] == "refused" and "without a gradient direction" in reasons["1"][1]
    assert reasons["2"][0] == "skipped" and "derived diffusion map" in reasons["2"][1]


def _stack(
    root: Path,
    series: str,
    study: str,
    orientation: tuple[float, ...],
    origins: list[np.ndarray],
    value: int,
    tag: str,
) -> None:
    for n, origin in enumerate(origins):
        ds = classic_image(
            np.full((4, 3), value + n, dtype=np.uint16),
            position=tuple(origin),
            orientation=orientation,
            spacing=(1.0, 1.0),
            series_uid=series,
            study_uid=study,
            ScanningSequence="SE",
            RepetitionTime="500",
            SeriesDescription="t1 thigh and calf",
            ImageType=["ORIGINAL", "PRIMARY", "M", "ND"],
        )
        save(ds, root / f"{tag}{n}.dcm")


def test_multi_stack_series_split_into_chunks(tmp_path: Path) -> None:
    series, study = generate_uid(), generate_uid()
    axial = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    coronal = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    root = tmp_path / "in"
    # two axial slabs with a 40 mm gap (thigh + calf) and one coronal stack, one series
    _stack(root, series, study, axial, [np.array([0, 0, z]) for z in (0, 5, 10)], 10, "a")
    _stack(root, series, study, axial, [np.array([0, 0, z]) for z in (50, 55, 60, 65)], 20, "b")
    _stack(root, series, study, coronal, [np.array([0, y, 0]) for y in (0, 3)], 30, "c")
    plan = plan_conversion(scan_folder(root))
    assert not plan.not_converted, plan.not_converted
    result = convert(plan, tmp_path / "out")
    by_chunk = {}
    for f in result.files:
        sidecar = json.loads(f.sidecar_path.read_text())
        by_chunk[sidecar["MyoVault"]["Chunk"]] = (f, nib.load(f.nifti_path))
        assert (
            f.nifti_path.name
            == f"sub-PSEUDO01_ses-1_chunk-{sidecar['MyoVault']['Chunk']}_T1w.nii.gz"
        )
    assert sorted(by_chunk) == [1, 2, 3]
    shapes = sorted(img.shape for _f, img in by_chunk.values())
    assert shapes == [(3, 4, 2), (3, 4, 3), (3, 4, 4)]
    for _f, img in by_chunk.values():
        data = np.asanyarray(img.dataobj)
        first = int(data[0, 0, 0])
        assert first in (10, 20, 30)
        for k in range(img.shape[2]):
            assert np.all(data[:, :, k] == first + k)
        # the affine puts voxel (0, 0, k) at the k-th origin of that stack (RAS = -L, -P, S)
        if first == 20:
            np.testing.assert_allclose(img.affine @ [0, 0, 3, 1], [0, 0, 65, 1], atol=1e-4)
        if first == 30:
            assert np.isclose(abs(img.affine[1, 2]), 3.0)


def test_repeated_positions_are_still_refused(tmp_path: Path) -> None:
    series, study = generate_uid(), generate_uid()
    axial = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    root = tmp_path / "in"
    _stack(root, series, study, axial, [np.array([0, 0, z]) for z in (0, 5)], 10, "a")
    _stack(root, series, study, axial, [np.array([0, 0, z]) for z in (0, 5)], 20, "b")
    plan = plan_conversion(scan_folder(root))
    assert not plan.files
    (item,) = plan.not_converted
    assert "geometry" in item.reason and "mixed stacks" in item.reason


def _phase_series(root: Path, **extra: object) -> None:
    series, study = generate_uid(), generate_uid()
    stored = extra.pop("stored")
    for k in range(2):
        for e, te in enumerate((5.0, 10.0)):
            ds = classic_image(
                np.zeros((2, 2)),
                position=(0, 0, 2.0 * k),
                echo_time_ms=te,
                series_uid=series,
                study_uid=study,
                ScanningSequence="GR",
                ImageType=["ORIGINAL", "PRIMARY", "P", "ND"],
                **extra,
            )
            ds.PixelData = np.asarray(stored, dtype=ds.pixel_array.dtype).tobytes()
            save(ds, root / f"p{k}{e}.dcm")


@pytest.mark.parametrize(
    ("extra", "stored", "radians", "rule"),
    [
        (  # Siemens: 12 bits, slope 2, intercept -4096
            {"BitsStored": 12, "HighBit": 11, "RescaleSlope": "2", "RescaleIntercept": "-4096"},
            [[0, 1024], [2048, 4095]],
            [[-np.pi, -np.pi / 2], [0.0, np.pi * 4094 / 4096]],
            "range-4096",
        ),
        (  # GE signed
            {"Manufacturer": "GE MEDICAL SYSTEMS", "PixelRepresentation": 1},
            [[-4096, -2048], [0, 4095]],
            [[-np.pi, -np.pi / 2], [0.0, np.pi * 4095 / 4096]],
            "ge-signed",
        ),
        (  # Philips-like rescale into milliradians
            {
                "Manufacturer": "Philips",
                "BitsStored": 12,
                "HighBit": 11,
                "RescaleSlope": "1.534",
                "RescaleIntercept": "-3141",
            },
            [[0, 2048], [1000, 4095]],
            [
                [-3.141, (2048 * 1.534 - 3141) / 1000],
                [(1534 - 3141) / 1000, (4095 * 1.534 - 3141) / 1000],
            ],
            "milliradians",
        ),
    ],
)
def test_phase_scaled_to_radians(
    tmp_path: Path, extra: dict, stored: list, radians: list, rule: str
) -> None:
    _phase_series(tmp_path / "in", stored=stored, **extra)
    result = convert(plan_conversion(scan_folder(tmp_path / "in")), tmp_path / "out")
    (phase,) = result.files
    assert phase.part == "phase"
    data = np.asanyarray(nib.load(phase.nifti_path).dataobj)
    assert data.dtype == np.float32
    # NIfTI is the transposed DICOM image
    np.testing.assert_allclose(data[:, :, 1, 0], np.array(radians).T, rtol=1e-5, atol=1e-5)
    sidecar = json.loads(phase.sidecar_path.read_text())
    assert sidecar["Units"] == "rad"
    assert sidecar["MyoVault"]["PhaseScaling"]["Rule"] == rule


def test_phase_with_unknown_scale_is_kept_and_marked_arbitrary(tmp_path: Path) -> None:
    _phase_series(tmp_path / "in", stored=[[0, 1], [60000, 65535]])  # 16-bit, no rescale
    result = convert(plan_conversion(scan_folder(tmp_path / "in")), tmp_path / "out")
    (phase,) = result.files
    data = np.asanyarray(nib.load(phase.nifti_path).dataobj)
    assert data[1, 1, 0, 0] == 65535  # stored values, not a guessed scale
    sidecar = json.loads(phase.sidecar_path.read_text())
    assert sidecar["Units"] == "arbitrary" and "PhaseScaling" not in sidecar["MyoVault"]


def test_enhanced_dwi_from_the_standard_diffusion_sequence(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    from tests.ingest.ingest_helpers import enhanced_image

    row, col = _oblique()
    normal = np.cross(row, col)
    encodings = [
        (0.0, None),
        (800.0, np.array([0.0, 0.0, 1.0])),
        (800.0, np.array([1.0, 1.0, 0.0])),
    ]
    positions, frames, frame_encodings = [], [], []
    for v, _enc in enumerate(encodings):
        for k in range(2):
            positions.append(tuple(4.0 * k * normal))
            frames.append(np.full((ROWS, COLS), 10 * v + k))
            frame_encodings.append(encodings[v])
    ds = enhanced_image(
        np.array(frames),
        positions=positions,
        echo_times_ms=[70.0] * len(frames),
        orientation=(*row, *col),
        series_uid=generate_uid(),
        study_uid=generate_uid(),
        EchoPulseSequence="SPIN",
    )
    ds.EchoPlanarPulseSequence = "YES"
    for item, (b, g) in zip(ds.PerFrameFunctionalGroupsSequence, frame_encodings, strict=True):
        diffusion = Dataset()
        diffusion.DiffusionBValue = b
        diffusion.DiffusionDirectionality = "NONE" if g is None else "DIRECTIONAL"
        if g is not None:
            direction = Dataset()
            direction.DiffusionGradientOrientation = list(g / np.linalg.norm(g))
            diffusion.DiffusionGradientDirectionSequence = [direction]
        item.MRDiffusionSequence = [diffusion]
    save(ds, tmp_path / "in" / "dwi.dcm")
    plan = plan_conversion(scan_folder(tmp_path / "in"))
    assert not plan.not_converted, plan.not_converted
    (dwi,) = convert(plan, tmp_path / "out").files
    image = nib.load(dwi.nifti_path)
    data = np.asanyarray(image.dataobj)
    assert data.shape == (COLS, ROWS, 2, 3)
    assert all(np.all(data[:, :, k, v] == 10 * v + k) for v in range(3) for k in range(2))
    assert dwi.bval_path is not None and dwi.bvec_path is not None
    assert dwi.bval_path.read_text().split() == ["0", "800", "800"]
    bvecs = np.array(
        [[float(x) for x in line.split()] for line in dwi.bvec_path.read_text().splitlines()]
    )
    for v, (_b, g) in enumerate(encodings):
        if g is not None:
            expected = _expected_bvec(image.affine, g / np.linalg.norm(g))
            np.testing.assert_allclose(bvecs[:, v], expected, atol=1e-5)
    assert json.loads(dwi.sidecar_path.read_text())["MyoVault"]["DiffusionSource"] == "standard"


def test_ge_general_purpose_field_is_no_b_value_outside_epi(tmp_path: Path) -> None:
    """GE's (0043,1039) carries other values in non-EPI series: never read as a b-value."""
    series, study = generate_uid(), generate_uid()
    for k in range(2):
        for e, te in enumerate((4.0, 8.0)):
            ds = classic_image(
                np.zeros((4, 4)),
                position=(0, 0, 3.0 * k),
                echo_time_ms=te,
                series_uid=series,
                study_uid=study,
                Manufacturer="GE MEDICAL SYSTEMS",
                ScanningSequence="GR",
            )
            block = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
            block.add_new(0x39, "IS", ["5", "0", "0", "0"])
            block.add_new(0x2F, "SS", 0)
            save(ds, tmp_path / "in" / f"{k}{e}.dcm")
    plan = plan_conversion(scan_folder(tmp_path / "in"))
    (megre,) = plan.files
    assert megre.classification.label == "megre"
