"""Dixon fat fraction: vendor water/fat images, complex multi-echo GRE and magnitude/phase.

Complex multi-echo model (E >= 2 echoes at times t_n, 6-peak fat spectrum c(t)):

    s_n = exp(i phi0) * exp((i 2 pi psi - R2*) t_n) * (rho_w + rho_f c(t_n))

with real proton densities rho_w, rho_f sharing one initial phase phi0 (phase-constrained
estimation; Bydder et al., MRI 2011;29:216-221 — it makes dual-echo data well posed and removes the
magnitude noise bias of FF near 0 %), B0 offset psi (Hz) and a common R2* (1/s). For fixed
(psi, R2*) the amplitudes and phase are projected out in closed form: with A = diag(exp((i2pi psi -
R2*) t)) [1, c], u = A^H s, G = Re(A^H A) and U = [Re u, Im u], the captured energy is the largest
eigenvalue of the 2x2 matrix U^T G^-1 U (variable projection).

B0 is estimated robustly, not voxel-independently (Yu et al., MRM 2005;54:1032 "region growing";
cf. Berglund et al., MRM 2010;63:1659 multi-scale):

1. signals are averaged into a low-resolution grid; the cost over one full period of psi
   (1 / echo spacing) is computed there, its local minima are the candidates (water/fat swaps are
   alternative minima);
2. region growing from the most confident, strongest voxel assigns to each voxel the candidate
   (unwrapped by whole periods) nearest its already assigned neighbours, then a few
   smoothing passes replace isolated outliers by the candidate nearest the smoothed map;
3. the low-resolution B0 is interpolated to full resolution, where psi and R2* are refined
   voxel-wise only within +-window around it (so a voxel cannot jump to the swapped solution).

The fat/water phase sign differs between vendors; ``phase_convention="auto"`` fits both on the
low-resolution grid and keeps the one with the smaller residual (the 6-peak spectrum is
asymmetric, so the wrong convention fits worse).
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from qmri.errors import InputDataError, ModelParameterError, ShapeMismatchError, TooFewEchoesError
from qmri.fat_spectrum import fat_peak_frequencies_hz, fat_signal

__all__ = [
    "fat_water_separation_deg",
    "DixonModel",
    "DixonResult",
    "fit_dixon_complex",
    "fit_dixon_magnitude_phase",
    "ff_from_water_fat",
    "estimate_background_noise",
    "ff_crlb_std_points",
    "ill_conditioned_note",
]

PhaseConvention = Literal["standard", "conjugate", "auto"]
C64 = np.complex64
F32 = np.float32


@dataclass(frozen=True)
class DixonModel:
    """Constants of the complex Dixon fit.

    Attributes
    ----------
    fit_r2star : bool or None
        Estimate R2*; ``None`` means "when there are at least 3 echoes".
    r2star_fixed_per_s : float
        R2* (1/s) used when it is not fitted.
    r2star_max_per_s : float
        Upper end of the R2* search (1/s).
    r2star_points : int
        Grid points for R2* at full resolution (uniform on [0, max]).
    b0_points : int
        Grid points over one period of psi on the low-resolution grid.
    b0_window_hz : float or None
        Full-resolution search half-width around the low-resolution B0 (default: period / 8).
    lowres_size : int
        Largest size of any axis of the low-resolution grid.
    smoothing_passes : int
        Candidate re-selection passes against the smoothed low-resolution B0 map.
    smoothing_sigma_vox : float
        Width (low-resolution voxels) of that smoothing.
    phase_convention : {"standard", "conjugate", "auto"}
        Sign convention of the phase (see the module docstring).
    mask_threshold_fraction : float
        Default mask: voxels whose root-mean-square echo magnitude exceeds this fraction of the
        99th percentile.
    b0_mean_limit_hz : float or None
        Largest plausible mean B0 of a connected region (the scanner is tuned to water);
        ``None`` means half the main fat-peak shift (~217 Hz at 3 T).
    """

    fit_r2star: bool | None = None
    r2star_fixed_per_s: float = 0.0
    r2star_max_per_s: float = 300.0
    r2star_points: int = 16
    b0_points: int = 96
    b0_window_hz: float | None = None
    lowres_size: int = 48
    smoothing_passes: int = 3
    smoothing_sigma_vox: float = 2.0
    phase_convention: PhaseConvention = "auto"
    mask_threshold_fraction: float = 0.05
    b0_mean_limit_hz: float | None = None

    def __post_init__(self) -> None:
        if self.phase_convention not in ("standard", "conjugate", "auto"):
            raise ModelParameterError(f"unknown phase_convention {self.phase_convention!r}")
        if self.r2star_points < 3 or self.b0_points < 8 or self.lowres_size < 4:
            raise ModelParameterError("r2star_points >= 3, b0_points >= 8, lowres_size >= 4")
        if self.r2star_max_per_s <= 0 or self.r2star_fixed_per_s < 0:
            raise ModelParameterError("R2* limits must be non-negative")


@dataclass
class DixonResult:
    """Maps of a Dixon fit (spatial shape S, NaN outside the mask).

    ``ff_percent`` (%), ``water`` and ``fat`` (proton-density-weighted, input units),
    ``b0_hz`` (Hz), ``r2star_per_s`` (1/s), ``relative_residual`` (|s - fit| / |s|).
    """

    ff_percent: NDArray[np.float32]
    water: NDArray[np.float32]
    fat: NDArray[np.float32]
    b0_hz: NDArray[np.float32]
    r2star_per_s: NDArray[np.float32]
    relative_residual: NDArray[np.float32]
    mask: NDArray[np.bool_]
    parameters: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- projection core


def _gram_inverse(
    basis: NDArray[np.complex128], te_s: NDArray[np.float64], r2: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Inverse of G = Re(A^H A) for each R2* (shape (R, 2, 2)); independent of psi."""
    d2 = np.exp(-2.0 * np.outer(r2, te_s))  # (R, E)
    g = np.einsum("ek,re,el->rkl", basis.conj(), d2, basis).real
    return np.linalg.inv(g + 1e-12 * np.eye(2))


