"""Extended phase graph (EPG) simulation of CPMG multi-echo spin-echo trains.

Formalism of Weigel (J Magn Reson Imaging 2015;41:266-295): configuration states ``F+_k``,
``F-_k`` and ``Z_k`` (k = 0, 1, ...), rotated by the RF operator ``T(alpha, phi)``, relaxed
between pulses and shifted by one dephasing order per half echo spacing (the crusher/readout
gradient area between a refocusing pulse and the echo).

Sequence: excitation ``beta = B1 * excitation_angle`` about x (phase 0), then ``n_echoes``
refocusing pulses ``alpha = B1 * refocusing_angle`` about y (phase 90 deg, CPMG condition),
pulse n at ``(n - 1/2) * echo_spacing``, echo n at ``n * echo_spacing``. Longitudinal recovery to
equilibrium (``M0 = 1``) is included. The returned echo amplitude is ``|F+_0|`` at the echo,
i.e. a magnitude image; with perfect 90/180 pulses it equals ``exp(-TE/T2)`` exactly.

Slice-profile correction: the echo train is averaged over positions across the slice, each with
its own relative flip angle (``slice_profile``), as in Lebel & Wilman (MRM 2010;64:1005-1014).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from qmri.errors import ModelParameterError

__all__ = [
    "cpmg_echo_train",
    "sinc_slice_profile",
]


def _rotate(
    fp: NDArray[np.complex128],
    fm: NDArray[np.complex128],
    z: NDArray[np.complex128],
    angle_rad: NDArray[np.float64],
    phase_rad: float,
) -> tuple[NDArray[np.complex128], NDArray[np.complex128], NDArray[np.complex128]]:
    """Apply the RF operator T(angle, phase) of Weigel 2015 (eq. 15) to all states.

    ``angle_rad`` has shape (N,) and is broadcast over the state axis (N, K).
    """
    a = angle_rad[:, np.newaxis]
    c2 = np.cos(a / 2.0) ** 2
    s2 = np.sin(a / 2.0) ** 2
    sa = np.sin(a)
    ca = np.cos(a)
    e1 = np.exp(1j * phase_rad)
    e2 = e1 * e1
    new_fp = c2 * fp + (e2 * s2) * fm + (-1j * e1 * sa) * z
    new_fm = (np.conj(e2) * s2) * fp + c2 * fm + (1j * np.conj(e1) * sa) * z
    new_z = (-0.5j * np.conj(e1) * sa) * fp + (0.5j * e1 * sa) * fm + ca * z
    return new_fp, new_fm, new_z


def _relax(
    fp: NDArray[np.complex128],
    fm: NDArray[np.complex128],
    z: NDArray[np.complex128],
    e2: NDArray[np.float64],
    e1: NDArray[np.float64],
) -> None:
    """Relax in place over one interval: transverse by ``e2``, longitudinal by ``e1`` to M0 = 1."""
    fp *= e2[:, np.newaxis]
    fm *= e2[:, np.newaxis]
    z *= e1[:, np.newaxis]
    z[:, 0] += 1.0 - e1


def _shift(fp: NDArray[np.complex128], fm: NDArray[np.complex128]) -> None:
    """Dephase every transverse state by one order, in place (highest order is dropped)."""
    fp[:, 1:] = fp[:, :-1].copy()
    fm[:, :-1] = fm[:, 1:].copy()
    fm[:, -1] = 0.0
    fp[:, 0] = np.conj(fm[:, 0])


def _as_profile(
    slice_profile: ArrayLike | None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return (excitation, refocusing) relative flip-angle factors, each shape (P,)."""
    if slice_profile is None:
        one = np.ones(1)
        return one, one
    prof = np.asarray(slice_profile, dtype=np.float64)
    if prof.ndim == 1:
        prof = np.stack([prof, prof])
    if prof.ndim != 2 or prof.shape[0] != 2 or prof.shape[1] < 1:
        raise ModelParameterError(
            "slice_profile must have shape (P,) or (2, P) (excitation, refocusing); "
            f"got {prof.shape}"
        )
    if not np.all(np.isfinite(prof)) or np.any(prof < 0):
        raise ModelParameterError("slice_profile factors must be finite and non-negative")
    return prof[0], prof[1]


