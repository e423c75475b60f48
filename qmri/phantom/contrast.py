"""Image contrasts from tissue maps with :mod:`qmri`'s own signal models.

* Dixon: water and fat images (proton density weighted) and the PDFF map;
* MESE first echo: CPMG echo amplitude from :func:`qmri.epg.cpmg_echo_train` (with B1);
* GRE magnitude at one echo time: water + fat with the six-peak spectrum of
  :func:`qmri.fat_spectrum.fat_signal` (in/opposed phase behaviour of the real Dixon inputs).

Then a smooth multiplicative receive bias field and Rician noise.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import interpolate

from qmri.epg import cpmg_echo_train
from qmri.fat_spectrum import fat_signal
from qmri.segmentation.errors import PhantomError

__all__ = [
    "CONTRASTS",
    "Contrast",
    "first_echo_lut",
    "mese_first_echo",
    "gre_magnitude",
    "bias_field",
    "add_rician_noise",
]

Contrast = Literal["water", "fat", "ff", "mese", "gre"]
CONTRASTS: tuple[Contrast, ...] = ("water", "fat", "ff", "mese", "gre")

_T2_GRID_MS = np.geomspace(3.0, 400.0, 40)
_B1_GRID = np.linspace(0.4, 1.4, 11)


@lru_cache(maxsize=8)
def first_echo_lut(echo_spacing_ms: float) -> interpolate.RegularGridInterpolator:
    """Interpolator (log T2 [ms], B1) -> first CPMG echo amplitude from the EPG model."""
    table = np.array(
        [
            [
                cpmg_echo_train(float(t2), float(b1), echo_spacing_ms=echo_spacing_ms, n_echoes=1)[
                    0
                ]
                for b1 in _B1_GRID
            ]
            for t2 in _T2_GRID_MS
        ]
    )
    return interpolate.RegularGridInterpolator(
        (np.log(_T2_GRID_MS), _B1_GRID), table, bounds_error=False, fill_value=None
    )


def mese_first_echo(
    maps: dict[str, NDArray[np.float64]],
    b1: NDArray[np.float64],
    *,
    echo_spacing_ms: float,
    repetition_time_ms: float = 3000.0,
) -> NDArray[np.float64]:
    """First-echo magnitude of a multi-echo spin echo (water and fat T2 decays, T1 saturation).

    Parameters
    ----------
    maps : dict
        ``pd``, ``ff``, ``t2_water_ms``, ``t2_fat_ms`` arrays of one shape (see
        :func:`qmri.phantom.tissue.tissue_maps`).
    b1 : ndarray, same shape
        Relative transmit field (1 = nominal flip angles).
    echo_spacing_ms : float
        Echo spacing (= first echo time) in ms.
    repetition_time_ms : float
        TR in ms; water T1 1400 ms and fat T1 365 ms at 3 T set the saturation.
    """
    lut = first_echo_lut(float(echo_spacing_ms))
    b1c = np.clip(b1, _B1_GRID[0], _B1_GRID[-1])
    t2w = np.log(np.clip(maps["t2_water_ms"], _T2_GRID_MS[0], _T2_GRID_MS[-1]))
    t2f = np.log(np.clip(maps["t2_fat_ms"], _T2_GRID_MS[0], _T2_GRID_MS[-1]))
    ew = lut(np.stack([t2w.ravel(), b1c.ravel()], axis=-1)).reshape(b1.shape)
    ef = lut(np.stack([t2f.ravel(), b1c.ravel()], axis=-1)).reshape(b1.shape)
    sat_w = 1.0 - np.exp(-repetition_time_ms / 1400.0)
    sat_f = 1.0 - np.exp(-repetition_time_ms / 365.0)
    water = maps["pd"] * (1.0 - maps["ff"])
    fat = maps["pd"] * maps["ff"]
    return np.asarray(water * ew * sat_w + fat * ef * sat_f)


def gre_magnitude(
    maps: dict[str, NDArray[np.float64]],
    *,
    te_ms: float,
    field_strength_t: float,
    t2star_water_ms: float = 28.0,
    t2star_fat_ms: float = 20.0,
) -> NDArray[np.float64]:
    """Gradient-echo magnitude ``|W e^{-TE/T2*w} + F c(TE) e^{-TE/T2*f}|`` (no B0 offset)."""
    fat_phase = complex(fat_signal(np.asarray(te_ms), field_strength_t))
    water = maps["pd"] * (1.0 - maps["ff"]) * np.exp(-te_ms / t2star_water_ms)
    fat = maps["pd"] * maps["ff"] * np.exp(-te_ms / t2star_fat_ms)
    return np.abs(water + fat * fat_phase)


def bias_field(
    shape: tuple[int, ...], strength: float, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Smooth positive multiplicative field ``exp(strength * g)``.

    ``g`` is a random combination of low-order cosines along the in-plane axes (frequencies
    0..2 half-periods across the field of view) with a mild linear drift along axis 2,
    scaled to a peak magnitude of 1. ``strength`` around 0.2 gives roughly +-20 % intensity
    variation. Shape ``(x, y, z)``.
    """
    nx, ny, nz = shape[0], shape[1], shape[2]
    u = np.linspace(0.0, 1.0, nx)
    v = np.linspace(0.0, 1.0, ny)
    coeffs = rng.normal(size=(3, 3))
    coeffs[0, 0] = 0.0
    basis_u = np.stack([np.cos(np.pi * k * u) for k in range(3)])
    basis_v = np.stack([np.cos(np.pi * k * v) for k in range(3)])
    plane = basis_u.T @ coeffs @ basis_v
    drift = 1.0 + rng.uniform(-0.3, 0.3) * np.linspace(-1.0, 1.0, nz)
    g = plane[:, :, None] * drift[None, None, :]
    g = g / max(float(np.abs(g).max()), 1e-6)
    return np.asarray(np.exp(strength * g))


def add_rician_noise(
    image: NDArray[np.float64], sigma: float, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Magnitude of the image plus complex Gaussian noise of standard deviation ``sigma``."""
    if sigma < 0:
        raise PhantomError(f"noise sigma must be >= 0, got {sigma}")
    real = image + rng.normal(0.0, sigma, image.shape)
    imag = rng.normal(0.0, sigma, image.shape)
    return np.asarray(np.hypot(real, imag))
