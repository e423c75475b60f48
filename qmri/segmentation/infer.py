"""Whole-volume inference: resample, slice-wise network, softmax, post-processing, confidence.

Steps for an ``(x, y, z)`` volume on RAS axes (axial slices along axis 2):

1. normalise intensities (99.5th percentile -> 1) and resample each slice to the model's pixel
   size (3 mm for ``thigh-unet-v1``), zero-pad to the network's size multiple;
2. run the network on batches of slices; softmax; by default also on the left-right mirrored
   slices, mirrored back and averaged (test-time augmentation: the network's classes are
   muscles without a side, so a mirrored thigh is still a thigh);
3. resample the class probabilities back to the input grid (linear), arg-max;
4. map network classes to muscles (manifest ``network_labels``), split left/right
   (:func:`qmri.segmentation.postprocess.split_sides`) and keep the largest 3D component of
   each of the 22 output labels;
5. confidence per output label: ``1 - mean normalised softmax entropy`` over its voxels
   (1 = the network was certain everywhere, 0 = uniform probabilities).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from qmri.segmentation.errors import SegmentationInputError
from qmri.segmentation.labels import N_OUTPUT_LABELS, label_names
from qmri.segmentation.postprocess import SideSplit, largest_components, split_sides
from qmri.segmentation.preprocess import normalize_intensity, pad_to_multiple, resample_inplane
from qmri.segmentation.registry import SegmentationModel

__all__ = ["SegmentationResult", "segment_volume"]


@dataclass
class SegmentationResult:
    """Labels and quality information of one segmented volume.

    Attributes
    ----------
    labels : ndarray of uint8, shape (x, y, z)
        Output labels 0..22 on the input grid (1..11 right, 12..22 left).
    confidence : dict of int to float
        Per present output label, ``1 - mean normalised softmax entropy`` (0..1).
    mean_entropy : dict of int to float
        Per present output label, the mean normalised entropy itself.
    sides : SideSplit
        How left and right were decided.
    model_name, model_version : str
        The model that produced the labels.
    mirror_averaged : bool
        Whether the probabilities were averaged with those of the left-right mirror image.
    label_names : dict of int to str
        ``{1: "right_biceps_femoris_long_head", ...}``.
    """

    labels: NDArray[np.uint8]
    confidence: dict[int, float]
    mean_entropy: dict[int, float]
    sides: SideSplit
    model_name: str
    model_version: str
    label_names: dict[int, str] = field(default_factory=label_names)
    mirror_averaged: bool = False

    def sidecar(self) -> dict[str, Any]:
        """JSON-ready description (the label NIfTI sidecar's core)."""
        present = sorted(int(v) for v in np.unique(self.labels) if v)
        return {
            "Labels": {str(k): v for k, v in self.label_names.items()},
            "LabelsPresent": present,
            "Model": {"Name": self.model_name, "Version": self.model_version},
            "SideSplit": {"Mode": self.sides.mode, "MidlineIndex": self.sides.midline_index},
            "Confidence": {str(k): round(v, 4) for k, v in sorted(self.confidence.items())},
            "ConfidenceDefinition": "1 - mean normalised softmax entropy over the label's voxels",
            "MirrorAveraged": self.mirror_averaged,
        }


def _softmax(logits: NDArray[np.float32]) -> NDArray[np.float32]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float32)


def _class_probabilities(
    model: SegmentationModel, batch: NDArray[np.float32], n_classes: int
) -> NDArray[np.float32]:
    logits = model.predict_logits(batch)
    if logits.ndim != 4 or logits.shape[1] != n_classes:
        raise SegmentationInputError(
            f"model returned shape {logits.shape}, expected (n, {n_classes}, X, Y)"
        )
    return _softmax(logits)


def segment_volume(
    image: NDArray[np.floating],
    spacing_mm: tuple[float, float, float] | tuple[float, float],
    model: SegmentationModel,
    *,
    batch_size: int = 8,
    flip_average: bool = True,
) -> SegmentationResult:
    """Segment the 11 thigh muscles of both sides in a volume.

    Parameters
    ----------
    image : ndarray, shape (x, y, z) or (x, y)
        One contrast (Dixon water / fat / FF, MESE first echo, GRE magnitude) on RAS axes with
        axial slices along axis 2; any intensity scale.
    spacing_mm : tuple of float
        Voxel size (x, y[, z]) in mm.
    model : SegmentationModel
        From :func:`qmri.segmentation.load_model`.
    batch_size : int
        Slices per network call.
    flip_average : bool
        Average the class probabilities of the slices and of their left-right mirror images
        (twice the network time; fewer errors at muscle borders).

    Returns
    -------
    SegmentationResult
    """
    vol = np.asarray(image)
    if vol.ndim == 2:
        vol = vol[:, :, None]
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise SegmentationInputError(f"expected an (x, y, z) volume, got shape {vol.shape}")
    if not np.issubdtype(vol.dtype, np.number) or np.iscomplexobj(vol):
        raise SegmentationInputError(f"expected a real-valued image, got dtype {vol.dtype}")
    if len(spacing_mm) < 2 or min(spacing_mm[:2]) <= 0:
        raise SegmentationInputError(f"invalid in-plane spacing {spacing_mm}")
    info = model.info
    nx, ny, nz = vol.shape
    norm = normalize_intensity(vol)
    small = resample_inplane(norm, (float(spacing_mm[0]), float(spacing_mm[1])), info.pixel_mm)
    padded, crop = pad_to_multiple(small, info.size_multiple)
    class_to_muscle = np.asarray(info.class_to_muscle, dtype=np.uint8)
    n_classes = len(class_to_muscle)
    muscle_labels = np.zeros((nx, ny, nz), dtype=np.uint8)
    entropy = np.zeros((nx, ny, nz), dtype=np.float32)
    slices = np.moveaxis(padded, 2, 0)[:, None]  # (z, 1, X, Y)
    log_k = float(np.log(n_classes))
    for start in range(0, nz, batch_size):
        batch = slices[start : start + batch_size]
        prob = _class_probabilities(model, batch, n_classes)
        if flip_average:
            mirrored = _class_probabilities(model, batch[:, :, ::-1], n_classes)[:, :, ::-1]
            prob = 0.5 * (prob + mirrored)
        prob = prob[:, :, crop[0], crop[1]]
        zoom = (1.0, nx / prob.shape[2], ny / prob.shape[3])
        for i in range(prob.shape[0]):
            p = ndimage.zoom(prob[i], zoom, order=1, grid_mode=True, mode="nearest")
            p = p[:, :nx, :ny]
            p = np.clip(p, 1e-7, 1.0)
            p /= p.sum(axis=0, keepdims=True)
            muscle_labels[:, :, start + i] = class_to_muscle[np.argmax(p, axis=0)]
            entropy[:, :, start + i] = -(p * np.log(p)).sum(axis=0) / log_k
    side_labels, sides = split_sides(muscle_labels)
    labels = largest_components(side_labels)
    counts = np.bincount(labels.ravel(), minlength=N_OUTPUT_LABELS + 1)
    sums = np.bincount(labels.ravel(), weights=entropy.ravel(), minlength=N_OUTPUT_LABELS + 1)
    mean_entropy = {
        k: float(sums[k] / counts[k]) for k in range(1, N_OUTPUT_LABELS + 1) if counts[k]
    }
    confidence = {k: 1.0 - v for k, v in mean_entropy.items()}
    return SegmentationResult(
        labels=labels,
        confidence=confidence,
        mean_entropy=mean_entropy,
        sides=sides,
        model_name=info.name,
        model_version=info.version,
        mirror_averaged=flip_average,
    )
