"""Multi-peak fat spectrum for gradient-echo signal models.

The six-peak model of human adipose tissue / liver fat measured by Hamilton et al. (NMR Biomed
2011;24:784-790, "In vivo characterization of the liver fat 1H MR spectrum"), in the form
distributed with the ISMRM Fat-Water Toolbox (Hu et al., MRM 2012;68:378-388): peak offsets from
water -3.80, -3.40, -2.60, -1.94, -0.39, +0.60 ppm with relative amplitudes 0.087, 0.693, 0.128,
0.004, 0.039, 0.048. Here the peaks are stored as absolute chemical shifts (water at 4.7 ppm).

Sign convention (the toolbox's): the complex signal of fat at echo time t is
``sum_p a_p * exp(i 2 pi f_p t)`` with ``f_p = gamma * B0 * (ppm_p - ppm_water) * 1e-6`` — fat
peaks below water have negative frequency. Scanners that store the conjugate phase convention are
handled by the Dixon fitting code (``phase_convention``), not here.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "GYROMAGNETIC_RATIO_MHZ_PER_T",
    "WATER_PPM",
    "FAT_PEAKS_PPM",
    "FAT_RELATIVE_AMPLITUDES",
    "fat_peak_frequencies_hz",
    "fat_signal",
]

#: Proton gyromagnetic ratio gamma / (2 pi) in MHz/T (CODATA 2018: 42.577 478 518).
GYROMAGNETIC_RATIO_MHZ_PER_T: float = 42.577478518

#: Chemical shift of water used as the reference frequency, ppm.
WATER_PPM: float = 4.7

#: Absolute chemical shifts of the six fat peaks in ppm (methyl, methylene, alpha-carboxyl /
#: allylic, diallylic, glycerol, olefinic), i.e. water (4.7 ppm) + toolbox offsets.
FAT_PEAKS_PPM: NDArray[np.float64] = np.array([0.90, 1.30, 2.10, 2.76, 4.31, 5.30])

#: Relative amplitudes of the peaks in :data:`FAT_PEAKS_PPM`, normalised to sum to 1
#: (published values 0.087, 0.693, 0.128, 0.004, 0.039, 0.048 sum to 0.999).
FAT_RELATIVE_AMPLITUDES: NDArray[np.float64] = (
    np.array([0.087, 0.693, 0.128, 0.004, 0.039, 0.048]) / 0.999
)

FAT_PEAKS_PPM.setflags(write=False)
FAT_RELATIVE_AMPLITUDES.setflags(write=False)


def fat_peak_frequencies_hz(
    field_strength_t: float, *, center_frequency_ppm: float = WATER_PPM
) -> NDArray[np.float64]:
    """Frequency offset of each fat peak from the reference (water) frequency.

    Parameters
    ----------
    field_strength_t : float
        Main field B0 in tesla.
    center_frequency_ppm : float
        Chemical shift of the on-resonance (reference) frequency in ppm; water by default.

    Returns
    -------
    ndarray, shape (6,)
        Offsets in Hz (negative below the reference), same order as :data:`FAT_PEAKS_PPM`.
    """
    larmor_mhz = GYROMAGNETIC_RATIO_MHZ_PER_T * float(field_strength_t)
    return (FAT_PEAKS_PPM - center_frequency_ppm) * larmor_mhz


def fat_signal(
    te_ms: ArrayLike,
    field_strength_t: float,
    *,
    center_frequency_ppm: float = WATER_PPM,
) -> NDArray[np.complex128]:
    """Complex signal of unit fat proton density at the given echo times (no relaxation).

    Parameters
    ----------
    te_ms : array_like, any shape
        Echo times in milliseconds.
    field_strength_t : float
        Main field B0 in tesla.
    center_frequency_ppm : float
        Chemical shift (ppm) of the frequency taken as on-resonance; water (4.7 ppm) by default.

    Returns
    -------
    ndarray of complex128, same shape as ``te_ms``
        ``sum_p a_p exp(i 2 pi f_p TE)``; equals 1 at TE = 0 because the amplitudes sum to 1.
    """
    te_s = np.asarray(te_ms, dtype=np.float64) * 1e-3
    freqs_hz = fat_peak_frequencies_hz(field_strength_t, center_frequency_ppm=center_frequency_ppm)
    phases = 2j * np.pi * te_s[..., np.newaxis] * freqs_hz
    return np.exp(phases) @ FAT_RELATIVE_AMPLITUDES.astype(np.complex128)
