"""Post-processing of network labels: left/right split and largest connected component."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from qmri.segmentation.labels import N_OUTPUT_LABELS, to_side_labels

__all__ = ["SideSplit", "split_sides", "largest_components"]

_LATERAL = (7, 2, 1)  # vastus lateralis, biceps femoris short and long heads
_MEDIAL = (10, 11, 5)  # gracilis, sartorius, adductor magnus


@dataclass(frozen=True)
class SideSplit:
    """How the sides were decided.

    Attributes
    ----------
    mode : {"midline", "single_right", "single_left", "empty"}
        ``midline``: two thighs, split at the gap; ``single_*``: one thigh in the field of
        view, side decided from anatomy (lateral muscles lie towards the subject's own side).
    midline_index : int or None
        Axis-0 index of the split for ``midline`` (x >= index is right on RAS axes).
    """

    mode: str
    midline_index: int | None


def _side_of_single_thigh(muscle_labels: NDArray[np.integer]) -> str:
    x = np.arange(muscle_labels.shape[0])[:, None, None]
    lateral = np.isin(muscle_labels, _LATERAL)
    medial = np.isin(muscle_labels, _MEDIAL)
    if not lateral.any() or not medial.any():
        return "right"
    x_lat = float((lateral * x).sum() / lateral.sum())
    x_med = float((medial * x).sum() / medial.sum())
    # RAS: +x is the subject's right, so a right thigh has its lateral side at larger x
    return "right" if x_lat > x_med else "left"


def split_sides(muscle_labels: NDArray[np.integer]) -> tuple[NDArray[np.uint8], SideSplit]:
    """Give every muscle voxel a side: 11 muscle labels -> 22 output labels.

    Parameters
    ----------
    muscle_labels : ndarray of int, shape (x, y, z)
        Labels 0..11 on RAS axes.

    Returns
    -------
    labels : ndarray of uint8, shape (x, y, z)
        Output labels 0..22 (see :mod:`qmri.segmentation.labels`).
    split : SideSplit
    """
    lab = np.asarray(muscle_labels)
    mask = lab > 0
    if not mask.any():
        return np.zeros(lab.shape, dtype=np.uint8), SideSplit("empty", None)
    profile = ndimage.uniform_filter1d(mask.sum(axis=(1, 2)).astype(np.float64), size=3)
    cols = np.nonzero(profile > 0)[0]
    lo, hi = int(cols[0]), int(cols[-1])
    a, b = int(lo + 0.25 * (hi - lo)), int(lo + 0.75 * (hi - lo)) + 1
    gap = a + int(np.argmin(profile[a:b])) if b > a else lo
    left_peak = profile[lo : gap + 1].max() if gap >= lo else 0.0
    right_peak = profile[gap:].max()
    two_thighs = profile[gap] <= 0.05 * min(left_peak, right_peak) and min(
        left_peak, right_peak
    ) > 0.2 * max(left_peak, right_peak)
    if two_thighs:
        right = (np.arange(lab.shape[0]) >= gap)[:, None, None]
        return to_side_labels(lab, right), SideSplit("midline", gap)
    side = _side_of_single_thigh(lab)
    right_mask = np.full((lab.shape[0], 1, 1), side == "right")
    return to_side_labels(lab, right_mask), SideSplit(f"single_{side}", None)


def largest_components(labels: NDArray[np.integer]) -> NDArray[np.uint8]:
    """Keep only the largest 3D (26-connected) component of every output label.

    Voxels of smaller components become background. Labels 1..22 of a ``(x, y, z)`` volume.
    """
    lab = np.asarray(labels, dtype=np.uint8)
    out = np.zeros_like(lab)
    structure = np.ones((3, 3, 3), dtype=bool)
    objects = ndimage.find_objects(lab, max_label=N_OUTPUT_LABELS)
    for k, box in enumerate(objects, start=1):
        if box is None:
            continue
        sub = lab[box] == k
        comp, n = ndimage.label(sub, structure=structure)
        if n == 0:
            continue
        if n == 1:
            out[box][sub] = k
            continue
        sizes = np.bincount(comp.ravel())[1:]
        keep = comp == (int(np.argmax(sizes)) + 1)
        out[box][keep] = k
    return out
