"""Water-T2 fitting: accuracy on EPG-simulated MESE (issue 5), reference checks, errors."""

from __future__ import annotations

import numpy as np
import pytest

from qmri.epg import cpmg_echo_train
from qmri.errors import InputDataError, ShapeMismatchError, TooFewEchoesError
from qmri.t2_fit import (
    WaterT2Model,
    _dictionary,
    _nnls2,
    calibrate_fat_t2_ms,
    echo_spacing_from_times,
    fit_mono_t2,
    fit_water_t2,
)

ESP_MS = 10.0
N_ECHOES = 17
TE_MS = ESP_MS * np.arange(1, N_ECHOES + 1)
SNR = 80.0  # proton density / noise standard deviation of each complex channel (Rician)


def _simulate(
    t2: np.ndarray, ff: np.ndarray, b1: np.ndarray, rng: np.random.Generator, model: WaterT2Model
) -> tuple[np.ndarray, np.ndarray]:
    kw = {"echo_spacing_ms": ESP_MS, "n_echoes": N_ECHOES}
    water = cpmg_echo_train(t2, b1, t1_ms=model.t1_water_ms, **kw)
    fat = cpmg_echo_train(model.fat_t2_ms, b1, t1_ms=model.t1_fat_ms, **kw)
    clean = (1 - ff)[..., None] * water + ff[..., None] * fat
    noise = (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape)) / SNR
    return clean, np.abs(clean + noise)


def test_accuracy_issue5_voxelwise() -> None:
    """17 echoes, 10 ms, water T2 25-50 ms, FF 0-90 %, B1 0.7-1.1, SNR 80 (Rician)."""
    rng = np.random.default_rng(2026)
    n = 3000
    t2 = rng.uniform(25, 50, n)
    ff = rng.uniform(0, 0.9, n)
    b1 = rng.uniform(0.7, 1.1, n)
    model = WaterT2Model()
    _, noisy = _simulate(t2, ff, b1, rng, model)
    res = fit_water_t2(noisy * 1234.0, TE_MS, model=model)
    sel = ff < 0.6
    t2_err = np.abs(res.water_t2_ms - t2)
    ff_err = np.abs(res.ff_percent - 100 * ff)
    assert np.median(t2_err[sel]) <= 2.0
    assert np.median(ff_err) <= 2.5
    assert np.median(np.abs(res.b1 - b1)) <= 0.05
    assert np.all(res.mask)
    assert np.all((res.ff_percent >= 0) & (res.ff_percent <= 100))
    assert np.median(res.relative_residual) < 0.05


def test_accuracy_smooth_b1_with_regularisation() -> None:
    """A 2-D phantom with a smooth B1 field: regularised B1 improves water-T2 precision."""
    rng = np.random.default_rng(7)
    ny, nx = 48, 48
    yy, xx = np.mgrid[0:ny, 0:nx] / 47.0
    b1 = 0.7 + 0.4 * (0.5 * xx + 0.5 * yy**2)  # spans 0.7-1.1 smoothly
    t2 = rng.uniform(25, 50, (ny, nx))
    ff = rng.uniform(0, 0.9, (ny, nx))
    model = WaterT2Model()
    _, noisy = _simulate(t2, ff, b1, rng, model)
    free = fit_water_t2(noisy, TE_MS, model=model)
    reg = fit_water_t2(noisy, TE_MS, model=model, b1_smoothing_sigma_vox=3.0)
    sel = ff < 0.6
    err_free = np.median(np.abs(free.water_t2_ms - t2)[sel])
    err_reg = np.median(np.abs(reg.water_t2_ms - t2)[sel])
    assert err_reg <= 2.0
    assert err_reg < err_free
    assert np.median(np.abs(reg.b1 - b1)) < 0.02
    assert np.median(np.abs(reg.ff_percent - 100 * ff)) <= 2.5


