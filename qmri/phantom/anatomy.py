"""Body tissues around the muscles: intermuscular septa, femur, vessels, subcutaneous fat, skin.

The real label maps contain only the 11 muscles. This module turns a muscle label volume on a
fine in-plane grid into a *tissue* volume: every muscle keeps its label (1..11) and the space
around and between the muscles receives the tissues a thigh has there. All operations act
slice by slice (axial in-plane), so volumes with thick slices behave like stacks of 2D slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from qmri.phantom.labelmaps import N_MUSCLES

__all__ = [
    "TISSUE_AIR",
    "TISSUE_SEPTUM",
    "TISSUE_SUBCUTANEOUS_FAT",
    "TISSUE_SKIN",
    "TISSUE_CORTICAL_BONE",
    "TISSUE_MARROW",
    "TISSUE_VESSEL",
    "TISSUE_NAMES",
    "AnatomyParameters",
    "midline_index",
    "build_tissues",
]

TISSUE_AIR = 0
# 1..11 are the muscles
TISSUE_SEPTUM = 12  #: intermuscular fat and fascia
TISSUE_SUBCUTANEOUS_FAT = 13
TISSUE_SKIN = 14
TISSUE_CORTICAL_BONE = 15
TISSUE_MARROW = 16
TISSUE_VESSEL = 17

TISSUE_NAMES: dict[int, str] = {
    TISSUE_AIR: "air",
    TISSUE_SEPTUM: "intermuscular_fat",
    TISSUE_SUBCUTANEOUS_FAT: "subcutaneous_fat",
    TISSUE_SKIN: "skin",
    TISSUE_CORTICAL_BONE: "cortical_bone",
    TISSUE_MARROW: "marrow",
    TISSUE_VESSEL: "vessel",
}

_INPLANE_CROSS = np.zeros((3, 3, 3), dtype=bool)
_INPLANE_CROSS[1, :, 1] = True
_INPLANE_CROSS[:, 1, 1] = True


@dataclass(frozen=True)
class AnatomyParameters:
    """Subject-level anatomy drawn once per synthetic subject (all lengths in mm)."""

    subcutaneous_fat_mm: float = 12.0
    fat_asymmetry: float = 0.1  #: relative difference of fat thickness between sides
    skin_mm: float = 1.5
    closing_radius_mm: float = 6.0
    femur_radius_mm: float = 13.0
    cortex_mm: float = 5.0
    vessel_radius_mm: float = 3.5

    @classmethod
    def draw(cls, rng: np.random.Generator) -> AnatomyParameters:
        """Random but plausible adult anatomy."""
        return cls(
            subcutaneous_fat_mm=float(rng.uniform(4.0, 28.0)),
            fat_asymmetry=float(rng.uniform(-0.15, 0.15)),
            skin_mm=float(rng.uniform(1.0, 2.5)),
            closing_radius_mm=float(rng.uniform(4.0, 8.0)),
            femur_radius_mm=float(rng.uniform(11.0, 15.0)),
            cortex_mm=float(rng.uniform(3.5, 6.5)),
            vessel_radius_mm=float(rng.uniform(2.5, 4.5)),
        )


def _disk(radius_px: float) -> NDArray[np.bool_]:
    r = max(int(np.ceil(radius_px)), 1)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx**2 + yy**2) <= radius_px**2 + 1e-9


def _inplane_structure(radius_px: float) -> NDArray[np.bool_]:
    disk = _disk(radius_px)
    return disk[:, :, np.newaxis]


def _inplane_edt(mask: NDArray[np.bool_], pixel_mm: float) -> NDArray[np.float64]:
    """Distance (mm) from each True voxel to the nearest False voxel of the same slice."""
    if mask.all():
        return np.full(mask.shape, np.inf)
    sampling = (pixel_mm, pixel_mm, 1e6)
    return np.asarray(ndimage.distance_transform_edt(mask, sampling=sampling))


def midline_index(muscle_mask: NDArray[np.bool_]) -> int:
    """Index along axis 0 of the gap between the two thighs.

    Parameters
    ----------
    muscle_mask : ndarray of bool, shape (x, y, z)
        Union of all muscles.

    Returns
    -------
    int
        The column (axis 0) with the fewest muscle voxels in the central 40 % of the muscle
        extent; the image centre when the mask is empty.
    """
    profile = muscle_mask.sum(axis=(1, 2)).astype(np.float64)
    columns = np.nonzero(profile)[0]
    if columns.size == 0:
        return muscle_mask.shape[0] // 2
    lo, hi = columns[0], columns[-1]
    a = int(lo + 0.3 * (hi - lo))
    b = int(lo + 0.7 * (hi - lo)) + 1
    window = ndimage.uniform_filter1d(profile, size=5)[a:b]
    return int(a + np.argmin(window))


def _septa(labels: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Muscle voxels whose in-plane 4-neighbour belongs to a different (higher) muscle."""
    out = np.zeros(labels.shape, dtype=bool)
    for axis in (0, 1):
        for shift in (1, -1):
            neighbour = np.roll(labels, shift, axis=axis)
            out |= (labels > 0) & (neighbour > labels)
    return out


