"""Synthetic canonical volumes (z inferior→superior, y posterior→anterior, x right→left)."""

from __future__ import annotations

import numpy as np

SPACING_MM = (10.0, 4.0, 4.0)


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dz, dy, dx = SPACING_MM
    z, y, x = np.meshgrid(
        np.arange(shape[0]) * dz, np.arange(shape[1]) * dy, np.arange(shape[2]) * dx, indexing="ij"
    )
    return z, y, x


def whole_body(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Whole-body phantom with a face-like anterior surface (nose, brow, chin).

    Returns the volume (uint16) and a boolean mask of the face features.
    """
    shape = (190, 70, 150)
    z, y, x = _grid(shape)
    yc, xc = 140.0, 300.0
    body = np.zeros(shape, dtype=bool)
    for side in (-1, 1):  # legs
        body |= (z < 800) & ((x - xc - side * 100) ** 2 + (y - yc) ** 2 < 70**2)
    body |= (z >= 800) & (z < 1500) & (((x - xc) / 170) ** 2 + ((y - yc) / 110) ** 2 < 1)
    body |= (z >= 1500) & (z < 1630) & ((x - xc) ** 2 + (y - yc) ** 2 < 45**2)
    head_c = (1720.0, yc, xc)
    head = ((z - head_c[0]) / 110) ** 2 + ((y - head_c[1]) / 95) ** 2 + ((x - xc) / 75) ** 2 < 1
    body |= head
    front = head_c[1] + 95
    nose = (abs(z - 1690) <= 25) & (y >= front - 8) & (y < front + 24) & (abs(x - xc) <= 12)
    chin = (abs(z - 1640) <= 15) & (y >= yc) & (y < front + 8) & (abs(x - xc) <= 30)
    features = (nose | chin) & ~head
    body |= features
    rng = np.random.default_rng(seed)
    vol = np.where(body, 800.0, 0.0) + rng.normal(0, 15, shape)
    vol = np.clip(vol, 0, None).astype(np.uint16)
    return vol, features


def thighs(seed: int = 0) -> np.ndarray:
    """Both thighs cut by the field of view at both ends (limb-only series)."""
    shape = (40, 70, 150)
    z, y, x = _grid(shape)
    body = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        body |= (x - 300 - side * 100) ** 2 + (y - 140) ** 2 < 80**2
    rng = np.random.default_rng(seed)
    vol = np.where(body, 700.0, 0.0) + rng.normal(0, 15, shape)
    return np.clip(vol, 0, None).astype(np.uint16)


def single_calf_with_foot(seed: int = 0) -> np.ndarray:
    """One lower leg ending in a foot (closes at the inferior end only)."""
    shape = (50, 70, 150)
    z, y, x = _grid(shape)
    leg = (z >= 60) & ((x - 300) ** 2 + (y - 140) ** 2 < 55**2)
    foot = (z < 60) & (z >= 10) & (abs(x - 300) < 45) & (y > 100) & (y < 260)
    rng = np.random.default_rng(seed)
    vol = np.where(leg | foot, 700.0, 0.0) + rng.normal(0, 15, shape)
    return np.clip(vol, 0, None).astype(np.uint16)