def _design(
    basis: NDArray[np.complex128],
    te_s: NDArray[np.float64],
    psi_hz: NDArray[np.float64],
    r2: NDArray[np.float64],
) -> NDArray[np.complex64]:
    """Matrix M (E, R*P*2) with u = s @ M = A^H s for every (R2*, psi) pair."""
    ph = np.exp(-2j * np.pi * np.outer(psi_hz, te_s))  # (P, E) conj of exp(+i 2 pi psi t)
    dr = np.exp(-np.outer(r2, te_s))  # (R, E)
    m = dr[:, None, :, None] * ph[None, :, :, None] * basis.conj()[None, None, :, :]
    return np.ascontiguousarray(m.transpose(2, 0, 1, 3).reshape(te_s.size, -1)).astype(C64)


def _design_whitened(
    basis: NDArray[np.complex128],
    te_s: NDArray[np.float64],
    psi_hz: NDArray[np.float64],
    r2: NDArray[np.float64],
) -> NDArray[np.complex64]:
    """Design with the Cholesky factor L of G^-1 folded in: w = s @ M gives w = L^T A^H s.

    Then the captured energy is ``(|w|^2 + |w^T w|) / 2`` (see :func:`_lambda_fast`).
    """
    gi = _gram_inverse(basis, te_s, r2)  # (R, 2, 2)
    chol = np.linalg.cholesky(gi)  # gi = L L^T
    m = _design(basis, te_s, psi_hz, r2).reshape(te_s.size, r2.size, psi_hz.size, 2)
    mw = np.einsum("erpk,rkj->erpj", m.astype(np.complex128), chol)
    return np.ascontiguousarray(mw.reshape(te_s.size, -1)).astype(C64)


def _lambda_fast(w: NDArray[np.complex64]) -> NDArray[np.float32]:
    """Largest eigenvalue of Re-part Gram form from whitened projections w (..., 2).

    With V = [Re w, Im w]: K = V^T V, so lambda_max = (tr K + sqrt((K11-K22)^2 + 4 K12^2)) / 2
    = (|w|^2 + |w0^2 + w1^2|) / 2.
    """
    w0 = w[..., 0]
    w1 = w[..., 1]
    energy = w0.real**2 + w0.imag**2 + w1.real**2 + w1.imag**2
    return 0.5 * (energy + np.abs(w0 * w0 + w1 * w1))


def _design_real(
    basis: NDArray[np.complex128],
    te_s: NDArray[np.float64],
    psi_hz: NDArray[np.float64],
    r2: NDArray[np.float64],
) -> NDArray[np.float32]:
    """Real form of :func:`_design_whitened`: shape (2E, 4K), K = R*P (R2* major).

    For complex64 data ``y`` (n, E), ``y.view(float32) @ M`` (interleaved real/imaginary input)
    gives the blocks [Re w0 | Im w0 | Re w1 | Im w1], each (n, K) — contiguous float32 columns
    for :func:`_lambda_real` instead of strided complex views.
    """
    mw = _design_whitened(basis, te_s, psi_hz, r2).astype(np.complex128)
    mw = mw.reshape(te_s.size, -1, 2)  # (E, K, 2)
    out = np.empty((2 * te_s.size, 4 * mw.shape[1]))
    for j in range(2):
        mr, mi = mw[:, :, j].real, mw[:, :, j].imag
        re_cols = slice(2 * j * mw.shape[1], (2 * j + 1) * mw.shape[1])
        im_cols = slice((2 * j + 1) * mw.shape[1], (2 * j + 2) * mw.shape[1])
        out[0::2, re_cols], out[1::2, re_cols] = mr, -mi  # Re w = yr mr - yi mi
        out[0::2, im_cols], out[1::2, im_cols] = mi, mr  # Im w = yr mi + yi mr
    return np.ascontiguousarray(out, dtype=F32)


def _lambda_real(w: NDArray[np.float32]) -> NDArray[np.float32]:
    """:func:`_lambda_fast` from the real blocks of :func:`_design_real`; w (n, 4K) -> (n, K).

    lambda = (|w0|^2 + |w1|^2 + |w0^2 + w1^2|) / 2 with w0^2 + w1^2 = zr + i zi.
    """
    k = w.shape[1] // 4
    a0, b0, a1, b1 = w[:, :k], w[:, k : 2 * k], w[:, 2 * k : 3 * k], w[:, 3 * k :]
    zi = a0 * b0
    zi += a1 * b1
    re2 = a0 * a0
    re2 += a1 * a1
    im2 = b0 * b0
    im2 += b1 * b1
    lam = re2 + im2
    re2 -= im2  # zr
    re2 *= re2
    zi *= zi
    zi *= 4.0
    re2 += zi
    np.sqrt(re2, out=re2)
    lam += re2
    lam *= 0.5
    return lam


