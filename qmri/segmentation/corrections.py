"""User-corrected segmentations as extra training data (fine-tuning on real images).

The repository exports each corrected case (``myovault segment-corrections export OUT_DIR``) as::

    OUT_DIR/manifest.json                  {"format": "myovault-corrections/1", "cases": [...]}
    OUT_DIR/case-00001/image.nii.gz        the image the labels were drawn on (3D)
    OUT_DIR/case-00001/labels.nii.gz       corrected labels 0..22 (1..11 right, 12..22 left)
    OUT_DIR/case-00001/provenance.json     who corrected which version, when, base model

:func:`load_corrections_dir` reads such a folder into :class:`CorrectedVolume` records on RAS
axes; :func:`correction_slices` turns one into normalised, resampled axial slices with muscle
labels 0..11 (sides merged, as the network is side-agnostic), ready for the training pool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations
from numpy.typing import NDArray
from scipy import ndimage

from qmri.segmentation.errors import SegmentationInputError
from qmri.segmentation.labels import LEFT_OFFSET, N_OUTPUT_LABELS
from qmri.segmentation.preprocess import normalize_intensity, resample_inplane

__all__ = ["CorrectedVolume", "load_corrections_dir", "correction_slices"]

FORMAT = "myovault-corrections/1"


@dataclass(frozen=True)
class CorrectedVolume:
    """One corrected case on RAS axes.

    Attributes
    ----------
    name : str
        The case folder name.
    image : ndarray of float32, shape (x, y, z)
    labels : ndarray of uint8, shape (x, y, z)
        Output labels 0..22.
    spacing_mm : tuple of 3 float
    """

    name: str
    image: NDArray[np.float32]
    labels: NDArray[np.uint8]
    spacing_mm: tuple[float, float, float]


def _to_ras(image: nib.Nifti1Image, data: NDArray[np.generic]) -> tuple[NDArray, tuple]:
    stored = orientations.io_orientation(image.affine)
    to_ras = orientations.ornt_transform(stored, orientations.axcodes2ornt(("R", "A", "S")))
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)
    spacing = tuple(float(zooms[int(i)]) for i in to_ras[:, 0].argsort())
    return orientations.apply_orientation(data, to_ras), spacing


def _load_case(folder: Path) -> CorrectedVolume:
    image = nib.load(str(folder / "image.nii.gz"))
    labels = nib.load(str(folder / "labels.nii.gz"))
    if not isinstance(image, nib.Nifti1Image) or not isinstance(labels, nib.Nifti1Image):
        raise SegmentationInputError(f"{folder}: image and labels must be NIfTI-1")
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    lab = np.asarray(labels.dataobj)
    if data.shape != lab.shape[:3] or not np.allclose(image.affine, labels.affine, atol=1e-3):
        raise SegmentationInputError(f"{folder}: the labels are not on the image's grid")
    if lab.min() < 0 or lab.max() > N_OUTPUT_LABELS or np.any(lab != np.round(lab)):
        raise SegmentationInputError(f"{folder}: labels must be integers 0..{N_OUTPUT_LABELS}")
    data_ras, spacing = _to_ras(image, data)
    lab_ras, _ = _to_ras(labels, lab.reshape(data.shape).astype(np.uint8))
    return CorrectedVolume(folder.name, data_ras.astype(np.float32), lab_ras, spacing)  # type: ignore[arg-type]


def load_corrections_dir(root: Path) -> list[CorrectedVolume]:
    """Every case of an exported corrections folder (in manifest order, else by name)."""
    root = Path(root)
    manifest = root / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text("utf-8"))
        if data.get("format") != FORMAT:
            raise SegmentationInputError(f"{manifest}: unknown format {data.get('format')!r}")
        folders = [root / str(case["folder"]) for case in data.get("cases", [])]
    else:
        folders = sorted(p.parent for p in root.glob("*/labels.nii.gz"))
    return [_load_case(folder) for folder in folders]


def correction_slices(
    case: CorrectedVolume, pixel_mm: float
) -> tuple[NDArray[np.float32], NDArray[np.uint8]]:
    """Axial slices holding muscle, normalised and resampled to ``pixel_mm``.

    Returns
    -------
    images : ndarray of float32, shape (n, X, Y)
    labels : ndarray of uint8, shape (n, X, Y)
        Muscle labels 0..11 (left labels 12..22 folded onto 1..11).
    """
    norm = normalize_intensity(case.image)
    spacing = (case.spacing_mm[0], case.spacing_mm[1])
    image = resample_inplane(norm, spacing, pixel_mm)
    zoom = [image.shape[0] / norm.shape[0], image.shape[1] / norm.shape[1], 1.0]
    labels = ndimage.zoom(case.labels, zoom, order=0, grid_mode=True, mode="nearest")
    labels = labels[: image.shape[0], : image.shape[1]]
    muscles = np.where(labels > LEFT_OFFSET, labels - LEFT_OFFSET, labels).astype(np.uint8)
    keep = muscles.any(axis=(0, 1))
    return (
        np.ascontiguousarray(np.moveaxis(image[:, :, keep], 2, 0)),
        np.ascontiguousarray(np.moveaxis(muscles[:, :, keep], 2, 0)),
    )
