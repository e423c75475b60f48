"""Intensity normalisation and in-plane resampling shared by training and inference."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = ["normalize_intensity", "resample_inplane", "pad_to_multiple"]


def normalize_intensity(volume: NDArray[np.floating]) -> NDArray[np.float32]:
    """Scale a volume so that its 99.5th intensity percentile is 1, then clip to [0, 2].

    Parameters
    ----------
    volume : ndarray, shape (x, y, z) or (x, y)
        Any non-negative image (magnitude, water, fat, FF map); NaNs become 0.

    Returns
    -------
    ndarray of float32, same shape
    """
    v = np.nan_to_num(np.asarray(volume, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    v = np.maximum(v, 0.0)
    scale = float(np.percentile(v, 99.5)) if v.size else 0.0
    if scale <= 0:
        scale = float(v.max()) if v.size and v.max() > 0 else 1.0
    return np.clip(v / scale, 0.0, 2.0).astype(np.float32)


def resample_inplane(
    volume: NDArray[np.floating],
    spacing_mm: tuple[float, float],
    target_mm: float,
    *,
    order: int = 1,
) -> NDArray[np.float32]:
    """Resample axes 0 and 1 of ``(x, y, z)`` (or ``(x, y)``) to ``target_mm`` pixels.

    Linear interpolation (``order=1``) with anti-aliasing blur when down-sampling by more than
    1.5x. Axis 2 is left untouched.
    """
    v = np.asarray(volume, dtype=np.float32)
    factors = [spacing_mm[0] / target_mm, spacing_mm[1] / target_mm]
    sigma = [max((1.0 / f - 1.0) / 2.0, 0.0) if f < 1 / 1.5 else 0.0 for f in factors]
    if any(s > 0 for s in sigma):
        v = ndimage.gaussian_filter(v, sigma=sigma + [0.0] * (v.ndim - 2))
    out_shape = [max(int(round(n * f)), 1) for n, f in zip(v.shape[:2], factors, strict=True)]
    zoom = [o / n for o, n in zip(out_shape, v.shape[:2], strict=True)] + [1.0] * (v.ndim - 2)
    return np.asarray(ndimage.zoom(v, zoom, order=order, grid_mode=True, mode="nearest"))


def pad_to_multiple(
    image: NDArray[np.float32], multiple: int
) -> tuple[NDArray[np.float32], tuple[slice, slice]]:
    """Zero-pad axes 0 and 1 up to a multiple; return the padded array and the crop back."""
    pads = [(-n) % multiple for n in image.shape[:2]]
    before = [p // 2 for p in pads]
    widths = [(b, p - b) for b, p in zip(before, pads, strict=True)] + [(0, 0)] * (image.ndim - 2)
    padded = np.pad(image, widths)
    crop = (
        slice(before[0], before[0] + image.shape[0]),
        slice(before[1], before[1] + image.shape[1]),
    )
    return padded, crop
