"""Geometry: synthetic series with known orientation, reversed slices, shuffled echoes.

The expected voxel→scanner mapping is computed here from the generating parameters (rotation,
spacing, origin), independently of ``ingest.nifti``; every voxel value encodes which DICOM pixel
it came from, so each output voxel is checked against the DICOM formula
``P + c·Δc·X + r·Δr·Y`` (PS3.3 C.7.6.2.1.1) converted LPS→RAS.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ingest_helpers import classic_image, save
from pydicom.uid import generate_uid

from ingest.convert import convert, plan_conversion
from ingest.errors import GeometryError
from ingest.nifti import stack_geometry
from ingest.records import records_from_dataset
from ingest.scan import scan_folder

ROWS, COLS = 5, 7
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def rotation(seed: int) -> np.ndarray:
    """A random proper rotation (columns: row dir X, column dir Y, normal Z)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if np.linalg.det(q) < 0:
        q[:, 2] *= -1
    return q


def encode(i: np.ndarray, j: np.ndarray, k: int, e: int) -> np.ndarray:
    return e * 10000 + k * 1000 + j * COLS + i


def decode(value: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    value = value.astype(np.int64)
    e, rest = np.divmod(value, 10000)
    k, rest = np.divmod(rest, 1000)
    j, i = np.divmod(rest, COLS)
    return i, j, k, e


def write_series(
    folder: Path,
    *,
    rot: np.ndarray,
    origin: np.ndarray,
    step_mm: float,
    spacing: tuple[float, float],
    n_slices: int,
    echo_times: list[float],
    order: list[tuple[int, int]],
    series_uid: str,
    study_uid: str,
    **extra: object,
) -> None:
    """Write one file per (k, e) in the given order; slice k at origin + k·step·normal."""
    jj, ii = np.mgrid[0:ROWS, 0:COLS]
    for n, (k, e) in enumerate(order):
        position = origin + k * step_mm * rot[:, 2]
        pixels = encode(ii, jj, k, e)
        ds = classic_image(
            pixels,
            position=tuple(position),
            orientation=tuple(rot[:, 0]) + tuple(rot[:, 1]),
            spacing=spacing,
            echo_time_ms=echo_times[e],
            series_uid=series_uid,
            study_uid=study_uid,
            InstanceNumber=n + 1,
            EchoNumbers=e + 1,
            ScanningSequence="SE",
            ImageType=["ORIGINAL", "PRIMARY", "M", "ND"],
            RepetitionTime="3000",
            **extra,
        )
        save(ds, folder / f"im{n:03d}.dcm")


def check_voxels(nifti: nib.Nifti1Image, rot, origin, step_mm, spacing, echo_times) -> None:
    data = np.asanyarray(nifti.dataobj)
    affine = nifti.affine
    i, j, k, e = np.meshgrid(*(np.arange(s) for s in data.shape), indexing="ij")
    src_i, src_j, src_k, src_e = decode(data)
    # echo axis: ascending echo time
    assert np.all(np.array(echo_times)[src_e] == np.sort(echo_times)[e])
    # every voxel sits where its DICOM pixel sits
    lps = (
        origin[:, None]
        + rot[:, 2][:, None] * (src_k.ravel() * step_mm)
        + rot[:, 0][:, None] * (src_i.ravel() * spacing[1])
        + rot[:, 1][:, None] * (src_j.ravel() * spacing[0])
    )
    expected_ras = LPS_TO_RAS @ lps
    voxels = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    got_ras = (affine @ voxels)[:3]
    np.testing.assert_allclose(got_ras, expected_ras, atol=1e-3)


@pytest.mark.parametrize(
    ("seed", "step_mm", "reverse"),
    [(1, 3.5, True), (2, -4.0, False), (3, 2.0, True)],
)
def test_oblique_reversed_shuffled_series_maps_voxels_to_scanner(
    tmp_path: Path, seed: int, step_mm: float, reverse: bool
) -> None:
    rot = rotation(seed)
    origin = np.array([-50.0, 20.0, 10.0])
    spacing = (0.8, 1.3)
    echo_times = [30.0, 10.0, 20.0]  # shuffled on purpose
    n_slices = 4
    rng = np.random.default_rng(seed)
    order = [(k, e) for k in range(n_slices) for e in range(len(echo_times))]
    order = [order[n] for n in rng.permutation(len(order))]
    if reverse:
        order.sort(key=lambda ke: -ke[0])
    write_series(
        tmp_path / "src",
        rot=rot,
        origin=origin,
        step_mm=step_mm,
        spacing=spacing,
        n_slices=n_slices,
        echo_times=echo_times,
        order=order,
        series_uid=generate_uid(),
        study_uid=generate_uid(),
    )
    plan = plan_conversion(scan_folder(tmp_path / "src"))
    assert [f.classification.label for f in plan.files] == ["mese"]
    result = convert(plan, tmp_path / "out")
    assert not result.failed
    (written,) = result.files
    image = nib.load(written.nifti_path)
    assert image.shape == (COLS, ROWS, n_slices, 3)
    check_voxels(image, rot, origin, step_mm, spacing, echo_times)
    # independent closed-form affine: origin is the slice lowest along the normal
    first = origin if step_mm > 0 else origin + (n_slices - 1) * step_mm * rot[:, 2]
    expected = np.eye(4)
    expected[:3, 0] = LPS_TO_RAS @ rot[:, 0] * spacing[1]
    expected[:3, 1] = LPS_TO_RAS @ rot[:, 1] * spacing[0]
    expected[:3, 2] = LPS_TO_RAS @ rot[:, 2] * abs(step_mm)
    expected[:3, 3] = LPS_TO_RAS @ first
    np.testing.assert_allclose(image.affine, expected, atol=1e-4)
    assert int(image.header["sform_code"]) == 1
    assert int(image.header["qform_code"]) == 1
    np.testing.assert_allclose(image.get_qform(), expected, atol=1e-3)
    sidecar = json.loads(written.sidecar_path.read_text())
    assert sidecar["EchoTime"] == [10.0, 20.0, 30.0]


def _records(tmp_path: Path, positions, echo_times, orientation=(1, 0, 0, 0, 1, 0)):
    series_uid, study_uid = generate_uid(), generate_uid()
    records = []
    for n, (position, te) in enumerate(zip(positions, echo_times, strict=True)):
        ds = classic_image(
            np.zeros((ROWS, COLS)),
            position=position,
            orientation=orientation,
            echo_time_ms=te,
            series_uid=series_uid,
            study_uid=study_uid,
        )
        records.extend(records_from_dataset(ds, tmp_path / f"{n}.dcm"))
    return records


def test_uneven_slice_gap_is_refused(tmp_path: Path) -> None:
    records = _records(tmp_path, [(0, 0, 0), (0, 0, 5), (0, 0, 12)], [10, 10, 10])
    with pytest.raises(GeometryError, match="not evenly spaced"):
        stack_geometry(records)


def test_duplicate_slice_and_echo_is_refused(tmp_path: Path) -> None:
    records = _records(tmp_path, [(0, 0, 0), (0, 0, 0), (0, 0, 5)], [10, 10, 10])
    with pytest.raises(GeometryError, match="2 images at slice 1"):
        stack_geometry(records)


def test_missing_echo_for_one_slice_is_refused(tmp_path: Path) -> None:
    records = _records(tmp_path, [(0, 0, 0), (0, 0, 0), (0, 0, 5)], [10, 20, 10])
    with pytest.raises(GeometryError, match="incomplete stack"):
        stack_geometry(records)


def test_mixed_orientation_is_refused(tmp_path: Path) -> None:
    a = _records(tmp_path, [(0, 0, 0)], [10])
    b = _records(tmp_path, [(0, 0, 5)], [10], orientation=(0, 1, 0, 0, 0, -1))
    with pytest.raises(GeometryError, match="ImageOrientationPatient differs"):
        stack_geometry(a + b)


def test_single_slice_uses_thickness_along_normal(tmp_path: Path) -> None:
    series_uid, study_uid = generate_uid(), generate_uid()
    ds = classic_image(
        np.zeros((ROWS, COLS)),
        position=(1, 2, 3),
        orientation=(0, 1, 0, 0, 0, -1),  # sagittal: normal X × Y = (-1, 0, 0) in LPS
        series_uid=series_uid,
        study_uid=study_uid,
        SliceThickness="4",
    )
    geometry = stack_geometry(records_from_dataset(ds, tmp_path / "x.dcm"))
    np.testing.assert_allclose(geometry.affine[:3, 2], [4.0, 0.0, 0.0])  # RAS of LPS (-4,0,0)
    np.testing.assert_allclose(geometry.affine[:3, 3], [-1.0, -2.0, 3.0])


def test_sheared_stack_keeps_sform_and_drops_qform(tmp_path: Path) -> None:
    # gantry-tilt-like: each slice shifted in-plane as well as along the normal
    positions = [(0.5 * k, 0, 5.0 * k) for k in range(3)]
    records = _records(tmp_path, positions, [10, 10, 10])
    geometry = stack_geometry(records)
    assert not geometry.is_orthogonal
    np.testing.assert_allclose(geometry.affine[:3, 2], [-0.5, 0.0, 5.0])
