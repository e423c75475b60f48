"""File-level fitting: read an ORMIR-MIDS input, fit, write ``mr-quant`` maps.

The one entry point per protocol that the CLI (``myovault fit t2|dixon``) and the pipeline task
both call. Each returns the written NIfTI paths; progress callbacks receive fractions in [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from qmri.dixon import DixonModel, ff_from_water_fat, fit_dixon_complex, ill_conditioned_note
from qmri.errors import InputDataError
from qmri.io import (
    is_vendor_dixon,
    output_stem,
    read_megre,
    read_mese,
    read_vendor_dixon,
    voxel_size_mm,
    write_map,
)
from qmri.t2_fit import WaterT2Model, calibrate_fat_t2_ms, fit_mono_t2, fit_water_t2

__all__ = ["T2Options", "DixonOptions", "run_t2_fit", "run_dixon_fit", "signal_mask"]

Progress = Callable[[float], None]


@dataclass(frozen=True)
class T2Options:
    """Options of :func:`run_t2_fit` (defaults: 3 T skeletal muscle).

    ``refocusing_angle_deg=None`` takes ``RefocusingFlipAngle`` from the sidecar (180 if absent).
    """

    fat_t2_ms: float = 151.0
    calibrate_fat_t2: bool = False
    t1_water_ms: float = 1400.0
    t1_fat_ms: float = 365.0
    refocusing_angle_deg: float | None = None
    excitation_angle_deg: float = 90.0
    b1_smoothing_mm: float = 10.0
    mask_threshold_fraction: float = 0.05


@dataclass(frozen=True)
class DixonOptions:
    """Options of :func:`run_dixon_fit`."""

    field_strength_t: float | None = None
    phase_range: tuple[float, float] | None = None
    phase_convention: Literal["standard", "conjugate", "auto"] = "auto"
    fit_r2star: bool | None = None
    mask_threshold_fraction: float = 0.05
    #: write FF / water / fat even when the echo times cannot separate water from fat
    allow_ill_conditioned: bool = False
    #: BIDS ``desc-`` entity for every complex-Dixon map (keeps MEGRE maps apart from a vendor
    #: Dixon's ``_FF`` of the same visit); ``None``: plain names, ``desc-dixon`` residual
    map_desc: str | None = None


def signal_mask(first_echo: NDArray[np.floating], fraction: float) -> NDArray[np.bool_]:
    """Voxels whose first-echo signal exceeds ``fraction`` of its 99th percentile."""
    finite = np.isfinite(first_echo)
    if not finite.any():
        raise InputDataError("image has no finite voxels")
    return finite & (first_echo > fraction * np.percentile(first_echo[finite], 99))


def run_t2_fit(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: T2Options | None = None,
    progress: Progress | None = None,
) -> list[Path]:
    """Fit a MESE series: water T2, B1, FF (bi-component EPG), mono-exponential T2, residual."""
    opt = options or T2Options()
    data = read_mese(path)
    echoes = data.echoes
    mask = signal_mask(echoes[..., 0], opt.mask_threshold_fraction)
    fat_t2 = opt.fat_t2_ms
    refocusing = opt.refocusing_angle_deg
    if refocusing is None:
        refocusing = float(data.sidecar.get("RefocusingFlipAngle") or 180.0)
    model = WaterT2Model(
        fat_t2_ms=fat_t2,
        t1_water_ms=opt.t1_water_ms,
        t1_fat_ms=opt.t1_fat_ms,
        refocusing_angle_deg=refocusing,
        excitation_angle_deg=opt.excitation_angle_deg,
    )
    sigma_vox: tuple[float, ...] | None = None
    if opt.b1_smoothing_mm > 0:
        sigma_vox = tuple(float(opt.b1_smoothing_mm / v) for v in voxel_size_mm(data.affine))
    calibrated = False
    if opt.calibrate_fat_t2:
        first = fit_water_t2(echoes, data.echo_times_ms, mask=mask, model=model)
        fat_mask = mask & (first.ff_percent > 90.0)
        if fat_mask.sum() >= 50:
            fat_t2 = calibrate_fat_t2_ms(
                echoes,
                data.echo_times_ms,
                fat_mask,
                t1_fat_ms=opt.t1_fat_ms,
                refocusing_angle_deg=refocusing,
                excitation_angle_deg=opt.excitation_angle_deg,
            )
            model = replace(model, fat_t2_ms=fat_t2)
            calibrated = True
    res = fit_water_t2(
        echoes,
        data.echo_times_ms,
        mask=mask,
        model=model,
        b1_smoothing_sigma_vox=sigma_vox,
        progress=None if progress is None else (lambda f: progress(0.9 * f)),
    )
    mono = fit_mono_t2(echoes, data.echo_times_ms, mask=mask)
    params = res.parameters | {
        "fat_t2_calibrated": calibrated,
        "b1_smoothing_mm": opt.b1_smoothing_mm,
        "mask_threshold_fraction": opt.mask_threshold_fraction,
    }
    method = str(res.parameters["method"])
    stem = output_stem(path)

    def put(
        suffix: str,
        values: NDArray[np.floating[Any]],
        units: str,
        description: str,
        desc: str | None = None,
        fit_method: str = method,
        parameters: dict[str, Any] = params,
    ) -> Path:
        return write_map(
            out_dir,
            stem,
            suffix,
            values,
            data.affine,
            units=units,
            method=fit_method,
            parameters=parameters,
            sources=data.sources,
            desc=desc,
            description=description,
        )

    written = [
        put("T2", res.water_t2_ms, "ms", "water T2"),
        put("B1", res.b1, "relative", "relative B1 (flip angle / nominal)"),
        put("FF", res.ff_percent, "%", "fat fraction from MESE", desc="mese"),
        put(
            "RESIDUAL",
            res.relative_residual,
            "relative",
            "goodness of fit: |data - model| / |data|",
            desc="t2fit",
        ),
        put(
            "T2",
            mono.t2_ms,
            "ms",
            "mono-exponential T2 (comparison only)",
            desc="monoexp",
            fit_method=str(mono.parameters["method"]),
            parameters=mono.parameters,
        ),
    ]
    if progress is not None:
        progress(1.0)
    return written


def run_dixon_fit(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: DixonOptions | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[Path]:
    """Fit a Dixon acquisition: complex MEGRE (real/imag or mag/phase) or vendor water/fat.

    ``warn`` receives human-readable warnings (e.g. ill-conditioned echo times); the same facts
    are recorded in every sidecar's ``ModelParameters``.
    """
    opt = options or DixonOptions()
    stem = output_stem(path)
    if is_vendor_dixon(path):
        vd = read_vendor_dixon(path)
        ff = ff_from_water_fat(vd.water, vd.fat)
        params = {"noise_bias_correction": "sqrt(max(M^2 - sigma^2, 0)), sigma from background"}
        method = "FF from vendor water/fat magnitude images, Rician-bias corrected"
        out = [
            write_map(
                out_dir,
                stem,
                "FF",
                ff,
                vd.affine,
                units="%",
                method=method,
                parameters=params,
                sources=vd.sources,
                description="fat fraction",
            ),
        ]
        if progress is not None:
            progress(1.0)
        return out
    data = read_megre(path, phase_range=opt.phase_range)
    field = opt.field_strength_t or data.field_strength_t
    model = DixonModel(
        fit_r2star=opt.fit_r2star,
        phase_convention=opt.phase_convention,
        mask_threshold_fraction=opt.mask_threshold_fraction,
    )
    res = fit_dixon_complex(data.signal, data.echo_times_ms, field, model=model, progress=progress)
    params = dict(res.parameters)
    refuse = not params["well_conditioned"] and not opt.allow_ill_conditioned
    if not params["well_conditioned"]:
        params["ff_reliability"] = ill_conditioned_note(data.echo_times_ms, field, refused=refuse)
        if warn is not None:
            warn(params["ff_reliability"])
    method = str(params["method"])

    def put(
        suffix: str,
        values: NDArray[np.floating[Any]],
        units: str,
        description: str,
        desc: str | None = None,
    ) -> Path:
        return write_map(
            out_dir,
            stem,
            suffix,
            values,
            data.affine,
            units=units,
            method=method,
            parameters=params,
            sources=data.sources,
            desc=opt.map_desc or desc,
            description=description,
        )

    b0_note = "off-resonance relative to water"
    if not params["well_conditioned"]:
        b0_note += (
            f" (water/fat ambiguity: uncertain by up to "
            f"{params['b0_composition_uncertainty_hz']:.0f} Hz where fat and water mix)"
        )
    if refuse:
        written = [
            put("B0", res.b0_hz, "Hz", b0_note),
            put(
                "RESIDUAL",
                res.relative_residual,
                "relative",
                "goodness of fit: |data - model| / |data|",
                desc="dixon",
            ),
        ]
        if progress is not None:
            progress(1.0)
        return written
    written = [
        put("FF", res.ff_percent, "%", "proton-density fat fraction"),
        put("WATER", res.water, "a.u.", "water signal (proton density weighted)"),
        put("FAT", res.fat, "a.u.", "fat signal (proton density weighted)"),
        put("B0", res.b0_hz, "Hz", b0_note),
        put(
            "RESIDUAL",
            res.relative_residual,
            "relative",
            "goodness of fit: |data - model| / |data|",
            desc="dixon",
        ),
    ]
    if res.parameters["r2star_fitted"]:
        written.append(put("R2STAR", res.r2star_per_s, "1/s", "R2* (common to water and fat)"))
    return written