def test_b1_estimated_on_subgrid_is_as_accurate() -> None:
    """With wide B1 smoothing (6 voxels) B1 is estimated on every 3rd voxel in-plane only (the
    fast path of the whole-thigh goal); the maps match the every-voxel estimate."""
    rng = np.random.default_rng(11)
    ny, nx = 60, 60
    yy, xx = np.mgrid[0:ny, 0:nx] / (ny - 1.0)
    b1 = np.repeat((0.7 + 0.4 * (0.5 * xx + 0.5 * yy**2))[..., None], 2, axis=2)
    t2 = rng.uniform(25, 50, b1.shape)
    ff = rng.uniform(0, 0.9, b1.shape)
    model = WaterT2Model()
    _, noisy = _simulate(t2, ff, b1, rng, model)
    sigma = (6.0, 6.0, 1.0)
    fast = fit_water_t2(noisy, TE_MS, model=model, b1_smoothing_sigma_vox=sigma)
    full = fit_water_t2(
        noisy, TE_MS, model=model, b1_smoothing_sigma_vox=sigma, b1_estimation_stride=1
    )
    assert fast.parameters["b1_estimation_stride"] == 3
    assert full.parameters["b1_estimation_stride"] == 1
    sel = ff < 0.6
    err_fast = np.median(np.abs(fast.water_t2_ms - t2)[sel])
    err_full = np.median(np.abs(full.water_t2_ms - t2)[sel])
    assert err_fast <= 2.0 and err_fast <= err_full + 0.1
    assert np.median(np.abs(fast.b1 - b1)) < 0.02
    assert np.median(np.abs(fast.b1 - full.b1)) < 0.01
    assert np.median(np.abs(fast.ff_percent - 100 * ff)) <= 2.5


def test_noiseless_recovery_and_known_b1() -> None:
    rng = np.random.default_rng(3)
    n = 500
    t2 = rng.uniform(25, 50, n)
    ff = rng.uniform(0, 0.6, n)
    b1 = rng.uniform(0.7, 1.1, n)
    model = WaterT2Model()
    clean, _ = _simulate(t2, ff, b1, rng, model)
    res = fit_water_t2(clean, TE_MS, model=model, n_threads=1, chunk_voxels=128)
    assert np.max(np.abs(res.water_t2_ms - t2)) < 1.0
    assert np.max(np.abs(res.ff_percent - 100 * ff)) < 1.0
    # B1 = 1 + d and 1 - d give nearly the same CPMG train (flip angles symmetric about
    # 90/180 deg), so a few voxels above 1 may land on the mirror value.
    assert np.median(np.abs(res.b1 - b1)) < 0.01
    assert np.all(np.minimum(np.abs(res.b1 - b1), np.abs(2 - res.b1 - b1)) < 0.03)
    known = fit_water_t2(clean, TE_MS, model=model, b1_map=b1)
    assert np.max(np.abs(known.water_t2_ms - t2)) < 1.0
    np.testing.assert_array_equal(known.b1, b1.astype(np.float32))


def test_search_reaches_exhaustive_optimum() -> None:
    """Coarse-to-fine search is as good as an exhaustive scipy-NNLS search of the fine grid."""
    from scipy.optimize import nnls

    rng = np.random.default_rng(11)
    model = WaterT2Model(coarse_t2_points=8, coarse_b1_points=6, refinement_levels=2)
    n = 40
    t2 = rng.uniform(25, 50, n)
    ff = rng.uniform(0, 0.9, n)
    b1 = rng.uniform(0.7, 1.1, n)
    _, noisy = _simulate(t2, ff, b1, rng, model)
    d = _dictionary(model, ESP_MS, N_ECHOES)
    res = fit_water_t2(noisy, TE_MS, model=model)
    fast_rnorm = res.relative_residual * np.linalg.norm(noisy, axis=1)
    for v in range(n):
        best = np.inf
        for it in range(d.t2_grid.size):
            for ib in range(d.b1_grid.size):
                cols = np.stack([d.water[it * d.b1_grid.size + ib], d.fat[ib]], axis=1)
                best = min(best, nnls(cols.astype(np.float64), noisy[v])[1])
        assert fast_rnorm[v] <= best * 1.001 + 1e-4


def test_nnls2_matches_scipy() -> None:
    from scipy.optimize import nnls

    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.uniform(0, 1, (17, 2))
        y = a @ rng.uniform(-1, 1, 2) + 0.1 * rng.standard_normal(17)
        x, _ = nnls(a, y)
        g = a.T @ a
        c = a.T @ y
        q, wa, fa = _nnls2(*(np.float32(v) for v in (c[0], c[1], g[0, 0], g[0, 1], g[1, 1])))
        np.testing.assert_allclose([wa, fa], x, atol=2e-4)
        np.testing.assert_allclose(q, y @ y - np.sum((y - a @ x) ** 2), atol=2e-3)


