"""Water T2 from multi-echo spin echo: bi-component EPG fit and mono-exponential T2.

Model (Marty et al., NMR Biomed 2016;29:431-443; MyoQMRI's ``waterT2``): the echo train of a
voxel is ``S(TE) = M_w * EPG(T2_w, B1, T1_w) + M_f * EPG(T2_f, B1, T1_f)`` with the fat T2 fixed
(or calibrated from subcutaneous fat) and both T1s configurable. The two amplitudes enter
linearly, so they are projected out (variable projection, exact two-column non-negative least
squares); the two non-linear parameters (water T2, B1) are searched on a precomputed EPG
dictionary, coarse to fine:

1. dense search over a coarse grid (16 log-spaced T2 x 11 B1 values by default),
2. ``refinement_levels`` 3x3 pattern-search steps, each halving the grid step, ending on the fine
   grid (T2 ratio ~1.0104 per step, B1 step 0.00625 by default),
3. a parabolic sub-grid interpolation of the projected energy in log T2 and B1.

Optionally the B1 map is then smoothed spatially (B1 varies slowly) and water T2 / FF are
re-fitted with B1 fixed. Work is chunked (bounded memory) and spread over threads (NumPy releases
the GIL in the kernels used).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from qmri.epg import cpmg_echo_train
from qmri.errors import InputDataError, ModelParameterError, ShapeMismatchError, TooFewEchoesError

__all__ = [
    "T2FitResult",
    "MonoT2Result",
    "WaterT2Model",
    "fit_water_t2",
    "fit_mono_t2",
    "calibrate_fat_t2_ms",
    "echo_spacing_from_times",
]

F32 = np.float32


@dataclass(frozen=True)
class WaterT2Model:
    """Parameters of the bi-component EPG model and of its dictionary search.

    Attributes
    ----------
    fat_t2_ms : float
        Fixed T2 of the fat component (ms); 3 T skeletal-muscle literature ~130-180 ms.
    t1_water_ms, t1_fat_ms : float
        Longitudinal relaxation times (ms) of muscle water and fat (3 T: ~1400 and ~365 ms).
    refocusing_angle_deg, excitation_angle_deg : float
        Nominal flip angles of the sequence.
    water_t2_range_ms : (float, float)
        Search range of water T2 (ms), log-spaced.
    b1_range : (float, float)
        Search range of the relative B1.
    coarse_t2_points, coarse_b1_points : int
        Size of the dense coarse grid.
    refinement_levels : int
        Number of step-halving pattern-search levels; the fine grid has
        ``(coarse - 1) * 2**levels + 1`` points per axis.
    slice_profile : tuple of tuples or None
        Relative flip-angle profile passed to :func:`qmri.epg.cpmg_echo_train` (hashable form).
    """

    fat_t2_ms: float = 151.0
    t1_water_ms: float = 1400.0
    t1_fat_ms: float = 365.0
    refocusing_angle_deg: float = 180.0
    excitation_angle_deg: float = 90.0
    water_t2_range_ms: tuple[float, float] = (10.0, 120.0)
    b1_range: tuple[float, float] = (0.4, 1.4)
    coarse_t2_points: int = 16
    coarse_b1_points: int = 11
    refinement_levels: int = 4
    slice_profile: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        lo, hi = self.water_t2_range_ms
        b_lo, b_hi = self.b1_range
        if not (0 < lo < hi) or not (0 < b_lo < b_hi):
            raise ModelParameterError("water_t2_range_ms and b1_range must be increasing and > 0")
        if min(self.fat_t2_ms, self.t1_water_ms, self.t1_fat_ms) <= 0:
            raise ModelParameterError("relaxation times must be > 0")
        if self.coarse_t2_points < 3 or self.coarse_b1_points < 3 or self.refinement_levels < 0:
            raise ModelParameterError("coarse grids need >= 3 points and levels >= 0")

    def as_dict(self) -> dict[str, Any]:
        """Parameters as a JSON-serialisable dict (for sidecars)."""
        return {
            "fat_t2_ms": self.fat_t2_ms,
            "t1_water_ms": self.t1_water_ms,
            "t1_fat_ms": self.t1_fat_ms,
            "refocusing_angle_deg": self.refocusing_angle_deg,
            "excitation_angle_deg": self.excitation_angle_deg,
            "water_t2_range_ms": list(self.water_t2_range_ms),
            "b1_range": list(self.b1_range),
            "coarse_grid": [self.coarse_t2_points, self.coarse_b1_points],
            "refinement_levels": self.refinement_levels,
            "slice_profile": None if self.slice_profile is None else "custom",
        }


@dataclass
class T2FitResult:
    """Maps of the bi-component water-T2 fit; every array has the spatial shape S.

    Outside the mask every map is NaN.
    """

    water_t2_ms: NDArray[np.float32]
    ff_percent: NDArray[np.float32]
    b1: NDArray[np.float32]
    water_amplitude: NDArray[np.float32]
    fat_amplitude: NDArray[np.float32]
    relative_residual: NDArray[np.float32]
    mask: NDArray[np.bool_]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class MonoT2Result:
    """Maps of the mono-exponential T2 fit (spatial shape S, NaN outside the mask)."""

    t2_ms: NDArray[np.float32]
    amplitude: NDArray[np.float32]
    relative_residual: NDArray[np.float32]
    mask: NDArray[np.bool_]
    parameters: dict[str, Any] = field(default_factory=dict)


def echo_spacing_from_times(echo_times_ms: ArrayLike, *, rtol: float = 0.02) -> float:
    """Return the CPMG echo spacing; echo times must be ``n * spacing`` for n = 1..N.

    Raises
    ------
    InputDataError
        If the echo times are not equally spaced starting at one spacing.
    """
    te = np.asarray(echo_times_ms, dtype=np.float64).reshape(-1)
    if te.size < 2:
        raise TooFewEchoesError(f"a CPMG fit needs at least 2 echoes, got {te.size}")
    spacing = float((te[-1] - te[0]) / (te.size - 1))
    expected = spacing * np.arange(1, te.size + 1)
    if spacing <= 0 or not np.allclose(te, expected, rtol=rtol, atol=rtol * spacing):
        raise InputDataError(
            "echo times must be equally spaced with the first echo at one echo spacing "
            f"(CPMG); got {np.round(te, 3).tolist()}"
        )
    return spacing


@dataclass(frozen=True)
class _Dictionary:
    t2_grid: NDArray[np.float64]  # (T,)
    b1_grid: NDArray[np.float64]  # (B,)
    water: NDArray[np.float32]  # (T*B, E), flat index t * B + b
    fat: NDArray[np.float32]  # (B, E)
    g_ww: NDArray[np.float32]  # (T*B,)
    g_wf: NDArray[np.float32]  # (T*B,)
    g_ff: NDArray[np.float32]  # (B,)
    coarse_step: int
    # Precomputed projection coefficients: q = qa cw^2 + qb cw cf + qc cf^2 (interior).
    qa: NDArray[np.float32]  # (T*B,)
    qb: NDArray[np.float32]  # (T*B,)
    qc: NDArray[np.float32]  # (T*B,)
    inv_gww: NDArray[np.float32]  # (T*B,)
    inv_gff: NDArray[np.float32]  # (B,)
    # Rows [atom (E), qa, qb, qc, g_ww, g_wf, 1/g_ww] and [fat (E), g_ff, 1/g_ff]: one gather
    # per candidate fetches everything the search needs.
    water_packed: NDArray[np.float32]  # (T*B, E + 6)
    fat_packed: NDArray[np.float32]  # (B, E + 2)


@lru_cache(maxsize=8)
def _dictionary(model: WaterT2Model, echo_spacing_ms: float, n_echoes: int) -> _Dictionary:
    step = 2**model.refinement_levels
    n_t2 = (model.coarse_t2_points - 1) * step + 1
    n_b1 = (model.coarse_b1_points - 1) * step + 1
    t2_grid = np.geomspace(*model.water_t2_range_ms, n_t2)
    b1_grid = np.linspace(*model.b1_range, n_b1)
    profile = None if model.slice_profile is None else np.asarray(model.slice_profile)
    common: dict[str, Any] = {
        "echo_spacing_ms": echo_spacing_ms,
        "n_echoes": n_echoes,
        "refocusing_angle_deg": model.refocusing_angle_deg,
        "excitation_angle_deg": model.excitation_angle_deg,
        "slice_profile": profile,
    }
    water = cpmg_echo_train(
        t2_grid[:, None], b1_grid[None, :], t1_ms=model.t1_water_ms, **common
    ).reshape(n_t2 * n_b1, n_echoes)
    fat = cpmg_echo_train(model.fat_t2_ms, b1_grid, t1_ms=model.t1_fat_ms, **common)
    g_wf = (water.reshape(n_t2, n_b1, n_echoes) * fat[None]).sum(-1).reshape(-1)
    g_ww = (water * water).sum(-1)
    g_ff = (fat * fat).sum(-1)
    g_ff_flat = np.tile(g_ff, n_t2)
    det = np.maximum(g_ww * g_ff_flat - g_wf**2, 1e-30)
    return _Dictionary(
        t2_grid=t2_grid,
        b1_grid=b1_grid,
        water=water.astype(F32),
        fat=fat.astype(F32),
        g_ww=g_ww.astype(F32),
        g_wf=g_wf.astype(F32),
        g_ff=g_ff.astype(F32),
        coarse_step=step,
        qa=(g_ff_flat / det).astype(F32),
        qb=(-2.0 * g_wf / det).astype(F32),
        qc=(g_ww / det).astype(F32),
        inv_gww=(1.0 / g_ww).astype(F32),
        inv_gff=(1.0 / g_ff).astype(F32),
        water_packed=np.column_stack(
            [water, g_ff_flat / det, -2.0 * g_wf / det, g_ww / det, g_ww, g_wf, 1.0 / g_ww]
        ).astype(F32),
        fat_packed=np.column_stack([fat, g_ff, 1.0 / g_ff]).astype(F32),
    )


def _nnls2(
    cw: NDArray[np.float32],
    cf: NDArray[np.float32],
    gww: NDArray[np.float32],
    gwf: NDArray[np.float32],
    gff: NDArray[np.float32],
) -> tuple[NDArray[np.floating[Any]], NDArray[np.floating[Any]], NDArray[np.floating[Any]]]:
    """Exact non-negative least squares with two columns, from correlations and Gram terms.

    Returns the projected energy ``q = y' P y`` (residual^2 = |y|^2 - q) and the amplitudes.
    """
    det = gww * gff - gwf * gwf
    det = np.where(det > 0, det, F32(np.finfo(np.float32).tiny))
    a = (gff * cw - gwf * cf) / det
    b = (gww * cf - gwf * cw) / det
    q = a * cw + b * cf
    a_only = np.maximum(cw, 0) / gww
    b_only = np.maximum(cf, 0) / gff
    q_a = a_only * np.maximum(cw, 0)
    q_b = b_only * np.maximum(cf, 0)
    interior = (a >= 0) & (b >= 0)
    use_a = ~interior & (q_a >= q_b)
    use_b = ~interior & ~use_a
    q = np.where(interior, q, np.where(use_a, q_a, q_b))
    a = np.where(interior, a, np.where(use_a, a_only, 0))
    b = np.where(interior, b, np.where(use_b, b_only, 0))
    return q, a, b


def _correlations(
    y: NDArray[np.float32], it2: NDArray[np.intp], ib1: NDArray[np.intp], d: _Dictionary
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.intp]]:
    """Correlations with per-voxel candidate atoms; it2/ib1 shape (n, k), y shape (n, E)."""
    flat = it2 * d.b1_grid.size + ib1
    cw = np.einsum("nke,ne->nk", d.water[flat], y)
    cf = np.einsum("nke,ne->nk", d.fat[ib1], y)
    return cw, cf, flat


def _score_candidates(
    y: NDArray[np.float32], it2: NDArray[np.intp], ib1: NDArray[np.intp], d: _Dictionary
) -> NDArray[np.float32]:
    """Search score (see :func:`_score`) from packed gathers; it2/ib1 shape (n, k)."""
    n_e = y.shape[1]
    wp = d.water_packed[it2 * d.b1_grid.size + ib1]  # (n, k, E + 6)
    fp = d.fat_packed[ib1]  # (n, k, E + 2)
    cw = np.einsum("nke,ne->nk", wp[..., :n_e], y)
    cf = np.einsum("nke,ne->nk", fp[..., :n_e], y)
    qa, qb, qc, gww, gwf, inv_gww = (wp[..., n_e + i] for i in range(6))
    gff, inv_gff = fp[..., n_e], fp[..., n_e + 1]
    q = qa * cw * cw + qb * cw * cf + qc * cf * cf
    interior = (gff * cw >= gwf * cf) & (gww * cf >= gwf * cw)
    if interior.all():
        return q
    cwp = np.maximum(cw, 0)
    cfp = np.maximum(cf, 0)
    return np.where(interior, q, np.maximum(cwp * cwp * inv_gww, cfp * cfp * inv_gff))


_OFFSETS = np.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=np.intp)
_OFFSETS_WIDE = np.array([(i, j) for i in range(-2, 3) for j in range(-2, 3)], dtype=np.intp)


def _fit_chunk(
    y: NDArray[np.float32],
    d: _Dictionary,
    fixed_ib1: NDArray[np.intp] | None,
    wide_levels: int = 2,
) -> tuple[NDArray[np.float64], ...]:
    """Fit one chunk of voxels, y shape (n, E). Returns t2, b1, a, b, q (each (n,))."""
    n = y.shape[0]
    n_t2, n_b1 = d.t2_grid.size, d.b1_grid.size
    step = d.coarse_step
    ct2 = np.arange(0, n_t2, step)
    if fixed_ib1 is None:
        cb1 = np.arange(0, n_b1, step)
        coarse = (ct2[:, None] * n_b1 + cb1[None, :]).reshape(-1)
        cw = (y @ d.water[coarse].T).reshape(n, ct2.size, cb1.size)
        cf = (y @ d.fat[cb1].T)[:, None, :]
        # Coarse level: unconstrained projection (cheap); exact NNLS from the first refinement.
        fl = coarse.reshape(ct2.size, cb1.size)
        q = (d.qa[fl] * cw + d.qb[fl] * cf) * cw + d.qc[fl] * cf * cf
        best = q.reshape(n, -1).argmax(axis=1)
        it2 = ct2[best // cb1.size]
        ib1 = cb1[best % cb1.size]
        offsets, wide = _OFFSETS, _OFFSETS_WIDE
    else:
        ib1 = fixed_ib1
        it2c = np.broadcast_to(ct2, (n, ct2.size))
        q = _score_candidates(y, it2c, np.broadcast_to(ib1[:, None], it2c.shape), d)
        it2 = ct2[q.argmax(axis=1)]
        offsets = _OFFSETS[_OFFSETS[:, 1] == 0]
        wide = _OFFSETS_WIDE[_OFFSETS_WIDE[:, 1] == 0]
    s = step // 2
    level = 0
    while s >= 1:
        # The (T2, B1) valley is long and oblique at high FF: the first levels look two steps away.
        offs = wide if level < wide_levels else offsets
        level += 1
        cand_t2 = np.clip(it2[:, None] + offs[None, :, 0] * s, 0, n_t2 - 1)
        cand_b1 = np.clip(ib1[:, None] + offs[None, :, 1] * s, 0, n_b1 - 1)
        q = _score_candidates(y, cand_t2, cand_b1, d)
        k = q.argmax(axis=1)
        rows = np.arange(n)
        it2, ib1 = cand_t2[rows, k], cand_b1[rows, k]
        s //= 2
    # Final 3x3 (or 3x1) neighbourhood on the fine grid: amplitudes and sub-grid interpolation.
    cand_t2 = np.clip(it2[:, None] + offsets[None, :, 0], 0, n_t2 - 1)
    cand_b1 = np.clip(ib1[:, None] + offsets[None, :, 1], 0, n_b1 - 1)
    cw, cf, flat = _correlations(y, cand_t2, cand_b1, d)
    q, a, b = _nnls2(cw, cf, d.g_ww[flat], d.g_wf[flat], d.g_ff[cand_b1])
    centre = int(np.flatnonzero((offsets[:, 0] == 0) & (offsets[:, 1] == 0))[0])
    log_t2 = np.log(d.t2_grid)
    t2_out = np.exp(log_t2[it2] + _parabolic(q, offsets, 0, centre) * (log_t2[1] - log_t2[0]))
    b1_step = d.b1_grid[1] - d.b1_grid[0]
    b1_out = d.b1_grid[ib1] + (
        0.0 if fixed_ib1 is not None else _parabolic(q, offsets, 1, centre) * b1_step
    )
    return (
        t2_out,
        b1_out,
        a[:, centre].astype(np.float64),
        b[:, centre].astype(np.float64),
        q[:, centre].astype(np.float64),
    )


def _parabolic(
    q: NDArray[np.float32], offsets: NDArray[np.intp], axis: int, centre: int
) -> NDArray[np.float64]:
    """Sub-grid vertex offset (in steps, within +-0.5) of a parabola through 3 scores."""
    other = 1 - axis
    lo = int(np.flatnonzero((offsets[:, axis] == -1) & (offsets[:, other] == 0))[0])
    hi = int(np.flatnonzero((offsets[:, axis] == 1) & (offsets[:, other] == 0))[0])
    q0 = q[:, centre].astype(np.float64)
    qm = q[:, lo].astype(np.float64)
    qp = q[:, hi].astype(np.float64)
    curv = qm - 2 * q0 + qp
    ok = (curv < 0) & (q0 >= qm) & (q0 >= qp)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(ok, 0.5 * (qm - qp) / curv, 0.0)
    return np.clip(delta, -0.5, 0.5)


def _prepare(
    echoes: ArrayLike, echo_times_ms: ArrayLike, mask: ArrayLike | None, min_echoes: int
) -> tuple[NDArray[np.float32], NDArray[np.float64], NDArray[np.bool_]]:
    y = np.asarray(echoes)
    te = np.asarray(echo_times_ms, dtype=np.float64).reshape(-1)
    if y.ndim < 1 or y.shape[-1] != te.size:
        raise ShapeMismatchError(
            f"echo axis (last) of the data has {y.shape[-1] if y.ndim else 0} echoes but "
            f"{te.size} echo times were given"
        )
    if te.size < min_echoes:
        raise TooFewEchoesError(f"this fit needs at least {min_echoes} echoes, got {te.size}")
    if np.iscomplexobj(y):
        raise InputDataError("MESE fitting expects magnitude images (real, non-negative)")
    y = y.astype(F32, copy=False)
    finite = np.all(np.isfinite(y), axis=-1)
    if mask is None:
        m = finite & (y[..., 0] > 0)
    else:
        m = np.asarray(mask, dtype=bool)
        if m.shape != y.shape[:-1]:
            raise ShapeMismatchError(f"mask shape {m.shape} != image shape {y.shape[:-1]}")
        m = m & finite
    return y, te, m


def _run_chunks(
    n: int,
    chunk_voxels: int,
    n_threads: int | None,
    work: Callable[[slice], None],
    progress: Callable[[float], None] | None = None,
) -> None:
    slices = [slice(i, min(i + chunk_voxels, n)) for i in range(0, n, chunk_voxels)]
    threads = max(1, n_threads if n_threads is not None else (os.cpu_count() or 1))
    if threads == 1 or len(slices) <= 1:
        for k, sl in enumerate(slices):
            work(sl)
            if progress is not None:
                progress((k + 1) / len(slices))
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for k, _ in enumerate(pool.map(work, slices)):
            if progress is not None:
                progress((k + 1) / len(slices))


def _smooth_b1(
    b1: NDArray[np.float64],
    weight: NDArray[np.float64],
    mask: NDArray[np.bool_],
    sigma: float | tuple[float, ...],
) -> NDArray[np.float64]:
    """Weighted, mask-normalised Gaussian smoothing over the spatial axes."""
    w = np.where(mask, weight, 0.0)
    num = ndimage.gaussian_filter(np.where(mask, b1 * w, 0.0), sigma, mode="nearest")
    den = ndimage.gaussian_filter(w, sigma, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    return np.where(den > 1e-12 * max(float(den.max()), 1e-30), out, b1)


def fit_water_t2(
    echoes: ArrayLike,
    echo_times_ms: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    model: WaterT2Model | None = None,
    b1_smoothing_sigma_vox: float | tuple[float, ...] | None = None,
    b1_map: ArrayLike | None = None,
    b1_estimation_stride: int | None = None,
    chunk_voxels: int = 16384,
    n_threads: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> T2FitResult:
    """Fit water T2, fat fraction and B1 voxel-wise with the bi-component EPG model.

    Parameters
    ----------
    echoes : array_like, shape S + (E,)
        Magnitude echo images (any scale), echo axis last, E >= 4 echoes of a CPMG train.
    echo_times_ms : array_like, shape (E,)
        Echo times in ms, ``n * echo_spacing`` for n = 1..E.
    mask : array_like of bool, shape S, optional
        Voxels to fit (default: finite voxels with a positive first echo).
    model : WaterT2Model, optional
        Model constants (fat T2, T1s, flip angles) and search grids.
    b1_smoothing_sigma_vox : float or tuple of float, optional
        If given, B1 is regularised by a Gaussian of this width (voxels; one value for all
        spatial axes of S or one per axis; weighted by signal) and water T2 / FF are re-fitted
        with B1 fixed.
    b1_map : array_like, shape S, optional
        Known relative B1 (e.g. from a B1 map): only water T2 and FF are fitted.
    b1_estimation_stride : int, optional
        With ``b1_smoothing_sigma_vox``: the 2-D (water T2, B1) search that estimates B1 runs
        on every ``stride``-th voxel along the first two spatial axes (in-plane) only, before
        the smoothing; every voxel is then fitted with its regularised B1. Default: half the
        smallest in-plane smoothing width in voxels, between 1 and 4 (3 for 10 mm at 1.5 mm
        pixels) — the smoothing is much wider than the sub-grid step.
    chunk_voxels : int
        Voxels per work unit (memory ~ chunk_voxels * 9 * E * 8 bytes per thread).
    n_threads : int, optional
        Worker threads (default: all CPUs).
    progress : callable(float), optional
        Called with the completed fraction (0-1] after each chunk.

    Returns
    -------
    T2FitResult
        ``water_t2_ms`` (ms), ``ff_percent`` (%), ``b1`` (relative), amplitudes (input units),
        ``relative_residual`` = |y - fit| / |y| (goodness of fit; 0 is perfect).
    """
    model = model or WaterT2Model()
    y, te, m = _prepare(echoes, echo_times_ms, mask, min_echoes=4)
    spacing = echo_spacing_from_times(te)
    d = _dictionary(model, round(spacing, 6), te.size)
    spatial = y.shape[:-1]
    yv = y[m]
    n = yv.shape[0]

    fixed_ib1_all: NDArray[np.intp] | None = None
    if b1_map is not None:
        b1_arr = np.asarray(b1_map, dtype=np.float64)
        if b1_arr.shape != spatial:
            raise ShapeMismatchError(f"b1_map shape {b1_arr.shape} != image shape {spatial}")
        fixed_ib1_all = _nearest_b1_index(b1_arr[m], d)

    def run(
        yy: NDArray[np.float32],
        fixed: NDArray[np.intp] | None,
        prog: Callable[[float], None] | None,
    ) -> NDArray[np.float64]:
        res_all = np.full((5, yy.shape[0]), np.nan)

        def work(sl: slice) -> None:
            res = _fit_chunk(yy[sl], d, None if fixed is None else fixed[sl])
            for i, r in enumerate(res):
                res_all[i, sl] = r

        _run_chunks(yy.shape[0], chunk_voxels, n_threads, work, prog)
        return res_all

    out = np.full((5, n), np.nan)
    stride = 1
    if n:
        two_pass = b1_smoothing_sigma_vox is not None and fixed_ib1_all is None
        first_progress = (
            None if progress is None else ((lambda f: progress(0.5 * f)) if two_pass else progress)
        )
        if not two_pass:
            out = run(yv, fixed_ib1_all, first_progress)
        else:
            # B1 varies slowly: estimate it (2-D search) on an in-plane sub-grid, regularise,
            # then fit every voxel with B1 fixed (1-D search over water T2 only).
            stride = _b1_stride(spatial, b1_smoothing_sigma_vox, b1_estimation_stride)
            m_sub = m & _subgrid(spatial, stride)
            if m_sub.sum() < min(n, 64):  # tiny or oddly shaped masks: use every voxel
                stride, m_sub = 1, m
            first = run(y[m_sub], None, first_progress)
            b1_full = np.zeros(spatial)
            b1_full[m_sub] = first[1]
            weight = np.zeros(spatial)
            weight[m_sub] = first[2] + first[3]
            smooth = _smooth_b1(b1_full, weight, m_sub, b1_smoothing_sigma_vox or 0.0)
            out = run(
                yv,
                _nearest_b1_index(smooth[m], d),
                None if progress is None else (lambda f: progress(0.5 + 0.5 * f)),
            )
            out[1] = smooth[m]
    if fixed_ib1_all is not None:
        out[1] = np.asarray(b1_map, dtype=np.float64)[m]

    def fill(values: NDArray[np.float64]) -> NDArray[np.float32]:
        full = np.full(spatial, np.nan, dtype=F32)
        full[m] = values
        return full

    amp_w, amp_f, q = out[2], out[3], out[4]
    total = amp_w + amp_f
    with np.errstate(invalid="ignore", divide="ignore"):
        ff = np.where(total > 0, 100.0 * amp_f / total, np.nan)
        energy = np.einsum("ne,ne->n", yv, yv, dtype=np.float64)
        rel_res = np.sqrt(np.clip(energy - q, 0, None) / energy)
    params = model.as_dict() | {
        "method": "bi-component EPG (water + fat), dictionary variable projection",
        "echo_spacing_ms": spacing,
        "n_echoes": int(te.size),
        "b1_smoothing_sigma_vox": b1_smoothing_sigma_vox,
        "b1_estimation_stride": stride,
        "b1_fixed_from_map": b1_map is not None,
    }
    return T2FitResult(
        water_t2_ms=fill(out[0]),
        ff_percent=fill(ff),
        b1=fill(out[1]),
        water_amplitude=fill(amp_w),
        fat_amplitude=fill(amp_f),
        relative_residual=fill(rel_res),
        mask=m,
        parameters=params,
    )


def _b1_stride(
    spatial: tuple[int, ...],
    sigma: float | tuple[float, ...] | None,
    requested: int | None,
) -> int:
    """Sub-grid step for the B1 estimation (see ``b1_estimation_stride``)."""
    if requested is not None:
        if requested < 1:
            raise ModelParameterError("b1_estimation_stride must be >= 1")
        return int(requested)
    if len(spatial) < 2 or sigma is None:
        return 1
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (len(spatial),))[:2]
    return int(np.clip(np.floor(float(sig.min()) / 2.0), 1, 4))


def _subgrid(spatial: tuple[int, ...], stride: int) -> NDArray[np.bool_]:
    """Voxels whose first two spatial indices are multiples of ``stride`` (offset stride//2)."""
    keep = np.ones(spatial, dtype=bool)
    if stride <= 1:
        return keep
    for axis in range(min(2, len(spatial))):
        sel = (np.arange(spatial[axis]) % stride) == stride // 2
        shape = [1] * len(spatial)
        shape[axis] = spatial[axis]
        keep &= sel.reshape(shape)
    return keep


def _nearest_b1_index(b1: NDArray[np.float64], d: _Dictionary) -> NDArray[np.intp]:
    step = d.b1_grid[1] - d.b1_grid[0]
    idx = np.rint((np.nan_to_num(b1, nan=1.0) - d.b1_grid[0]) / step)
    return np.clip(idx, 0, d.b1_grid.size - 1).astype(np.intp)


def fit_mono_t2(
    echoes: ArrayLike,
    echo_times_ms: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    skip_first_echo: bool = True,
    t2_range_ms: tuple[float, float] = (1.0, 1000.0),
    iterations: int = 6,
    chunk_voxels: int = 65536,
    n_threads: int | None = None,
) -> MonoT2Result:
    """Mono-exponential T2, ``S = A exp(-TE/T2)``, by log-linear initialisation + Gauss-Newton.

    Parameters
    ----------
    echoes : array_like, shape S + (E,)
        Magnitude echo images, echo axis last.
    echo_times_ms : array_like, shape (E,)
        Echo times in ms (any spacing).
    mask : array_like of bool, shape S, optional
        Voxels to fit (default: finite voxels with a positive first echo).
    skip_first_echo : bool
        Drop the first echo (common practice: it lacks the stimulated-echo contribution).
    t2_range_ms : (float, float)
        T2 estimates are clipped to this range.
    iterations : int
        Gauss-Newton iterations on (A, 1/T2) of the unweighted least-squares problem.
    chunk_voxels, n_threads : int
        Work unit size (bounded memory) and worker threads (default: all CPUs).

    Returns
    -------
    MonoT2Result
        ``t2_ms`` (ms), ``amplitude`` (extrapolated to TE = 0, input units),
        ``relative_residual`` on the echoes used.
    """
    y, te, m = _prepare(echoes, echo_times_ms, mask, min_echoes=3 if skip_first_echo else 2)
    if skip_first_echo:
        y, te = y[..., 1:], te[1:]
    spatial = y.shape[:-1]
    y_m = y[m]
    lo, hi = t2_range_ms
    out = np.empty((3, y_m.shape[0]))
    te32 = te.astype(F32)

    def work(sl: slice) -> None:
        yv = y_m[sl].astype(F32)  # float32 throughout: half the memory traffic
        t = te32
        # Log-linear fit weighted by signal^2 (variance of log S ~ 1/S^2).
        w = np.clip(yv, F32(1e-12), None) ** 2
        ly = np.log(np.clip(yv, F32(1e-12), None))
        sw, swt, swtt = w.sum(1), w @ t, w @ t**2
        swy, swty = (w * ly).sum(1), (w * ly) @ t
        det = sw * swtt - swt**2
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = (sw * swty - swt * swy) / det
        r2 = np.clip(np.nan_to_num(-slope, nan=1.0 / 50.0), 1.0 / hi, 1.0 / lo).astype(F32)
        for _ in range(iterations):
            e = np.exp(-np.outer(r2, t))
            amp = (e * yv).sum(1) / np.maximum((e * e).sum(1), F32(1e-30))
            resid = yv - amp[:, None] * e
            j_a = e
            j_r = -amp[:, None] * t[None, :] * e
            h11, h12, h22 = (j_a * j_a).sum(1), (j_a * j_r).sum(1), (j_r * j_r).sum(1)
            g1, g2 = (j_a * resid).sum(1), (j_r * resid).sum(1)
            det2 = h11 * h22 - h12**2
            with np.errstate(invalid="ignore", divide="ignore"):
                dr = np.where(det2 > 0, (h11 * g2 - h12 * g1) / det2, 0.0)
            r2 = np.clip(r2 + np.nan_to_num(dr), 1.0 / hi, 1.0 / lo).astype(F32)
        e = np.exp(-np.outer(r2, t))
        amp = (e * yv).sum(1) / np.maximum((e * e).sum(1), F32(1e-30))
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.linalg.norm(yv - amp[:, None] * e, axis=1) / np.linalg.norm(yv, axis=1)
        out[0, sl], out[1, sl], out[2, sl] = r2, amp, rel

    _run_chunks(y_m.shape[0], chunk_voxels, n_threads, work)
    r2, amp, rel = out

    def fill(values: NDArray[np.float64]) -> NDArray[np.float32]:
        full = np.full(spatial, np.nan, dtype=F32)
        full[m] = values
        return full

    return MonoT2Result(
        t2_ms=fill(1.0 / r2),
        amplitude=fill(amp),
        relative_residual=fill(rel),
        mask=m,
        parameters={
            "method": "mono-exponential least squares (log-linear start, Gauss-Newton)",
            "skip_first_echo": skip_first_echo,
            "t2_range_ms": list(t2_range_ms),
        },
    )


def calibrate_fat_t2_ms(
    echoes: ArrayLike,
    echo_times_ms: ArrayLike,
    fat_mask: ArrayLike,
    *,
    t1_fat_ms: float = 365.0,
    refocusing_angle_deg: float = 180.0,
    excitation_angle_deg: float = 90.0,
    t2_range_ms: tuple[float, float] = (50.0, 400.0),
    b1_range: tuple[float, float] = (0.4, 1.4),
    max_voxels: int = 20000,
    seed: int = 0,
) -> float:
    """Calibrate the fat T2 as the median single-component EPG T2 of fat voxels.

    Parameters
    ----------
    echoes : array_like, shape S + (E,)
        Magnitude MESE echoes, echo axis last.
    echo_times_ms : array_like, shape (E,)
        CPMG echo times (ms).
    fat_mask : array_like of bool, shape S
        Voxels of (nearly) pure fat, e.g. subcutaneous fat.
    max_voxels : int
        At most this many mask voxels (random, seeded) are fitted.

    Returns
    -------
    float
        Fat T2 in ms.
    """
    y, te, _ = _prepare(echoes, echo_times_ms, None, min_echoes=4)
    fm = np.asarray(fat_mask, dtype=bool)
    if fm.shape != y.shape[:-1]:
        raise ShapeMismatchError(f"fat_mask shape {fm.shape} != image shape {y.shape[:-1]}")
    yv = y[fm & np.all(np.isfinite(y), axis=-1)]
    if yv.shape[0] < 10:
        raise InputDataError(f"fat calibration needs >= 10 fat voxels, got {yv.shape[0]}")
    if yv.shape[0] > max_voxels:
        yv = yv[np.random.default_rng(seed).choice(yv.shape[0], max_voxels, replace=False)]
    spacing = echo_spacing_from_times(te)
    t2_grid = np.geomspace(*t2_range_ms, 160)
    b1_grid = np.linspace(*b1_range, 81)
    atoms = (
        cpmg_echo_train(
            t2_grid[:, None],
            b1_grid[None, :],
            t1_ms=t1_fat_ms,
            echo_spacing_ms=spacing,
            n_echoes=te.size,
            refocusing_angle_deg=refocusing_angle_deg,
            excitation_angle_deg=excitation_angle_deg,
        )
        .reshape(-1, te.size)
        .astype(F32)
    )
    norm = np.sqrt((atoms * atoms).sum(1))
    best = np.empty(yv.shape[0], dtype=np.intp)
    for i in range(0, yv.shape[0], 2048):
        c = yv[i : i + 2048] @ (atoms / norm[:, None]).T
        best[i : i + 2048] = np.argmax(np.where(c > 0, c, 0), axis=1)
    return float(np.median(t2_grid[best // b1_grid.size]))