def _lambda_max(
    u: NDArray[np.complex64], gi: NDArray[np.float64]
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """Captured energy and the eigenvector angle for u shape (..., R, P, 2), gi (R, 2, 2).

    Returns (energy, cos(phi0), sin(phi0)) each of shape (..., R, P).
    """
    ur = u.real
    ui = u.imag
    g = gi.astype(F32)[:, None]  # (R, 1, 2, 2)
    g00, g01, g11 = g[..., 0, 0], g[..., 0, 1], g[..., 1, 1]
    k11 = g00 * ur[..., 0] ** 2 + 2 * g01 * ur[..., 0] * ur[..., 1] + g11 * ur[..., 1] ** 2
    k22 = g00 * ui[..., 0] ** 2 + 2 * g01 * ui[..., 0] * ui[..., 1] + g11 * ui[..., 1] ** 2
    k12 = (
        g00 * ur[..., 0] * ui[..., 0]
        + g01 * (ur[..., 0] * ui[..., 1] + ur[..., 1] * ui[..., 0])
        + g11 * ur[..., 1] * ui[..., 1]
    )
    half_diff = 0.5 * (k11 - k22)
    root = np.sqrt(half_diff * half_diff + k12 * k12)
    lam = 0.5 * (k11 + k22) + root
    # Eigenvector angle phi with (cos, sin): tan(2 phi) = 2 k12 / (k11 - k22).
    phi = 0.5 * np.arctan2(k12, half_diff)
    return lam, np.cos(phi), np.sin(phi)


def _amplitudes(
    s: NDArray[np.complex64],
    basis: NDArray[np.complex128],
    te_s: NDArray[np.float64],
    psi_hz: NDArray[np.float64],
    r2: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Exact phase-constrained amplitudes at per-voxel continuous (psi, R2*); s shape (n, E).

    Per-echo arrays are complex64 / float32 (half the memory traffic); the 2x2 algebra per
    voxel is float64.
    """
    s64 = np.asarray(s, dtype=C64)
    decay = np.exp(
        psi_hz.astype(F32)[:, None] * (2j * np.pi * te_s).astype(C64)[None]
        - r2.astype(F32)[:, None] * te_s.astype(F32)[None]
    )  # (n, E) complex64
    sd = s64 * decay.conj()  # demodulated data
    d2 = decay.real * decay.real + decay.imag * decay.imag
    b0, b1 = basis[:, 0], basis[:, 1]
    u = (sd @ basis.conj().astype(C64)).astype(np.complex128)  # (n, 2)
    gram = d2 @ np.stack([np.abs(b0) ** 2, np.abs(b1) ** 2, (b0.conj() * b1).real], 1).astype(F32)
    g00, g11, g01 = (gram[:, k].astype(np.float64) for k in range(3))
    det = g00 * g11 - g01 * g01 + 1e-30
    i00, i11, i01 = g11 / det, g00 / det, -g01 / det
    ur0, ur1, ui0, ui1 = u[:, 0].real, u[:, 1].real, u[:, 0].imag, u[:, 1].imag
    k11 = i00 * ur0 * ur0 + 2 * i01 * ur0 * ur1 + i11 * ur1 * ur1
    k22 = i00 * ui0 * ui0 + 2 * i01 * ui0 * ui1 + i11 * ui1 * ui1
    k12 = i00 * ur0 * ui0 + i01 * (ur0 * ui1 + ur1 * ui0) + i11 * ur1 * ui1
    phi = 0.5 * np.arctan2(k12, 0.5 * (k11 - k22))
    c, sn = np.cos(phi), np.sin(phi)
    v0, v1 = ur0 * c + ui0 * sn, ur1 * c + ui1 * sn
    rho_w = i00 * v0 + i01 * v1
    rho_f = i01 * v0 + i11 * v1
    sign = np.where(rho_w + rho_f < 0, -1.0, 1.0)
    rho_w, rho_f = rho_w * sign, rho_f * sign
    phase = np.exp(1j * (phi + np.where(sign < 0, np.pi, 0.0))).astype(C64)
    model = (
        rho_w.astype(F32)[:, None] * b0.astype(C64)[None]
        + rho_f.astype(F32)[:, None] * b1.astype(C64)[None]
    )
    model *= decay
    model *= phase[:, None]
    resid = s64 - model
    energy = np.einsum("ne,ne->n", s64.real, s64.real) + np.einsum("ne,ne->n", s64.imag, s64.imag)
    rss = np.einsum("ne,ne->n", resid.real, resid.real) + np.einsum(
        "ne,ne->n", resid.imag, resid.imag
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.sqrt(rss.astype(np.float64) / energy.astype(np.float64))
    return rho_w, rho_f, rel


# --------------------------------------------------------------------------- helpers


def _period_hz(te_s: NDArray[np.float64]) -> float:
    """Period of the psi cost: 1 / echo spacing for equally spaced echoes, else 1 / min gap."""
    gaps = np.diff(np.sort(te_s))
    if gaps.size == 0 or np.any(gaps <= 0):
        raise InputDataError("echo times must be distinct")
    return float(1.0 / gaps.min())


def _block_mean(x: NDArray[np.complex64], factors: tuple[int, ...]) -> NDArray[np.complex64]:
    """Average non-overlapping blocks over the leading spatial axes (pads by edge values)."""
    spatial = x.shape[:-1]
    pad = [(0, (-n) % f) for n, f in zip(spatial, factors, strict=True)] + [(0, 0)]
    xp = np.pad(x, pad, mode="edge")
    shape: list[int] = []
    for n, f in zip(xp.shape[:-1], factors, strict=True):
        shape += [n // f, f]
    xr = xp.reshape(*shape, x.shape[-1])
    axes = tuple(range(1, 2 * len(spatial), 2))
    return xr.mean(axis=axes)


def _masked_block_mean(
    s: NDArray[np.complex64], m: NDArray[np.bool_], factors: tuple[int, ...]
) -> tuple[NDArray[np.complex64], NDArray[np.bool_]]:
    """Block means of the masked signal and the low-resolution mask (> 25 % of a block).

    Computed in slabs along the first axis (whole blocks per slab), so no full-size masked copy
    of the signal is made; identical to :func:`_block_mean` of the whole masked array.
    """
    step = factors[0] * 16
    lows, masks = [], []
    for i in range(0, s.shape[0], step):
        mm = m[i : i + step]
        lows.append(_block_mean(np.where(mm[..., None], s[i : i + step], 0).astype(C64), factors))
        masks.append(_block_mean(mm[..., None].astype(F32), factors)[..., 0] > 0.25)
    return np.concatenate(lows, axis=0), np.concatenate(masks, axis=0)


def _local_minima_periodic(
    cost: NDArray[np.float64], step_hz: float, k: int = 3
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Up to k lowest local minima along the last (periodic) axis of ``cost`` (n, P).

    Positions (Hz offset in grid steps, refined by a parabola) and refined minimum costs; missing
    minima repeat the best one. Returns (offset_steps_float (n, k), cost (n, k)).
    """
    left = np.roll(cost, 1, axis=-1)
    right = np.roll(cost, -1, axis=-1)
    is_min = (cost <= left) & (cost < right)
    masked = np.where(is_min, cost, np.inf)
    order = np.argsort(masked, axis=-1)[..., :k]
    valid = np.take_along_axis(masked, order, axis=-1) < np.inf
    order = np.where(valid, order, order[..., :1])
    c0 = np.take_along_axis(cost, order, axis=-1)
    cm = np.take_along_axis(left, order, axis=-1)
    cp = np.take_along_axis(right, order, axis=-1)
    curv = cm - 2 * c0 + cp
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(curv > 0, 0.5 * (cm - cp) / curv, 0.0)
    d = np.clip(np.nan_to_num(d), -0.5, 0.5)
    refined = c0 - 0.25 * (cm - cp) * d
    return order + d, refined


def _neighbour_table(shape: tuple[int, ...]) -> NDArray[np.intp]:
    """Flat indices of the 2*ndim face neighbours of every voxel (-1 outside the grid)."""
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    cols = []
    for ax in range(len(shape)):
        for d in (-1, 1):
            nb = np.roll(idx, -d, axis=ax)
            edge = [slice(None)] * len(shape)
            edge[ax] = slice(-1, None) if d == 1 else slice(0, 1)
            nb[tuple(edge)] = -1
            cols.append(nb.reshape(-1))
    return np.stack(cols, axis=1)


def _region_grow(
    cand_hz: NDArray[np.float64],
    cand_cost: NDArray[np.float64],
    priority: NDArray[np.float64],
    mask: NDArray[np.bool_],
    period_hz: float,
) -> tuple[NDArray[np.float64], NDArray[np.int32]]:
    """Assign one psi per masked voxel: candidates (S + (K,)) unwrapped to the neighbour mean.

    Seeds are the voxels whose best candidate is most distinct from the second (weighted by
    signal); growth follows signal strength (priority queue). Returns (psi, region labels).
    Plain Python lists: the loop is sequential by nature.
    """
    shape = mask.shape
    n = mask.size
    k = cand_hz.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(cand_cost[..., 1] > 0, 1.0 - cand_cost[..., 0] / cand_cost[..., 1], 0.0)
    seed_score = (priority * np.clip(np.nan_to_num(gap), 0, 1)).reshape(-1)
    in_mask = mask.reshape(-1)
    seed_order = np.flatnonzero(in_mask)
    seed_order = seed_order[np.argsort(-seed_score[seed_order], kind="stable")].tolist()
    neighbours = _neighbour_table(shape).tolist()
    cands = cand_hz.reshape(n, k).tolist()
    prio = priority.reshape(-1).tolist()
    ok = in_mask.tolist()
    psi = [0.0] * n
    labels = [0] * n
    assigned = bytearray(n)
    total, count, label = 0.0, 0, 0

    def choose(i: int, ref: float) -> float:
        best, best_d = 0.0, np.inf
        for v in cands[i]:
            u = v + round((ref - v) / period_hz) * period_hz
            dist = abs(u - ref)
            if dist < best_d:
                best, best_d = u, dist
        return best

    for seed in seed_order:
        if assigned[seed]:
            continue
        label += 1
        psi[seed] = choose(seed, total / count) if count else cands[seed][0]
        assigned[seed] = 1
        labels[seed] = label
        total += psi[seed]
        count += 1
        heap: list[tuple[float, int]] = [(0.0, seed)]
        while heap:
            _, i = heapq.heappop(heap)
            for j in neighbours[i]:
                if j < 0 or assigned[j] or not ok[j]:
                    continue
                acc, m = 0.0, 0
                for q in neighbours[j]:
                    if q >= 0 and assigned[q]:
                        acc += psi[q]
                        m += 1
                psi[j] = choose(j, acc / m)
                assigned[j] = 1
                labels[j] = label
                total += psi[j]
                count += 1
                heapq.heappush(heap, (-prio[j], j))
    psi_arr = np.where(in_mask, np.asarray(psi), np.nan).reshape(shape)
    return psi_arr, np.asarray(labels, dtype=np.int32).reshape(shape)


def _global_shift(
    psi: NDArray[np.float64],
    labels: NDArray[np.int32],
    cand_hz: NDArray[np.float64],
    cand_cost: NDArray[np.float64],
    period_hz: float,
    shifts_hz: NDArray[np.float64],
    *,
    criterion: Literal["cost", "smoothness"],
    weight: NDArray[np.float64],
    sigma: float,
    mean_limit_hz: float = np.inf,
) -> NDArray[np.float64]:
    """Per region, move every voxel to its candidate nearest psi + delta for the best delta.

    A consistent map can still be swapped as a whole. With >= 3 echoes each voxel's alternative
    minimum fits only slightly worse (far less than the noise), but summed over a region the cost
    difference is decisive (``criterion="cost"``). With 2 echoes both solutions fit exactly; the
    swapped B0 then depends on each voxel's composition, so the smoothest map wins
    (``criterion="smoothness"``). Shifts whose region mean B0 (modulo whole periods) exceeds
    ``mean_limit_hz`` are only used if no shift satisfies it: the scanner's centre frequency is
    set on water, so a region whose mean B0 sits near the fat frequency is a global swap.
    Finally each region's mean B0 is brought into [-period/2, period/2) (whole periods are
    indistinguishable).
    """
    out = psi.copy()
    for label in range(1, int(labels.max()) + 1):
        sel = labels == label
        c = cand_hz[sel]  # (n, K)
        cc = cand_cost[sel]
        base = psi[sel][:, None]
        best_key: tuple[bool, float] = (True, np.inf)
        best_pick = base[:, 0]
        for delta in shifts_hz:
            target = base + delta
            unwrapped = c + np.round((target - c) / period_hz) * period_hz
            j = np.argmin(np.abs(unwrapped - target), axis=1)
            rows = np.arange(j.size)
            pick = unwrapped[rows, j]
            if criterion == "cost":
                total = float(cc[rows, j].sum())
            else:
                trial = np.full(psi.shape, np.nan)
                trial[sel] = pick
                smooth = _masked_smooth(trial, np.where(sel, weight, 0.0), sigma)
                total = float(np.sum(weight[sel] * (pick - smooth[sel]) ** 2))
            mean = float(np.average(pick, weights=weight[sel] + 1e-30))
            mean -= np.round(mean / period_hz) * period_hz
            allowed = abs(mean) <= mean_limit_hz
            key = (not allowed, total)
            if key < best_key:
                best_key, best_pick = key, pick
        mean = float(np.average(best_pick, weights=weight[sel] + 1e-30))
        out[sel] = best_pick - np.round(mean / period_hz) * period_hz
    return out


def _masked_smooth(
    values: NDArray[np.float64], weight: NDArray[np.float64], sigma: float
) -> NDArray[np.float64]:
    w = np.where(np.isfinite(values), weight, 0.0)
    num = ndimage.gaussian_filter(np.where(w > 0, values, 0.0) * w, sigma, mode="nearest")
    den = ndimage.gaussian_filter(w, sigma, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def _fill_and_upsample(
    psi_low: NDArray[np.float64],
    weight: NDArray[np.float64],
    full_shape: tuple[int, ...],
    factors: tuple[int, ...],
) -> NDArray[np.float64]:
    """Extrapolate psi into unassigned low-res voxels, then interpolate linearly to full res."""
    filled = psi_low.copy()
    missing = ~np.isfinite(filled)
    if missing.all():
        return np.zeros(full_shape)
    sigma = 1.0
    while missing.any() and sigma < 4 * max(psi_low.shape):
        sm = _masked_smooth(psi_low, weight, sigma)
        take = missing & np.isfinite(sm)
        filled[take] = sm[take]
        missing = ~np.isfinite(filled)
        sigma *= 2
    filled[missing] = float(np.nanmean(psi_low))
    coords = np.meshgrid(
        *[(np.arange(n) + 0.5) / f - 0.5 for n, f in zip(full_shape, factors, strict=True)],
        indexing="ij",
    )
    return ndimage.map_coordinates(filled, coords, order=1, mode="nearest")


def _default_mask(s: NDArray[np.complex64], fraction: float) -> NDArray[np.bool_]:
    rms = np.sqrt(np.mean(np.abs(s) ** 2, axis=-1))
    finite = np.all(np.isfinite(s), axis=-1)
    ref = np.percentile(rms[finite], 99) if finite.any() else 0.0
    return finite & (rms > fraction * ref)


# --------------------------------------------------------------------------- public API


def fat_water_separation_deg(echo_times_ms: ArrayLike, field_strength_t: float) -> float:
    """Largest rotation (degrees, 0-180) of the fat signal relative to water between two echoes.

    Water and fat are separable only if the fat phasor turns appreciably between echoes; echo
    times chosen for B0 mapping (fat in phase at every echo) give values near 0. Below ~60 deg
    the fitted FF is unreliable (flagged as ``well_conditioned = False``).
    """
    c = fat_signal(np.asarray(echo_times_ms, dtype=np.float64).reshape(-1), field_strength_t)
    rel = np.angle(c[:, None] / c[None, :])
    return float(np.degrees(np.max(np.abs(rel))))


def ff_crlb_std_points(
    echo_times_ms: ArrayLike,
    field_strength_t: float,
    ff_percent: float,
    snr: float,
    *,
    b0_known: bool = False,
) -> float:
    """Cramer-Rao lower bound of the FF standard deviation (percentage points) for one voxel.

    Model of :func:`fit_dixon_complex` without R2* (its best case): unknown real water and fat
    amplitudes, a free initial phase and, unless ``b0_known`` (perfect spatial regularisation),
    a free B0. ``snr`` = (water + fat) / noise standard deviation per complex channel. The bound
    does not depend on the phase or B0 values, so they are taken as zero.

    Parameters
    ----------
    echo_times_ms : array_like, shape (E,)
    field_strength_t : float
    ff_percent : float
        True fat fraction in [0, 100].
    snr : float
        Signal-to-noise ratio of the first echo's total proton density (> 0).
    b0_known : bool

    Returns
    -------
    float
        Lower bound of std(FF) in percentage points (inf when the FF is not identifiable).
    """
    te_ms = np.asarray(echo_times_ms, dtype=np.float64).reshape(-1)
    if not 0.0 <= ff_percent <= 100.0 or snr <= 0:
        raise ModelParameterError("ff_percent must be in [0, 100] and snr > 0")
    c = fat_signal(te_ms, field_strength_t)
    f = ff_percent / 100.0
    w = 1.0 - f
    s = w + f * c
    columns = [np.ones_like(c), c, 1j * s]  # d/dw, d/df, d/dphi
    if not b0_known:
        columns.append(2j * np.pi * te_ms * 1e-3 * s)  # d/dpsi
    jac = np.stack(columns, axis=1)
    fisher = (jac.conj().T @ jac).real * snr**2  # real parameters, complex Gaussian noise
    if np.linalg.cond(fisher) > 1e12:
        return float("inf")
    grad = np.zeros(jac.shape[1])
    grad[0], grad[1] = -f, w  # d FF / d(w, f) at w + f = 1
    return float(100.0 * np.sqrt(grad @ np.linalg.solve(fisher, grad)))


def ill_conditioned_note(
    echo_times_ms: ArrayLike, field_strength_t: float, *, refused: bool
) -> str:
    """Human-readable reason why FF from these echo times is unreliable (with numbers)."""
    te = np.asarray(echo_times_ms, dtype=np.float64).reshape(-1)
    sep = fat_water_separation_deg(te, field_strength_t)
    bound = ff_crlb_std_points(te, field_strength_t, 50.0, 100.0)
    msg = (
        f"echo times {', '.join(f'{t:g}' for t in te)} ms at {field_strength_t:g} T cannot "
        f"separate water from fat: the fat signal turns by only {sep:.0f} deg relative to water "
        "between echoes (>= 60 deg needed), so the water-dominant and fat-dominant solutions "
        "fit the data almost equally and unmodelled R2* decay is read as fat (FF noise bound "
        f"{bound:.0f} points at SNR 100 and FF 50 %; see qmri/README.md)"
    )
    if refused:
        return msg + "; FF, water and fat maps NOT written (allow_ill_conditioned to force)"
    return msg + "; FF, water and fat maps written anyway, do not use them quantitatively"


def _lowres_factors(spatial: tuple[int, ...], size: int) -> tuple[int, ...]:
    """Block sizes so that no axis exceeds ``size`` and the grid has <= size**2 * 14 voxels
    (about 32 000 at the default 48): the region growing is sequential."""
    factors = [max(1, int(np.ceil(n / size))) for n in spatial]
    budget = size * size * 14
    while np.prod([int(np.ceil(n / f)) for n, f in zip(spatial, factors, strict=True)]) > budget:
        sizes = [int(np.ceil(n / f)) for n, f in zip(spatial, factors, strict=True)]
        factors[int(np.argmax(sizes))] += 1
    return tuple(factors)


def _lowres_b0(
    cost: NDArray[np.float64],
    m_low: NDArray[np.bool_],
    priority: NDArray[np.float64],
    period: float,
    model: DixonModel,
    *,
    two_echo: bool,
    mean_limit_hz: float,
) -> tuple[NDArray[np.float64], float]:
    """Low-resolution B0 map from per-voxel costs over psi (n_low, P): candidates, region
    growing, smoothing passes and per-region global shift. Returns (psi map, total cost)."""
    psi_low = np.full(m_low.shape, np.nan)
    if not m_low.any():
        return psi_low, 0.0
    step_hz = period / cost.shape[1]
    cand_steps, cand_cost_flat = _local_minima_periodic(cost, step_hz, k=3)
    cand_hz = np.zeros(m_low.shape + (3,))
    cand_cost = np.zeros(m_low.shape + (3,))
    cand_hz[m_low] = cand_steps * step_hz - period / 2.0
    cand_cost[m_low] = cand_cost_flat
    psi_low, labels = _region_grow(cand_hz, cand_cost, priority, m_low, period)
    shifts = np.linspace(-period / 2, period / 2, 24, endpoint=False)
    for _ in range(max(1, model.smoothing_passes)):
        ref = _masked_smooth(psi_low, priority, model.smoothing_sigma_vox)
        c = cand_hz[m_low]
        r = ref[m_low][:, None]
        unwrapped = c + np.round((r - c) / period) * period
        pick = np.argmin(np.abs(unwrapped - r), axis=1)
        psi_low[m_low] = unwrapped[np.arange(pick.size), pick]
        psi_low = _global_shift(
            psi_low,
            labels,
            cand_hz,
            cand_cost,
            period,
            shifts,
            criterion="smoothness" if two_echo else "cost",
            weight=priority,
            sigma=model.smoothing_sigma_vox,
            mean_limit_hz=mean_limit_hz,
        )
    c = cand_hz[m_low]
    target = psi_low[m_low][:, None]
    unwrapped = c + np.round((target - c) / period) * period
    j = np.argmin(np.abs(unwrapped - target), axis=1)
    total = float(np.sum(np.clip(cand_cost[m_low][np.arange(j.size), j], 0, None)))
    return psi_low, total


def fit_dixon_complex(
    signal: ArrayLike,
    echo_times_ms: ArrayLike,
    field_strength_t: float,
    *,
    mask: ArrayLike | None = None,
    model: DixonModel | None = None,
    chunk_voxels: int = 16384,
    n_threads: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> DixonResult:
    """Water, fat, FF, B0 and R2* from complex multi-echo gradient-echo images.

    Parameters
    ----------
    signal : array_like of complex, shape S + (E,)
        Complex echo images (echo axis last), E >= 2; S may be 1-D, 2-D or 3-D (spatial
        regularisation of B0 uses the neighbourhood structure of S).
    echo_times_ms : array_like, shape (E,)
        Echo times in ms.
    field_strength_t : float
        Main field in tesla (sets the fat peak frequencies).
    mask : array_like of bool, shape S, optional
        Voxels to fit (default: RMS signal above ``model.mask_threshold_fraction`` of the 99th
        percentile).
    model : DixonModel, optional
    chunk_voxels, n_threads : int
        Work unit size and worker threads for the full-resolution stage (the signal is
        gathered per chunk; a few kB of work arrays per voxel of a chunk, per thread).
    progress : callable(float), optional
        Called with the completed fraction.

    Returns
    -------
    DixonResult
        FF (%), water, fat, B0 (Hz), R2* (1/s), relative residual.
    """
    model = model or DixonModel()
    s = np.asarray(signal)
    te_ms = np.asarray(echo_times_ms, dtype=np.float64).reshape(-1)
    if s.ndim < 2:
        raise ShapeMismatchError("signal must have spatial axes and an echo axis (last)")
    if s.shape[-1] != te_ms.size:
        raise ShapeMismatchError(
            f"signal has {s.shape[-1]} echoes (last axis) but {te_ms.size} echo times were given"
        )
    if te_ms.size < 2:
        raise TooFewEchoesError(f"complex Dixon needs at least 2 echoes, got {te_ms.size}")
    if not np.iscomplexobj(s):
        raise InputDataError("complex Dixon needs complex echoes (real/imaginary or mag/phase)")
    if field_strength_t <= 0:
        raise ModelParameterError("field_strength_t must be > 0")
    s = s.astype(C64, copy=False)
    spatial = s.shape[:-1]
    if mask is None:
        m = _default_mask(s, model.mask_threshold_fraction)
    else:
        m = np.asarray(mask, dtype=bool)
        if m.shape != spatial:
            raise ShapeMismatchError(f"mask shape {m.shape} != image shape {spatial}")
        m = m & np.all(np.isfinite(s), axis=-1)
    te_s = te_ms * 1e-3
    fit_r2 = model.fit_r2star if model.fit_r2star is not None else te_ms.size >= 3
    if fit_r2 and te_ms.size < 3:
        raise TooFewEchoesError("R2* estimation needs at least 3 echoes")
    period = _period_hz(te_s)
    window = model.b0_window_hz if model.b0_window_hz is not None else period / 8.0
    basis = np.stack([np.ones_like(te_ms), fat_signal(te_ms, field_strength_t)], axis=1)
    r2_low = np.array([0.0, 50.0, 100.0, 200.0]) if fit_r2 else np.array([model.r2star_fixed_per_s])
    r2_full = (
        np.linspace(0.0, model.r2star_max_per_s, model.r2star_points)
        if fit_r2
        else np.array([model.r2star_fixed_per_s])
    )

    separation = fat_water_separation_deg(te_ms, field_strength_t)

    # ---- stage 1: low-resolution B0 candidates and region growing
    factors = _lowres_factors(spatial, model.lowres_size)
    low, m_low = _masked_block_mean(s, m, factors)
    low_flat = low[m_low]
    psi_grid = np.arange(model.b0_points, dtype=np.float64) * (period / model.b0_points)
    psi_grid -= period / 2.0
    conventions = (
        ["standard", "conjugate"] if model.phase_convention == "auto" else [model.phase_convention]
    )
    mtx_low = _design_real(basis, te_s, psi_grid, r2_low)
    energy_low = np.sum(np.abs(low_flat) ** 2, axis=1)
    priority = np.zeros(m_low.shape)
    priority[m_low] = np.sqrt(energy_low)
    fat_shift_hz = abs(float(fat_peak_frequencies_hz(field_strength_t)[1]))
    mean_limit = (
        model.b0_mean_limit_hz if model.b0_mean_limit_hz is not None else 0.5 * fat_shift_hz
    )
    results: dict[str, tuple[NDArray[np.float64], float]] = {}
    for conv in conventions:
        data = np.ascontiguousarray(low_flat.conj() if conv == "conjugate" else low_flat, C64)
        cost = np.empty((data.shape[0], psi_grid.size))  # (n, P), in chunks: bounded memory
        for i in range(0, data.shape[0], 4096):
            lam_low = _lambda_real(data[i : i + 4096].view(F32) @ mtx_low)
            lam_low = lam_low.reshape(-1, r2_low.size, psi_grid.size).max(axis=1)
            cost[i : i + 4096] = energy_low[i : i + 4096, None] - lam_low
        results[conv] = _lowres_b0(
            cost, m_low, priority, period, model, two_echo=te_ms.size < 3, mean_limit_hz=mean_limit
        )
    best_conv = conventions[0]
    # With >= 3 echoes the convention with the lower total cost (under the B0 prior) wins. With 2
    # echoes both conventions fit about equally: keep the standard one unless the other is
    # clearly better.
    margin = 1.0 if te_ms.size >= 3 else 0.9
    if len(conventions) == 2 and results["conjugate"][1] < margin * results["standard"][1]:
        best_conv = "conjugate"
    psi_low = results[best_conv][0]
    convention_costs = {k: v[1] for k, v in results.items()}

    if progress is not None:
        progress(0.2)

    # ---- stage 2: full-resolution refinement near the interpolated B0
    psi0_full = _fill_and_upsample(psi_low, priority, spatial, factors)
    # Masked voxels are gathered per chunk (no full-size copy of the signal).
    flat_signal = s.reshape(-1, te_ms.size)
    voxel_index = np.flatnonzero(m.reshape(-1))
    conjugate = best_conv == "conjugate"
    psi0 = psi0_full.reshape(-1)[voxel_index]
    del psi0_full
    n = voxel_index.size
    n_win = 9
    dpsi = np.linspace(-window, window, n_win)
    r2_a = r2_low
    mtx_a = _design_real(basis, te_s, np.asarray(dpsi, dtype=np.float64), r2_a)
    mtx_b = _design_real(basis, te_s, np.zeros(1, dtype=np.float64), r2_full)
    out = np.full((5, n), np.nan)
    minus_2pi_i_te = (-2j * np.pi * te_s[None, :]).astype(C64)  # complex64 demodulation

    def work(sl: slice) -> None:
        sv = flat_signal[voxel_index[sl]]
        if conjugate:
            np.conjugate(sv, out=sv)
        # Step A: B0 within the window, with a coarse R2* grid (exact projection per pair).
        y = sv * np.exp(psi0[sl, None].astype(F32) * minus_2pi_i_te)
        lam = _lambda_real(y.view(F32) @ mtx_a).reshape(y.shape[0], r2_a.size, n_win)
        flat = lam.reshape(y.shape[0], -1).argmax(axis=1)
        ir, ip = flat // n_win, flat % n_win
        rows = np.arange(y.shape[0])
        dp = _parabola_offset(lam[rows, ir, :], ip) * (dpsi[1] - dpsi[0])
        psi = psi0[sl] + dpsi[ip] + dp
        # Step B: R2* on its fine grid at that B0 (demodulating by psi is exact: the phase
        # factor is unitary and the Gram matrix depends on R2* only).
        if r2_full.size > 1:
            yb = sv * np.exp(psi[:, None].astype(F32) * minus_2pi_i_te)
            lam_b = _lambda_real(yb.view(F32) @ mtx_b)
            jr = lam_b.argmax(axis=1)
            dr = _parabola_offset(lam_b, jr) * (r2_full[1] - r2_full[0])
            r2 = np.clip(r2_full[jr] + dr, 0.0, None)
        else:
            r2 = np.full(y.shape[0], r2_full[0])
        rho_w, rho_f, rel = _amplitudes(sv, basis, te_s, psi, r2)
        out[0, sl], out[1, sl], out[2, sl], out[3, sl], out[4, sl] = rho_w, rho_f, psi, r2, rel

    slices = [slice(i, min(i + chunk_voxels, n)) for i in range(0, n, chunk_voxels)]
    threads = max(1, n_threads if n_threads is not None else (os.cpu_count() or 1))
    if threads == 1 or len(slices) <= 1:
        for sl in slices:
            work(sl)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(work, slices))
    if progress is not None:
        progress(1.0)

    rho_w, rho_f = out[0], out[1]
    total = rho_w + rho_f
    with np.errstate(invalid="ignore", divide="ignore"):
        ff = np.clip(100.0 * rho_f / total, 0.0, 100.0)
    b0 = out[2]  # physical offset in the standard convention (data were conjugated if needed)

    def fill(values: NDArray[np.float64]) -> NDArray[np.float32]:
        full = np.full(spatial, np.nan, dtype=F32)
        full[m] = values
        return full

    return DixonResult(
        ff_percent=fill(ff),
        water=fill(np.clip(rho_w, 0, None)),
        fat=fill(np.clip(rho_f, 0, None)),
        b0_hz=fill(b0),
        r2star_per_s=fill(out[3]),
        relative_residual=fill(out[4]),
        mask=m,
        parameters={
            "method": "phase-constrained multi-peak water-fat separation (variable projection), "
            "B0 by low-resolution region growing",
            "fat_model": "6-peak (Hamilton 2011 / ISMRM fat-water toolbox)",
            "field_strength_t": float(field_strength_t),
            "echo_times_ms": te_ms.tolist(),
            "r2star_fitted": bool(fit_r2),
            "fat_water_separation_deg": separation,
            "well_conditioned": separation >= 60.0,
            "b0_composition_uncertainty_hz": separation / 360.0 * period,
            "phase_convention_used": best_conv,
            "phase_convention_costs": convention_costs,
            "b0_period_hz": period,
            "b0_window_hz": window,
            "lowres_factors": list(factors),
        }
        | {k: v for k, v in asdict(model).items() if k != "phase_convention"}
        | {"phase_convention": model.phase_convention},
    )


def _parabola_offset(q: NDArray[np.float32], i: NDArray[np.intp]) -> NDArray[np.float64]:
    """Vertex offset (steps, within +-0.5) of the parabola through q[i-1], q[i], q[i+1]."""
    rows = np.arange(q.shape[0])
    last = q.shape[1] - 1
    inner = (i > 0) & (i < last)
    im = np.clip(i - 1, 0, last)
    ip = np.clip(i + 1, 0, last)
    q0 = q[rows, i].astype(np.float64)
    qm = q[rows, im].astype(np.float64)
    qp = q[rows, ip].astype(np.float64)
    curv = qm - 2 * q0 + qp
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(inner & (curv < 0), 0.5 * (qm - qp) / curv, 0.0)
    return np.clip(np.nan_to_num(d), -0.5, 0.5)


def fit_dixon_magnitude_phase(
    magnitude: ArrayLike,
    phase: ArrayLike,
    echo_times_ms: ArrayLike,
    field_strength_t: float,
    *,
    phase_range: tuple[float, float] = (-np.pi, np.pi),
    mask: ArrayLike | None = None,
    model: DixonModel | None = None,
) -> DixonResult:
    """Dixon fit from magnitude and phase images (e.g. Siemens 3-point Dixon, phase 0-4095).

    Parameters
    ----------
    magnitude, phase : array_like, shape S + (E,)
        Magnitude and phase echo images (echo axis last).
    echo_times_ms : array_like, shape (E,)
        Echo times in ms.
    field_strength_t : float
        Main field in tesla.
    phase_range : (float, float)
        Stored values mapped linearly onto [-pi, pi): ``(-pi, pi)`` for radians, ``(0, 4096)``
        for Siemens 12-bit phase images.
    """
    mag = np.asarray(magnitude, dtype=np.float64)
    ph = np.asarray(phase, dtype=np.float64)
    if mag.shape != ph.shape:
        raise ShapeMismatchError(f"magnitude {mag.shape} and phase {ph.shape} shapes differ")
    lo, hi = phase_range
    if not hi > lo:
        raise ModelParameterError("phase_range must be increasing")
    radians = (ph - lo) / (hi - lo) * 2.0 * np.pi - np.pi
    return fit_dixon_complex(
        mag * np.exp(1j * radians), echo_times_ms, field_strength_t, mask=mask, model=model
    )


def estimate_background_noise(image: ArrayLike, *, fraction: float = 0.05) -> float:
    """Noise standard deviation (per complex channel) from the background of a magnitude image.

    Background = voxels below ``fraction`` of the 99th percentile; for Rayleigh-distributed
    background magnitude M, sigma = sqrt(mean(M^2) / 2).
    """
    x = np.asarray(image, dtype=np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        raise InputDataError("image has no finite voxels")
    bg = finite[finite < fraction * np.percentile(finite, 99)]
    if bg.size < 50:
        raise InputDataError("too few background voxels to estimate the noise; pass noise_sigma")
    return float(np.sqrt(np.mean(bg**2) / 2.0))


def _rayleigh_mode_sigma(
    w: NDArray[np.float64], f: NDArray[np.float64], total: NDArray[np.float64]
) -> float:
    """Noise sigma as the mode of W and F magnitudes in low-signal voxels (Rayleigh mode = sigma).

    Thresholding the background by intensity would truncate its distribution; the mode is
    insensitive to that and to the few tissue voxels that fall below the threshold.
    """
    finite = np.isfinite(total)
    if not finite.any():
        raise InputDataError("water/fat images have no finite voxels")
    low = finite & (total < 0.2 * np.percentile(total[finite], 99))
    values = np.concatenate([w[low], f[low]])
    if values.size < 100:
        raise InputDataError("too few background voxels to estimate the noise; pass noise_sigma")
    top = float(np.percentile(values, 90))
    if top <= 0:
        return 0.0
    hist, edges = np.histogram(values, bins=64, range=(0.0, top))
    hist = ndimage.uniform_filter1d(hist.astype(np.float64), 3)
    k = int(np.argmax(hist[1:])) + 1  # bin 0 holds exact zeros of clipped/masked images
    return float(0.5 * (edges[k] + edges[k + 1]))


def ff_from_water_fat(
    water: ArrayLike,
    fat: ArrayLike,
    *,
    noise_sigma: float | None = None,
    mask: ArrayLike | None = None,
) -> NDArray[np.float32]:
    """Fat fraction (%) from vendor water and fat magnitude images, corrected for noise bias.

    Magnitude images carry a Rician noise floor, so a plain ``F / (W + F)`` never reaches 0 % in
    lean muscle (nor 100 % in pure fat). Each image is first debiased with
    ``A = sqrt(max(M^2 - sigma^2, 0))`` (Gudbjartsson & Patz, MRM 1995;34:910: unbiased for
    A >= 2 sigma, and far less biased than M below), then ``FF = 100 F / (W + F)``.

    Parameters
    ----------
    water, fat : array_like, shape S
        Vendor water and fat magnitude images (same scale).
    noise_sigma : float, optional
        Noise standard deviation per complex channel; estimated as the Rayleigh mode of W and F
        in low-signal voxels when omitted (pass 0 to disable the correction).
    mask : array_like of bool, shape S, optional
        Voxels to compute (default: W + F above 5 % of its 99th percentile and debiased W + F
        above 5 sigma); NaN elsewhere.

    Returns
    -------
    ndarray of float32, shape S
        FF in percent, clipped to [0, 100].
    """
    w = np.asarray(water, dtype=np.float64)
    f = np.asarray(fat, dtype=np.float64)
    if w.shape != f.shape:
        raise ShapeMismatchError(f"water {w.shape} and fat {f.shape} shapes differ")
    total = w + f
    if noise_sigma is None:
        noise_sigma = _rayleigh_mode_sigma(w, f, total)
    bias = float(noise_sigma) ** 2
    wc = np.sqrt(np.clip(w**2 - bias, 0, None))
    fc = np.sqrt(np.clip(f**2 - bias, 0, None))
    if mask is None:
        finite = np.isfinite(total)
        m = finite & (total > 0.05 * np.percentile(total[finite], 99))
        m &= wc + fc > 5.0 * float(noise_sigma)
    else:
        m = np.asarray(mask, dtype=bool)
        if m.shape != w.shape:
            raise ShapeMismatchError(f"mask shape {m.shape} != image shape {w.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        ff = np.where(wc + fc > 0, 100.0 * fc / (wc + fc), np.nan)
    out = np.full(w.shape, np.nan, dtype=F32)
    out[m] = np.clip(ff[m], 0, 100)
    return out
