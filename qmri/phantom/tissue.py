"""Per-muscle fat fraction and water T2 for healthy, moderate and severe fat replacement.

Values follow the quantitative muscle MRI literature at 3 T: healthy thigh muscle has a
proton-density fat fraction of about 2-8 % and a water T2 of about 30-35 ms; diseased muscle in
neuromuscular disorders shows patchy fat replacement up to end-stage (FF 70-95 %, where the
muscle is hard to tell from fat), often asymmetric between sides, and a raised water T2
(oedema / inflammation, 35-50 ms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from qmri.phantom.anatomy import (
    TISSUE_CORTICAL_BONE,
    TISSUE_MARROW,
    TISSUE_SEPTUM,
    TISSUE_SKIN,
    TISSUE_SUBCUTANEOUS_FAT,
    TISSUE_VESSEL,
)
from qmri.phantom.labelmaps import N_MUSCLES
from qmri.segmentation.errors import PhantomError

__all__ = ["SEVERITIES", "Severity", "MuscleInvolvement", "draw_involvement", "tissue_maps"]

Severity = Literal["healthy", "moderate", "severe"]
SEVERITIES: tuple[Severity, ...] = ("healthy", "moderate", "severe")


@dataclass(frozen=True)
class MuscleInvolvement:
    """Mean fat fraction, patchiness and water T2 of every muscle on each side.

    Attributes
    ----------
    ff : ndarray, shape (2, 11)
        Mean fat fraction (0..1) per side (0 = right, 1 = left) and muscle (label - 1).
    patchiness : ndarray, shape (2, 11)
        Standard deviation (FF units) of the smooth spatial FF variation inside the muscle.
    t2_water_ms : ndarray, shape (2, 11)
        Water T2 in ms.
    """

    ff: NDArray[np.float64]
    patchiness: NDArray[np.float64]
    t2_water_ms: NDArray[np.float64]


def draw_involvement(severity: str, rng: np.random.Generator) -> MuscleInvolvement:
    """Draw per-muscle, per-side involvement for a subject of the given severity.

    Raises
    ------
    PhantomError
        For a severity outside :data:`SEVERITIES`.
    """
    shape = (2, N_MUSCLES)
    if severity == "healthy":
        ff = rng.uniform(0.02, 0.08, shape)
        patch = rng.uniform(0.005, 0.02, shape)
        t2 = rng.normal(32.0, 1.5, shape)
    elif severity == "moderate":
        score = rng.uniform(0.0, 1.0, N_MUSCLES) ** 1.5
        other = np.clip(score * rng.uniform(0.5, 1.3, N_MUSCLES), 0.0, 1.0)
        score2 = np.stack([score, other])[rng.permutation(2)]
        ff = 0.04 + 0.45 * score2 + rng.normal(0.0, 0.02, shape)
        patch = 0.02 + 0.12 * score2
        t2 = 32.0 + 10.0 * score2 * rng.uniform(0.0, 1.0, shape) + rng.normal(0.0, 1.5, shape)
    elif severity == "severe":
        n_end = int(rng.integers(4, 9))
        end_stage = np.zeros(shape, dtype=bool)
        first = rng.choice(N_MUSCLES, size=n_end, replace=False)
        end_stage[0, first] = True
        # the other side shares most end-stage muscles (asymmetric, not mirror-identical)
        keep = first[rng.uniform(size=n_end) < 0.75]
        extra = rng.choice(N_MUSCLES, size=int(rng.integers(0, 3)), replace=False)
        end_stage[1, np.union1d(keep, extra).astype(int)] = True
        end_stage = end_stage[rng.permutation(2)]
        ff = np.where(
            end_stage, rng.uniform(0.7, 0.95, shape), 0.05 + 0.45 * rng.uniform(0, 1, shape) ** 1.2
        )
        patch = np.where(end_stage, rng.uniform(0.03, 0.08, shape), rng.uniform(0.03, 0.15, shape))
        t2 = np.where(end_stage, rng.normal(38.0, 4.0, shape), rng.normal(36.0, 3.0, shape))
    else:
        raise PhantomError(f"unknown severity {severity!r}; expected one of {SEVERITIES}")
    return MuscleInvolvement(
        ff=np.clip(ff, 0.0, 0.97),
        patchiness=patch,
        t2_water_ms=np.clip(t2, 25.0, 60.0),
    )


def _smooth_field(
    shape: tuple[int, int, int], scale_px: float, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Zero-mean, unit-variance smooth random field varying on ``scale_px`` pixels in-plane."""
    coarse_shape = (
        max(int(shape[0] / scale_px) + 2, 2),
        max(int(shape[1] / scale_px) + 2, 2),
        max(shape[2] // 2 + 2, 2),
    )
    coarse = rng.normal(size=coarse_shape)
    zoom = [s / c for s, c in zip(shape, coarse_shape, strict=True)]
    field = ndimage.zoom(coarse, zoom, order=1, grid_mode=True, mode="nearest")
    field = field[: shape[0], : shape[1], : shape[2]]
    field = np.pad(field, [(0, s - f) for s, f in zip(shape, field.shape, strict=True)], "edge")
    std = field.std()
    return (field - field.mean()) / (std if std > 0 else 1.0)


def tissue_maps(
    tissues: NDArray[np.uint8],
    involvement: MuscleInvolvement,
    midline: int,
    pixel_mm: float,
    rng: np.random.Generator,
) -> dict[str, NDArray[np.float64]]:
    """Voxel-wise proton density, fat fraction and relaxation times.

    Parameters
    ----------
    tissues : ndarray of uint8, shape (x, y, z)
        Output of :func:`qmri.phantom.anatomy.build_tissues`.
    involvement : MuscleInvolvement
        Per-muscle, per-side disease state.
    midline : int
        Axis-0 index separating right (index >= midline, RAS) from left.
    pixel_mm : float
        In-plane pixel size (mm), sets the scale of the patchy fat pattern (~15 mm).
    rng : numpy.random.Generator
        Source of the patchy pattern.

    Returns
    -------
    dict
        ``pd`` (0..1, relative proton density), ``ff`` (0..1), ``t2_water_ms``,
        ``t2_fat_ms`` — each of shape (x, y, z), float64.
    """
    shape = tissues.shape
    pd = np.zeros(shape)
    ff = np.zeros(shape)
    t2w = np.full(shape, 30.0)
    t2f = np.full(shape, 140.0)
    patch = _smooth_field(shape, 15.0 / pixel_mm, rng)
    side = (np.arange(shape[0]) < midline).astype(np.intp)  # RAS: x >= midline is right (0)
    side_vol = np.broadcast_to(side[:, None, None], shape)
    for m in range(1, N_MUSCLES + 1):
        sel = tissues == m
        if not sel.any():
            continue
        s = side_vol[sel]
        mean_ff = involvement.ff[s, m - 1]
        sd = involvement.patchiness[s, m - 1]
        ff[sel] = np.clip(mean_ff + sd * patch[sel], 0.0, 0.98)
        t2w[sel] = involvement.t2_water_ms[s, m - 1]
        pd[sel] = 1.0
    fatty = {
        TISSUE_SEPTUM: (0.9, 0.90),
        TISSUE_SUBCUTANEOUS_FAT: (1.0, 0.95),
        TISSUE_MARROW: (0.95, 0.90),
    }
    for code, (density, fat_fraction) in fatty.items():
        sel = tissues == code
        pd[sel] = density
        ff[sel] = np.clip(fat_fraction + 0.03 * patch[sel], 0.0, 1.0)
    sel = tissues == TISSUE_SKIN
    pd[sel], ff[sel], t2w[sel] = 0.8, 0.25, 25.0
    sel = tissues == TISSUE_CORTICAL_BONE
    pd[sel], ff[sel], t2w[sel] = 0.03, 0.2, 5.0
    sel = tissues == TISSUE_VESSEL
    pd[sel], ff[sel], t2w[sel] = 0.9, 0.0, 150.0
    return {"pd": pd, "ff": ff, "t2_water_ms": t2w, "t2_fat_ms": t2f}
