"""Six-peak fat spectrum."""

from __future__ import annotations

import numpy as np
import pytest

from qmri.fat_spectrum import (
    FAT_PEAKS_PPM,
    FAT_RELATIVE_AMPLITUDES,
    GYROMAGNETIC_RATIO_MHZ_PER_T,
    fat_peak_frequencies_hz,
    fat_signal,
)


def test_published_values() -> None:
    assert FAT_PEAKS_PPM.shape == FAT_RELATIVE_AMPLITUDES.shape == (6,)
    np.testing.assert_allclose(
        FAT_PEAKS_PPM - 4.7, [-3.80, -3.40, -2.60, -1.94, -0.39, 0.60], atol=1e-12
    )
    assert FAT_RELATIVE_AMPLITUDES.sum() == pytest.approx(1.0)
    assert np.argmax(FAT_RELATIVE_AMPLITUDES) == 1  # methylene dominates (~69 %)


def test_unit_at_te0_and_shape() -> None:
    te = np.array([[0.0, 1.0], [2.0, 3.0]])
    sig = fat_signal(te, 3.0)
    assert sig.shape == (2, 2)
    assert sig.dtype == np.complex128
    assert sig[0, 0] == pytest.approx(1.0 + 0j)
    assert np.all(np.abs(sig) <= 1.0 + 1e-12)


def test_matches_explicit_sum() -> None:
    te_ms = np.linspace(0, 10, 7)
    b0_t = 1.5
    larmor = GYROMAGNETIC_RATIO_MHZ_PER_T * b0_t
    want = sum(
        a * np.exp(2j * np.pi * (p - 4.7) * larmor * te_ms * 1e-3)
        for a, p in zip(FAT_RELATIVE_AMPLITUDES, FAT_PEAKS_PPM, strict=True)
    )
    np.testing.assert_allclose(fat_signal(te_ms, b0_t), want, rtol=1e-12)


def test_main_peak_frequency_and_opposed_phase_at_3t() -> None:
    freqs = fat_peak_frequencies_hz(3.0)
    assert freqs[1] == pytest.approx(-434.3, abs=0.5)  # -3.4 ppm at 127.7 MHz
    # Around 1.15 ms at 3 T the main peak is opposed to water: the fat signal has negative real part.
    assert fat_signal(1.15, 3.0).real < -0.5
    # Around 2.3 ms it is nearly back in phase, but the other peaks keep |S| < 1.
    s = fat_signal(2.3, 3.0)
    assert s.real > 0.5
    assert abs(s) < 0.98
