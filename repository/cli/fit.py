"""``myovault fit t2|dixon INPUT -o OUT_DIR``: qMRI maps from ORMIR-MIDS input."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from qmri.errors import QmriError
from qmri.run import DixonOptions, T2Options, run_dixon_fit, run_t2_fit

_INPUT = click.Path(exists=True, dir_okay=False, path_type=Path)
_OUT = click.Path(file_okay=False, path_type=Path)


def _report(paths: list[Path]) -> None:
    for p in paths:
        click.echo(f"wrote  {p}")


@click.group("fit")
def fit() -> None:
    """Fit quantitative maps (water T2, fat fraction, B0, R2*, B1)."""


@fit.command("t2")
@click.argument("mese", type=_INPUT)
@click.option("-o", "--out-dir", type=_OUT, required=True, help="Directory for the maps.")
@click.option(
    "--fat-t2-ms",
    type=click.FloatRange(min=1.0),
    default=151.0,
    show_default=True,
    help="Fixed T2 of the fat component.",
)
@click.option(
    "--calibrate-fat-t2",
    is_flag=True,
    help="Calibrate the fat T2 from voxels with FF > 90 % (subcutaneous fat).",
)
@click.option("--t1-water-ms", type=click.FloatRange(min=1.0), default=1400.0, show_default=True)
@click.option("--t1-fat-ms", type=click.FloatRange(min=1.0), default=365.0, show_default=True)
@click.option(
    "--refocusing-angle-deg",
    type=click.FloatRange(min=1.0, max=360.0),
    default=None,
    help="Nominal refocusing angle (default: RefocusingFlipAngle from the sidecar, else 180).",
)
@click.option(
    "--b1-smoothing-mm",
    type=click.FloatRange(min=0.0),
    default=10.0,
    show_default=True,
    help="Gaussian width regularising B1 (0: voxel-wise B1).",
)
def t2_command(
    mese: Path,
    out_dir: Path,
    fat_t2_ms: float,
    calibrate_fat_t2: bool,
    t1_water_ms: float,
    t1_fat_ms: float,
    refocusing_angle_deg: float | None,
    b1_smoothing_mm: float,
) -> None:
    """Water T2 (ms), FF (%), B1 and goodness of fit from a multi-echo spin echo MESE."""
    options = T2Options(
        fat_t2_ms=fat_t2_ms,
        calibrate_fat_t2=calibrate_fat_t2,
        t1_water_ms=t1_water_ms,
        t1_fat_ms=t1_fat_ms,
        refocusing_angle_deg=refocusing_angle_deg,
        b1_smoothing_mm=b1_smoothing_mm,
    )
    try:
        paths = run_t2_fit(mese, out_dir, options)
    except QmriError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    _report(paths)


@fit.command("dixon")
@click.argument("image", type=_INPUT)
@click.option("-o", "--out-dir", type=_OUT, required=True, help="Directory for the maps.")
@click.option(
    "--field-strength-t",
    type=click.FloatRange(min=0.01),
    default=None,
    help="Override MagneticFieldStrength from the sidecar.",
)
@click.option(
    "--phase-range",
    type=(float, float),
    default=None,
    help="Stored phase range mapped onto [-pi, pi), e.g. 0 4096.",
)
@click.option(
    "--phase-convention",
    type=click.Choice(["auto", "standard", "conjugate"]),
    default="auto",
    show_default=True,
)
@click.option(
    "--r2star/--no-r2star",
    "fit_r2star",
    default=None,
    help="Fit R2* (default: when there are >= 3 echoes).",
)
@click.option(
    "--allow-ill-conditioned",
    is_flag=True,
    help="Write FF/water/fat even when the echo times cannot separate water from fat.",
)
def dixon_command(
    image: Path,
    out_dir: Path,
    field_strength_t: float | None,
    phase_range: tuple[float, float] | None,
    phase_convention: str,
    fit_r2star: bool | None,
    allow_ill_conditioned: bool,
) -> None:
    """FF (%), water, fat, B0 (Hz), R2* (1/s) from a MEGRE (complex parts) or vendor Dixon.

    IMAGE is the MEGRE magnitude (or any of its _part-real/_part-imag/_part-phase files), or a
    _part-water_DIXON / _part-fat_DIXON image.

    Echo times that cannot separate water from fat (e.g. a dual-echo B0-mapping protocol with
    fat nearly in phase at both echoes) give only the B0 and residual maps and exit status 2,
    unless --allow-ill-conditioned is given.
    """
    options = DixonOptions(
        field_strength_t=field_strength_t,
        phase_range=phase_range,
        phase_convention=phase_convention,  # type: ignore[arg-type]
        fit_r2star=fit_r2star,
        allow_ill_conditioned=allow_ill_conditioned,
    )
    try:
        paths = run_dixon_fit(
            image, out_dir, options, warn=lambda msg: click.echo(f"warning: {msg}", err=True)
        )
    except QmriError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    _report(paths)
    if not any(p.name.endswith("_FF.nii.gz") for p in paths):
        click.echo("refused: no fat-fraction map for these echo times (see warning)", err=True)
        sys.exit(2)