def test_mono_t2_exact_and_first_echo_skip() -> None:
    t2 = np.array([20.0, 35.0, 80.0])
    clean = 500.0 * np.exp(-TE_MS / t2[:, None])
    res = fit_mono_t2(clean, TE_MS)
    np.testing.assert_allclose(res.t2_ms, t2, rtol=1e-4)
    np.testing.assert_allclose(res.amplitude, 500.0, rtol=1e-3)
    # With imperfect refocusing mono-exponential T2 overestimates (stimulated echoes).
    epg = cpmg_echo_train(35.0, 0.8, echo_spacing_ms=ESP_MS, n_echoes=N_ECHOES)
    assert fit_mono_t2(epg, TE_MS).t2_ms > 35.2
    epg_low = cpmg_echo_train(35.0, 0.6, echo_spacing_ms=ESP_MS, n_echoes=N_ECHOES)
    assert fit_mono_t2(epg_low, TE_MS, skip_first_echo=False).t2_ms > 45.0


def test_fat_t2_calibration() -> None:
    rng = np.random.default_rng(4)
    b1 = rng.uniform(0.7, 1.1, (20, 20))
    sig = cpmg_echo_train(140.0, b1, t1_ms=365.0, echo_spacing_ms=ESP_MS, n_echoes=N_ECHOES)
    sig = np.abs(sig + (rng.standard_normal(sig.shape) + 1j * rng.standard_normal(sig.shape)) / 200)
    assert calibrate_fat_t2_ms(sig, TE_MS, np.ones((20, 20), bool)) == pytest.approx(
        140.0, rel=0.03
    )


def test_input_errors() -> None:
    data = np.ones((4, 4, 17))
    with pytest.raises(ShapeMismatchError):
        fit_water_t2(data, TE_MS[:16])
    with pytest.raises(TooFewEchoesError):
        fit_water_t2(data[..., :3], TE_MS[:3])
    with pytest.raises(ShapeMismatchError):
        fit_water_t2(data, TE_MS, mask=np.ones((3, 4), bool))
    with pytest.raises(InputDataError):
        echo_spacing_from_times([10.0, 20.0, 35.0, 40.0])
    assert echo_spacing_from_times(10.9 * np.arange(1, 18)) == pytest.approx(10.9)


def test_mask_and_nan_outside() -> None:
    data = np.zeros((3, 17))
    data[1] = np.exp(-TE_MS / 30.0)
    res = fit_water_t2(data, TE_MS)
    assert res.mask.tolist() == [False, True, False]
    assert np.isnan(res.water_t2_ms[0]) and np.isfinite(res.water_t2_ms[1])


def test_slice_profile_model_recovers_t2() -> None:
    """Data simulated with a slice profile are fitted accurately only with the same profile."""
    from qmri.epg import sinc_slice_profile

    prof = sinc_slice_profile(6, refocusing_width_ratio=1.2)
    profile = tuple(tuple(float(v) for v in row) for row in prof)
    small = {"coarse_t2_points": 8, "coarse_b1_points": 6, "refinement_levels": 2}
    with_profile = WaterT2Model(slice_profile=profile, **small)
    without = WaterT2Model(**small)
    rng = np.random.default_rng(12)
    n = 200
    t2 = rng.uniform(25, 50, n)
    b1 = rng.uniform(0.8, 1.1, n)
    kw = {"echo_spacing_ms": ESP_MS, "n_echoes": N_ECHOES, "slice_profile": prof}
    water = cpmg_echo_train(t2, b1, t1_ms=1400.0, **kw)
    fat = cpmg_echo_train(151.0, b1, t1_ms=365.0, **kw)
    sig = 0.9 * water + 0.1 * fat
    good = fit_water_t2(sig, TE_MS, model=with_profile)
    plain = fit_water_t2(sig, TE_MS, model=without)
    assert with_profile.as_dict()["slice_profile"] == "custom"
    assert np.median(np.abs(good.water_t2_ms - t2)) < 1.0
    assert np.median(good.relative_residual) < np.median(plain.relative_residual)
    # Without the profile the effective flip angles look lower: B1 is underestimated.
    assert np.median(plain.b1 - b1) < -0.05