def cpmg_echo_train(
    t2_ms: ArrayLike,
    b1: ArrayLike,
    *,
    echo_spacing_ms: float,
    n_echoes: int,
    t1_ms: ArrayLike = 1400.0,
    refocusing_angle_deg: float = 180.0,
    excitation_angle_deg: float = 90.0,
    slice_profile: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """Simulate the echo amplitudes of a CPMG multi-echo spin-echo train with EPG.

    Parameters
    ----------
    t2_ms : array_like, shape S (broadcast with ``b1`` and ``t1_ms``)
        Transverse relaxation time in ms (> 0).
    b1 : array_like, shape S
        Relative transmit field: every nominal flip angle is multiplied by it (1 = nominal).
    echo_spacing_ms : float
        Echo spacing in ms; echo n is at ``n * echo_spacing_ms``.
    n_echoes : int
        Number of echoes (>= 1).
    t1_ms : array_like, shape S, default 1400
        Longitudinal relaxation time in ms (> 0).
    refocusing_angle_deg, excitation_angle_deg : float
        Nominal flip angles in degrees.
    slice_profile : array_like, shape (P,) or (2, P), optional
        Relative flip-angle factors at P positions across the slice (1 = nominal), the same for
        both pulses (shape (P,)) or separately for excitation (row 0) and refocusing (row 1). The
        echo train is the mean over positions. ``None`` models an ideal rectangular profile.

    Returns
    -------
    ndarray of float64, shape S + (n_echoes,)
        Echo magnitudes for unit proton density; ``exp(-TE/T2)`` for perfect 90/180 pulses.
    """
    if n_echoes < 1:
        raise ModelParameterError(f"n_echoes must be >= 1, got {n_echoes}")
    if not echo_spacing_ms > 0:
        raise ModelParameterError(f"echo_spacing_ms must be > 0, got {echo_spacing_ms}")
    t2, b1_arr, t1 = np.broadcast_arrays(
        np.asarray(t2_ms, dtype=np.float64),
        np.asarray(b1, dtype=np.float64),
        np.asarray(t1_ms, dtype=np.float64),
    )
    if np.any(~(t2 > 0)) or np.any(~(t1 > 0)):
        raise ModelParameterError("t2_ms and t1_ms must be > 0 (and not NaN)")
    if np.any(~np.isfinite(b1_arr)) or np.any(b1_arr < 0):
        raise ModelParameterError("b1 must be finite and >= 0")
    shape = t2.shape
    exc_prof, ref_prof = _as_profile(slice_profile)
    n_pos = exc_prof.size

    # Flatten (voxel, position) into one axis of length N.
    b1_flat = np.repeat(b1_arr.reshape(-1), n_pos)
    e2 = np.repeat(np.exp(-0.5 * echo_spacing_ms / t2.reshape(-1)), n_pos)
    e1 = np.repeat(np.exp(-0.5 * echo_spacing_ms / t1.reshape(-1)), n_pos)
    n_vox = b1_flat.size // n_pos
    beta = np.deg2rad(excitation_angle_deg) * b1_flat * np.tile(exc_prof, n_vox)
    alpha = np.deg2rad(refocusing_angle_deg) * b1_flat * np.tile(ref_prof, n_vox)

    n = b1_flat.size
    n_states = n_echoes + 2  # orders above the remaining number of shifts never refocus
    fp = np.zeros((n, n_states), dtype=np.complex128)
    fm = np.zeros_like(fp)
    z = np.zeros_like(fp)
    z[:, 0] = 1.0
    fp, fm, z = _rotate(fp, fm, z, beta, 0.0)

    echoes = np.empty((n, n_echoes), dtype=np.float64)
    for i in range(n_echoes):
        _relax(fp, fm, z, e2, e1)
        _shift(fp, fm)
        fp, fm, z = _rotate(fp, fm, z, alpha, 0.5 * np.pi)
        _relax(fp, fm, z, e2, e1)
        _shift(fp, fm)
        echoes[:, i] = np.abs(fp[:, 0])
    return echoes.reshape(-1, n_pos, n_echoes).mean(axis=1).reshape(shape + (n_echoes,))


def sinc_slice_profile(
    n_positions: int = 32,
    *,
    time_bandwidth: float = 4.0,
    refocusing_width_ratio: float = 1.0,
    extent: float = 2.0,
) -> NDArray[np.float64]:
    """Approximate relative flip-angle profiles of Hann-windowed sinc pulses.

    Small-tip (Fourier) approximation: the profile is the Fourier transform of the pulse envelope,
    normalised to 1 at the slice centre. Positions cover ``[0, extent]`` slice half-widths (the
    profile is symmetric, so one half suffices for averaging). This is a generic stand-in for the
    vendor pulse; supply a Bloch-simulated profile to :func:`cpmg_echo_train` when known.

    Parameters
    ----------
    n_positions : int
        Number of positions P sampled across half the slice.
    time_bandwidth : float
        Time-bandwidth product of the pulses (sinc zero crossings = time_bandwidth).
    refocusing_width_ratio : float
        Refocusing slice width divided by excitation slice width (>1 for wider refocusing).
    extent : float
        Largest sampled position, in excitation slice half-widths.

    Returns
    -------
    ndarray, shape (2, P)
        Row 0 excitation, row 1 refocusing relative flip angles (in [0, ~1]).
    """
    if n_positions < 1 or time_bandwidth <= 0 or refocusing_width_ratio <= 0 or extent <= 0:
        raise ModelParameterError("invalid slice-profile parameters")
    n_t = 512
    t = np.linspace(-0.5, 0.5, n_t)
    envelope = np.sinc(time_bandwidth * t) * (0.5 + 0.5 * np.cos(2.0 * np.pi * t))
    x = (np.arange(n_positions) + 0.5) / n_positions * extent  # in half-widths

    def profile(width: float) -> NDArray[np.float64]:
        # Frequency offset of position x: slice half-width corresponds to time_bandwidth / 2.
        freq = x / width * time_bandwidth / 2.0
        kernel = np.cos(2.0 * np.pi * np.outer(freq, t))
        resp = kernel @ envelope
        return np.abs(resp) / float(envelope.sum())

    return np.stack([profile(1.0), profile(refocusing_width_ratio)])
