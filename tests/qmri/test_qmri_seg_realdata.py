"""The shipped model on the real samples in ../shared/data/real (overlays for review).

Overlay PNGs (grey image, coloured labels, right thigh warm / left cool colours) are written to
``test-output/segmentation/`` (git-ignored). The assertions check that the labelling is
anatomically sensible, since the real samples have no reference segmentation: both thighs
found, most muscles present on each side, quadriceps anterior of the hamstrings and the
vastus lateralis lateral of the gracilis on each side (not met on the GE sample: a known,
strict xfail).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from qmri.segmentation import load_model, segment_nifti

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

OUT = Path(__file__).resolve().parents[2] / "test-output" / "segmentation"


def _dicom_volume(files: list[Path]) -> nib.Nifti1Image:
    """Stack single-frame axial DICOM slices into a RAS-affine NIfTI (x = columns)."""
    datasets = [pydicom.dcmread(str(f)) for f in files]
    row_cos = np.asarray(datasets[0].ImageOrientationPatient[:3], dtype=float)
    col_cos = np.asarray(datasets[0].ImageOrientationPatient[3:], dtype=float)
    normal = np.cross(row_cos, col_cos)
    datasets.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
    data = np.stack([d.pixel_array.T.astype(np.float32) for d in datasets], axis=2)
    dr, dc = (float(v) for v in datasets[0].PixelSpacing)
    p0 = np.asarray(datasets[0].ImagePositionPatient, float)
    p1 = np.asarray(datasets[-1].ImagePositionPatient, float)
    step = (p1 - p0) / max(len(datasets) - 1, 1)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * dc
    lps[:3, 1] = col_cos * dr
    lps[:3, 2] = step if len(datasets) > 1 else normal * float(datasets[0].SliceThickness)
    lps[:3, 3] = p0
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return nib.Nifti1Image(data, ras)


def _overlay(image: nib.Nifti1Image, labels: nib.Nifti1Image, path: Path) -> None:
    img = nib.as_closest_canonical(image)
    lab = nib.as_closest_canonical(labels)
    data = np.asarray(img.dataobj, dtype=np.float32)
    seg = np.asarray(lab.dataobj).astype(np.int64)
    zs = np.linspace(0, data.shape[2] - 1, min(6, data.shape[2])).round().astype(int)
    palette = np.random.default_rng(7).uniform(80, 255, (23, 3))
    palette[1:12, 0] = 255  # right side: strong red channel
    palette[12:23, 2] = 255  # left side: strong blue channel
    scale = np.percentile(data, 99.5) or 1.0
    tiles = []
    for z in zs:
        grey = np.clip(data[:, :, z] / scale, 0, 1)[..., None] * 255 * np.ones(3)
        colour = palette[seg[:, :, z]]
        mask = (seg[:, :, z] > 0)[..., None]
        rgb = np.where(mask, 0.55 * grey + 0.45 * colour, grey)
        # radiological display: anterior up, subject's right on the viewer's left
        tiles.append(np.transpose(rgb, (1, 0, 2))[::-1, ::-1])
    Image.fromarray(np.concatenate(tiles, axis=1).astype(np.uint8)).save(path)


def _check_sensible(labels: np.ndarray, affine: np.ndarray, min_muscles: int) -> None:
    lab = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(labels, affine)).dataobj)
    y = np.arange(lab.shape[1])[None, :, None]
    x = np.arange(lab.shape[0])[:, None, None]
    for offset, lateral_sign in ((0, 1), (11, -1)):  # right: lateral is +x on RAS axes
        present = {int(v) - offset for v in np.unique(lab) if offset < v <= offset + 11}
        assert len(present) >= min_muscles, present
        quad = np.isin(lab, [m + offset for m in (6, 7, 8, 9)])
        ham = np.isin(lab, [m + offset for m in (1, 3, 4)])
        assert (quad * y).sum() / quad.sum() > (ham * y).sum() / ham.sum()
        vl = lab == 7 + offset
        gr = lab == 10 + offset
        if vl.any() and gr.any():
            dx = (vl * x).sum() / vl.sum() - (gr * x).sum() / gr.sum()
            assert dx * lateral_sign > 0


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_model()


def test_musclemap_dixon_first_echo(shared_data: Path, model) -> None:  # type: ignore[no-untyped-def]
    OUT.mkdir(parents=True, exist_ok=True)
    image = nib.load(str(shared_data / "real/musclemap_dixon/0006-Dixon_TE_345_th.nii.gz"))
    labels, result = segment_nifti(image, model)
    assert labels.shape == image.shape
    assert result.sides.mode == "midline"
    _overlay(image, labels, OUT / "musclemap_dixon_te345.png")
    _check_sensible(np.asarray(labels.dataobj), image.affine, min_muscles=8)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="known limitation (MODEL_CARD.md): on this 3 T GE first echo (TE 3.9 ms: dark"
    " fat-water boundary lines, which the phantom's GRE contrast does not simulate; bright"
    " tissue between the thighs) the vastus lateralis is not placed lateral of the gracilis",
)
def test_ge_megre_first_echo_magnitude(shared_data: Path, model) -> None:  # type: ignore[no-untyped-def]
    OUT.mkdir(parents=True, exist_ok=True)
    files = []
    for path in sorted((shared_data / "real/ge_megre_thigh").glob("*.dcm")):
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        if int(ds[0x0043, 0x102F].value) == 0 and float(ds.EchoTime) < 5.0:
            files.append(path)
    assert len(files) == 32
    image = _dicom_volume(files)
    labels, result = segment_nifti(image, model)
    assert result.sides.mode == "midline"
    _overlay(image, labels, OUT / "ge_megre_echo1_magnitude.png")
    _check_sensible(np.asarray(labels.dataobj), image.affine, min_muscles=8)


def test_siemens_mese_first_echo(shared_data: Path, model) -> None:  # type: ignore[no-untyped-def]
    OUT.mkdir(parents=True, exist_ok=True)
    files = []
    for path in sorted((shared_data / "real/siemens_mese_thigh").glob("*.dcm")):
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        if int(ds.EchoNumbers) == 1:
            files.append(path)
    assert len(files) == 7
    image = _dicom_volume(files)
    labels, result = segment_nifti(image, model)
    assert result.sides.mode == "midline"
    _overlay(image, labels, OUT / "siemens_mese_echo1.png")
    _check_sensible(np.asarray(labels.dataobj), image.affine, min_muscles=8)
