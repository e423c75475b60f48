"""EPG CPMG echo trains: closed forms, published behaviour and a naive reference."""

from __future__ import annotations

import numpy as np
import pytest

from qmri.epg import cpmg_echo_train, sinc_slice_profile
from qmri.errors import ModelParameterError


def _rf_matrix(alpha: float, phi: float) -> np.ndarray:
    """Weigel 2015 eq. 15, written out independently of the module under test."""
    c2 = np.cos(alpha / 2) ** 2
    s2 = np.sin(alpha / 2) ** 2
    sa = np.sin(alpha)
    return np.array(
        [
            [c2, np.exp(2j * phi) * s2, -1j * np.exp(1j * phi) * sa],
            [np.exp(-2j * phi) * s2, c2, 1j * np.exp(-1j * phi) * sa],
            [-0.5j * np.exp(-1j * phi) * sa, 0.5j * np.exp(1j * phi) * sa, np.cos(alpha)],
        ]
    )


def _naive_cpmg(
    t2_ms: float,
    t1_ms: float,
    b1: float,
    esp_ms: float,
    n_echoes: int,
    exc_deg: float,
    ref_deg: float,
) -> np.ndarray:
    """Per-voxel loop over a full signed order axis F(k), k in [-K, K], and Z(k), k >= 0."""
    kmax = 2 * n_echoes + 2
    f = np.zeros(2 * kmax + 1, dtype=complex)  # index kmax + k
    zz = np.zeros(kmax + 1, dtype=complex)
    zz[0] = 1.0

    def rf(alpha: float, phi: float) -> None:
        t = _rf_matrix(alpha, phi)
        for k in range(kmax + 1):
            v = np.array([f[kmax + k], np.conj(f[kmax - k]), zz[k]])
            w = t @ v
            f[kmax + k] = w[0]
            if k > 0:
                f[kmax - k] = np.conj(w[1])
            zz[k] = w[2]

    def relax(dt: float) -> None:
        f[:] *= np.exp(-dt / t2_ms)
        zz[:] *= np.exp(-dt / t1_ms)
        zz[0] += 1 - np.exp(-dt / t1_ms)

    def shift() -> None:
        f[1:] = f[:-1].copy()
        f[0] = 0

    rf(np.deg2rad(exc_deg) * b1, 0.0)
    out = []
    for _ in range(n_echoes):
        relax(esp_ms / 2)
        shift()
        rf(np.deg2rad(ref_deg) * b1, np.pi / 2)
        relax(esp_ms / 2)
        shift()
        out.append(abs(f[kmax]))
    return np.array(out)


def test_perfect_refocusing_is_mono_exponential() -> None:
    t2 = np.array([[20.0, 35.0], [50.0, 200.0]])
    te = 10.0 * np.arange(1, 18)
    sig = cpmg_echo_train(t2, 1.0, echo_spacing_ms=10.0, n_echoes=17)
    assert sig.shape == (2, 2, 17)
    np.testing.assert_allclose(sig, np.exp(-te / t2[..., None]), rtol=1e-12, atol=1e-14)


def test_first_echo_closed_form_and_even_echo_overshoot() -> None:
    b1 = np.array([0.6, 0.8, 0.9])
    sig = cpmg_echo_train(40.0, b1, echo_spacing_ms=10.0, n_echoes=4)
    beta = np.deg2rad(90.0) * b1
    alpha = np.deg2rad(180.0) * b1
    expected_first = np.sin(beta) * np.sin(alpha / 2) ** 2 * np.exp(-10.0 / 40.0)
    np.testing.assert_allclose(sig[:, 0], expected_first, rtol=1e-12)
    # Published CPMG behaviour (Hennig 1988; Lebel & Wilman 2010): with imperfect refocusing the
    # stimulated echo makes echo 2 larger than echo 1 relative to exp(-TE/T2).
    ratio = sig[:, 1] / sig[:, 0]
    assert np.all(ratio > np.exp(-10.0 / 40.0))


@pytest.mark.parametrize(
    ("t2", "t1", "b1", "exc", "ref"),
    [
        (30.0, 1400.0, 0.75, 90.0, 180.0),
        (45.0, 300.0, 1.1, 90.0, 160.0),
        (150.0, 1000.0, 0.5, 70.0, 120.0),
    ],
)
def test_matches_naive_reference(t2: float, t1: float, b1: float, exc: float, ref: float) -> None:
    got = cpmg_echo_train(
        t2,
        b1,
        t1_ms=t1,
        echo_spacing_ms=9.0,
        n_echoes=12,
        excitation_angle_deg=exc,
        refocusing_angle_deg=ref,
    )
    want = _naive_cpmg(t2, t1, b1, 9.0, 12, exc, ref)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


def test_broadcasting_matches_elementwise() -> None:
    rng = np.random.default_rng(5)
    t2 = rng.uniform(20, 60, size=(3, 1))
    b1 = rng.uniform(0.6, 1.2, size=(1, 4))
    sig = cpmg_echo_train(t2, b1, echo_spacing_ms=10.0, n_echoes=8)
    assert sig.shape == (3, 4, 8)
    for i in range(3):
        for j in range(4):
            np.testing.assert_allclose(
                sig[i, j], _naive_cpmg(t2[i, 0], 1400.0, b1[0, j], 10.0, 8, 90.0, 180.0), rtol=1e-10
            )


def test_slice_profile_is_mean_over_positions() -> None:
    prof = np.array([[1.0, 0.8, 0.3], [1.0, 0.9, 0.5]])
    sig = cpmg_echo_train(35.0, 0.95, echo_spacing_ms=10.0, n_echoes=6, slice_profile=prof)
    per_pos = [
        _naive_cpmg(35.0, 1400.0, 1.0, 10.0, 6, 90.0 * 0.95 * e, 180.0 * 0.95 * r)
        for e, r in prof.T
    ]
    np.testing.assert_allclose(sig, np.mean(per_pos, axis=0), rtol=1e-10)
    # A uniform unit profile is the same as no profile.
    np.testing.assert_allclose(
        cpmg_echo_train(35.0, 0.9, echo_spacing_ms=10.0, n_echoes=6, slice_profile=np.ones(4)),
        cpmg_echo_train(35.0, 0.9, echo_spacing_ms=10.0, n_echoes=6),
        rtol=1e-12,
    )


def test_sinc_profile_shape_and_centre() -> None:
    prof = sinc_slice_profile(16, refocusing_width_ratio=1.5)
    assert prof.shape == (2, 16)
    assert prof[0, 0] == pytest.approx(1.0, abs=0.01)
    assert np.all(np.diff(prof[0, :12]) < 0)  # main lobe decays away from the centre
    # Positions are in half-widths over [0, 2]: the nominal slice edge (x = 1) is at half maximum.
    x = (np.arange(16) + 0.5) / 16 * 2.0
    assert np.interp(1.0, x, prof[0]) == pytest.approx(0.5, abs=0.06)
    assert prof[0, -1] < 0.05
    assert np.all(prof[1] >= prof[0] - 1e-9)  # wider refocusing profile


def test_invalid_parameters_raise() -> None:
    with pytest.raises(ModelParameterError):
        cpmg_echo_train(-1.0, 1.0, echo_spacing_ms=10.0, n_echoes=3)
    with pytest.raises(ModelParameterError):
        cpmg_echo_train(30.0, 1.0, echo_spacing_ms=10.0, n_echoes=0)
    with pytest.raises(ModelParameterError):
        cpmg_echo_train(30.0, 1.0, echo_spacing_ms=10.0, n_echoes=3, slice_profile=np.ones((3, 2)))