def build_tissues(
    muscle_labels: NDArray[np.uint8],
    pixel_mm: float,
    params: AnatomyParameters,
    rng: np.random.Generator,
) -> NDArray[np.uint8]:
    """Turn a muscle label volume into a full tissue volume.

    Parameters
    ----------
    muscle_labels : ndarray of uint8, shape (x, y, z)
        Muscle labels 0..11 on an isotropic in-plane grid (axis 0 = R, axis 1 = A).
    pixel_mm : float
        In-plane pixel size in mm (the same along axes 0 and 1).
    params : AnatomyParameters
        Subject anatomy.
    rng : numpy.random.Generator
        Source of the small random variations (vessel placement jitter).

    Returns
    -------
    ndarray of uint8, shape (x, y, z)
        Tissue codes: 0 air, 1..11 muscles, and the ``TISSUE_*`` constants of this module.
        Muscle voxels are never overwritten except by the 1-voxel septa between muscles.
    """
    labels = np.asarray(muscle_labels, dtype=np.uint8)
    if labels.ndim != 3:
        raise ValueError(f"expected (x, y, z) labels, got shape {labels.shape}")
    muscle = labels > 0
    tissues = labels.copy()
    tissues[_septa(labels)] = TISSUE_SEPTUM
    nx = labels.shape[0]

    closing = _inplane_structure(params.closing_radius_mm / pixel_mm)
    core = ndimage.binary_closing(muscle, structure=closing, border_value=0)
    core = ndimage.binary_fill_holes(core | muscle, structure=_INPLANE_CROSS)
    holes = core & ~muscle

    # femur: centred at the deepest point of the non-muscle space inside each thigh
    mid = midline_index(muscle)
    hole_depth = _inplane_edt(holes, pixel_mm)
    xx, yy = np.mgrid[0 : labels.shape[0], 0 : labels.shape[1]]
    femur_outer = np.zeros(labels.shape, dtype=bool)
    femur_marrow = np.zeros(labels.shape, dtype=bool)
    vessel = np.zeros(labels.shape, dtype=bool)
    sides = ((0, mid), (mid, nx))
    for z in range(labels.shape[2]):
        for lo, hi in sides:
            depth = hole_depth[lo:hi, :, z]
            if depth.size == 0 or depth.max() < 4.0:
                continue
            ix, iy = np.unravel_index(int(np.argmax(depth)), depth.shape)
            cx, cy = lo + ix, iy
            radius_mm = min(params.femur_radius_mm, float(depth.max()) + 3.0)
            r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) * pixel_mm**2
            femur_outer[:, :, z] |= r2 <= radius_mm**2
            inner = max(radius_mm - params.cortex_mm, 2.0)
            femur_marrow[:, :, z] |= r2 <= inner**2
            # femoral vessels: deepest remaining gap nearest to sartorius (anteromedial)
            sartorius = labels[lo:hi, :, z] == N_MUSCLES
            free = holes[lo:hi, :, z] & (r2[lo:hi] > (radius_mm + 4.0) ** 2)
            if sartorius.any() and free.any():
                sx, sy = np.argwhere(sartorius).mean(axis=0)
                fx, fy = np.nonzero(free)
                k = int(np.argmin((fx - sx) ** 2 + (fy - sy) ** 2))
                vx = lo + fx[k] + rng.normal(0.0, 0.5)
                vy = fy[k] + rng.normal(0.0, 0.5)
                vessel[:, :, z] |= ((xx - vx) ** 2 + (yy - vy) ** 2) * pixel_mm**2 <= (
                    params.vessel_radius_mm**2
                )

    inside = holes.copy()
    tissues[inside] = TISSUE_SEPTUM
    femur_outer &= ~muscle
    femur_marrow &= femur_outer
    tissues[femur_outer] = TISSUE_CORTICAL_BONE
    tissues[femur_marrow] = TISSUE_MARROW
    vessel &= holes & ~femur_outer
    tissues[vessel] = TISSUE_VESSEL

    # subcutaneous fat and skin grow outward from the muscle core
    outside_depth = _inplane_edt(~core, pixel_mm)
    side_scale = np.where(
        np.arange(nx)[:, None, None] < mid, 1.0 + params.fat_asymmetry, 1.0 - params.fat_asymmetry
    )
    fat_mm = params.subcutaneous_fat_mm * side_scale
    subcut = (~core) & (outside_depth <= fat_mm)
    skin = (~core) & (outside_depth > fat_mm) & (outside_depth <= fat_mm + params.skin_mm)
    tissues[subcut] = TISSUE_SUBCUTANEOUS_FAT
    tissues[skin] = TISSUE_SKIN
    return tissues
