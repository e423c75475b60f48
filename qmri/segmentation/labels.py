"""Output label numbering: 11 thigh muscles x 2 sides = 22 labels.

``label = muscle`` for the subject's **right** thigh (1..11) and ``label = muscle + 11`` for the
**left** thigh (12..22), muscles in the order of :data:`MUSCLE_NAMES`
(1 biceps femoris long head ... 11 sartorius). 0 is background. Sides are anatomical (the
subject's right and left), decided on the RAS-reoriented image, so the numbering does not
depend on how the scanner stored the volume.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from qmri.muscles import THIGH_MUSCLES

__all__ = [
    "MUSCLE_NAMES",
    "N_MUSCLES",
    "SIDES",
    "LEFT_OFFSET",
    "N_OUTPUT_LABELS",
    "output_label",
    "muscle_and_side",
    "label_names",
    "to_side_labels",
]

#: The 11 thigh muscles in the issue's order (muscle index = position + 1).
MUSCLE_NAMES: tuple[str, ...] = THIGH_MUSCLES
N_MUSCLES: int = len(MUSCLE_NAMES)
SIDES: tuple[str, str] = ("right", "left")
LEFT_OFFSET: int = N_MUSCLES
N_OUTPUT_LABELS: int = 2 * N_MUSCLES


def output_label(muscle: int, side: str) -> int:
    """Output label of ``muscle`` (1..11) on ``side`` ("right" or "left")."""
    if not 1 <= muscle <= N_MUSCLES:
        raise ValueError(f"muscle must be 1..{N_MUSCLES}, got {muscle}")
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    return muscle + (LEFT_OFFSET if side == "left" else 0)


def muscle_and_side(label: int) -> tuple[int, str]:
    """Inverse of :func:`output_label`."""
    if not 1 <= label <= N_OUTPUT_LABELS:
        raise ValueError(f"output label must be 1..{N_OUTPUT_LABELS}, got {label}")
    if label > LEFT_OFFSET:
        return label - LEFT_OFFSET, "left"
    return label, "right"


def label_names() -> dict[int, str]:
    """``{label: "<side>_<muscle>"}`` for labels 1..22 (the sidecar's ``Labels`` table)."""
    return {
        output_label(m, side): f"{side}_{MUSCLE_NAMES[m - 1]}"
        for side in SIDES
        for m in range(1, N_MUSCLES + 1)
    }


def to_side_labels(
    muscle_labels: NDArray[np.integer], right_mask: NDArray[np.bool_]
) -> NDArray[np.uint8]:
    """Combine muscle labels (0..11) with a right-side mask into output labels (0..22).

    Parameters
    ----------
    muscle_labels : ndarray of int, shape (x, y, z)
    right_mask : ndarray of bool, shape (x, y, z) or broadcastable
        True where a voxel belongs to the subject's right thigh.
    """
    lab = np.asarray(muscle_labels).astype(np.uint8)
    out = np.where(right_mask, lab, lab + LEFT_OFFSET).astype(np.uint8)
    out[lab == 0] = 0
    return out
