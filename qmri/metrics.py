"""Per-muscle, per-side metrics from a label map and quantitative maps (pure functions).

For each output label (muscle x side, see :mod:`qmri.segmentation.labels`):

* ``n_voxels`` and ``volume_ml`` of the whole label;
* ``max_csa_cm2``: the largest cross-sectional area over the axial slices (whole label);
* after an in-plane erosion of ``erosion_voxels`` (default 1, against partial volume with
  fascia and subcutaneous fat): ``n_voxels_eroded`` and mean / median / inter-quartile range of
  the fat fraction (percent) and of the water T2 (ms), ignoring NaN voxels of the maps;
* ``ff_profile_pct``: mean FF of each axial slice of the eroded label from proximal to distal
  (NaN where the slice holds no eroded voxel).

Erosion is in-plane (slice by slice) because muscle MRI is usually acquired with slices much
thicker than the pixels; a 3D erosion would discard the end slices entirely.

QC (:func:`qc_flags`) flags implausible volumes, FF / T2 outside physiological ranges, large
left/right volume ratios, low segmentation confidence and muscles that vanish under erosion.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from qmri.segmentation.labels import N_OUTPUT_LABELS, label_names, muscle_and_side

__all__ = [
    "MuscleMetrics",
    "QCThresholds",
    "QCFlag",
    "compute_muscle_metrics",
    "qc_flags",
    "write_metrics_tsv",
    "TSV_COLUMNS",
    "METRIC_UNITS",
    "to_long_records",
]

_NAN = float("nan")


@dataclass(frozen=True)
class MuscleMetrics:
    """Metrics of one muscle on one side (one row of the TSV / database)."""

    label: int
    muscle: str
    side: str
    n_voxels: int
    volume_ml: float
    max_csa_cm2: float
    n_voxels_eroded: int
    ff_mean_pct: float
    ff_median_pct: float
    ff_iqr_pct: float
    t2_water_mean_ms: float
    t2_water_median_ms: float
    t2_water_iqr_ms: float
    ff_profile_pct: tuple[float, ...]
    erosion_voxels: int
    model_version: str | None = None


TSV_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(MuscleMetrics))


def _stats(values: NDArray[np.float64]) -> tuple[float, float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return _NAN, _NAN, _NAN
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return float(v.mean()), float(q50), float(q75 - q25)


def _erode_inplane(mask: NDArray[np.bool_], iterations: int) -> NDArray[np.bool_]:
    if iterations <= 0:
        return mask
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1, :, 1] = True
    structure[:, 1, 1] = True
    return np.asarray(
        ndimage.binary_erosion(mask, structure=structure, iterations=iterations, border_value=0)
    )


def compute_muscle_metrics(
    labels: NDArray[np.integer],
    spacing_mm: Sequence[float],
    *,
    ff_percent: NDArray[np.floating] | None = None,
    t2_water_ms: NDArray[np.floating] | None = None,
    erosion_voxels: int = 1,
    proximal_is_high_index: bool = True,
    model_version: str | None = None,
    names: Mapping[int, str] | None = None,
) -> list[MuscleMetrics]:
    """Metrics of every output label present in ``labels``.

    Parameters
    ----------
    labels : ndarray of int, shape (x, y, z)
        Output labels 0..22 (axial slices along axis 2).
    spacing_mm : sequence of 3 float
        Voxel size (mm) along x, y, z.
    ff_percent : ndarray, shape (x, y, z), optional
        Proton-density fat fraction in percent (NaN = not measured).
    t2_water_ms : ndarray, shape (x, y, z), optional
        Water T2 in ms (NaN = not measured).
    erosion_voxels : int
        In-plane erosion (voxels) before FF / T2 statistics; 0 disables it.
    proximal_is_high_index : bool
        Whether higher slice indices are proximal (true on RAS axes); sets the order of
        ``ff_profile_pct`` (always proximal first).
    model_version : str, optional
        Recorded in every row (``"<model name>@<version>"``).
    names : mapping, optional
        Label names; the default is :func:`qmri.segmentation.labels.label_names`.

    Returns
    -------
    list of MuscleMetrics
        Sorted by label; labels absent from ``labels`` give no row.
    """
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"labels must be (x, y, z), got shape {lab.shape}")
    if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
        raise ValueError(f"spacing_mm must be 3 positive numbers, got {spacing_mm}")
    for name, arr in (("ff_percent", ff_percent), ("t2_water_ms", t2_water_ms)):
        if arr is not None and np.shape(arr) != lab.shape:
            raise ValueError(f"{name} shape {np.shape(arr)} != labels shape {lab.shape}")
    if erosion_voxels < 0:
        raise ValueError("erosion_voxels must be >= 0")
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    pixel_cm2 = float(spacing_mm[0] * spacing_mm[1]) / 100.0
    ff = None if ff_percent is None else np.asarray(ff_percent, dtype=np.float64)
    t2 = None if t2_water_ms is None else np.asarray(t2_water_ms, dtype=np.float64)
    label_name = dict(names) if names is not None else label_names()
    rows = []
    for k in range(1, N_OUTPUT_LABELS + 1):
        mask = lab == k
        n = int(mask.sum())
        if n == 0:
            continue
        _, side = muscle_and_side(k)
        eroded = _erode_inplane(mask, erosion_voxels)
        ff_vals = ff[eroded] if ff is not None else np.empty(0)
        t2_vals = t2[eroded] if t2 is not None else np.empty(0)
        ff_stats = _stats(ff_vals)
        t2_stats = _stats(t2_vals)
        per_slice = mask.sum(axis=(0, 1))
        profile: list[float] = []
        if ff is not None:
            ff_in = np.where(eroded, ff, np.nan)
            counts = np.sum(eroded & np.isfinite(ff), axis=(0, 1))
            sums = np.nansum(ff_in, axis=(0, 1))
            profile = [float(s / c) if c else _NAN for s, c in zip(sums, counts, strict=True)]
            if proximal_is_high_index:
                profile = profile[::-1]
        full_name = label_name.get(k, f"label_{k}")
        rows.append(
            MuscleMetrics(
                label=k,
                muscle=full_name.removeprefix(f"{side}_"),
                side=side,
                n_voxels=n,
                volume_ml=n * voxel_ml,
                max_csa_cm2=float(per_slice.max()) * pixel_cm2,
                n_voxels_eroded=int(eroded.sum()),
                ff_mean_pct=ff_stats[0],
                ff_median_pct=ff_stats[1],
                ff_iqr_pct=ff_stats[2],
                t2_water_mean_ms=t2_stats[0],
                t2_water_median_ms=t2_stats[1],
                t2_water_iqr_ms=t2_stats[2],
                ff_profile_pct=tuple(profile),
                erosion_voxels=erosion_voxels,
                model_version=model_version,
            )
        )
    return rows


#: Unit of every scalar metric in the long (database) form; closed vocabulary.
METRIC_UNITS: dict[str, str] = {
    "n_voxels": "voxel",
    "volume_ml": "mL",
    "max_csa_cm2": "cm2",
    "n_voxels_eroded": "voxel",
    "ff_mean_pct": "%",
    "ff_median_pct": "%",
    "ff_iqr_pct": "%",
    "t2_water_mean_ms": "ms",
    "t2_water_median_ms": "ms",
    "t2_water_iqr_ms": "ms",
}


def to_long_records(rows: Sequence[MuscleMetrics]) -> list[dict[str, object]]:
    """One record per (muscle, side, metric) for the indexed ``MuscleMetric`` table.

    Each record: ``muscle``, ``side``, ``label``, ``metric`` (a key of :data:`METRIC_UNITS`),
    ``value`` (float, NaN metrics are left out), ``unit``, ``erosion_voxels`` and
    ``model_version``. The FF profile is not a scalar and stays in the TSV.
    """
    records: list[dict[str, object]] = []
    for row in rows:
        for metric, unit in METRIC_UNITS.items():
            value = float(getattr(row, metric))
            if math.isnan(value):
                continue
            records.append(
                {
                    "muscle": row.muscle,
                    "side": row.side,
                    "label": row.label,
                    "metric": metric,
                    "value": value,
                    "unit": unit,
                    "erosion_voxels": row.erosion_voxels,
                    "model_version": row.model_version,
                }
            )
    return records


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, tuple):
        return ",".join(_fmt(v) for v in value) if value else "n/a"
    return str(value)


def write_metrics_tsv(rows: Sequence[MuscleMetrics], path: Path) -> Path:
    """Write rows as a BIDS-style TSV (``n/a`` for missing, profile comma-separated)."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(TSV_COLUMNS)
        for row in rows:
            writer.writerow([_fmt(getattr(row, c)) for c in TSV_COLUMNS])
    return path


@dataclass(frozen=True)
class QCThresholds:
    """Limits of :func:`qc_flags` (defaults for adult thigh muscle at 1.5-3 T)."""

    min_volume_ml: float = 1.0
    max_volume_ml: float = 2500.0
    ff_range_pct: tuple[float, float] = (0.0, 100.0)
    t2_water_range_ms: tuple[float, float] = (20.0, 80.0)
    max_lr_volume_ratio: float = 1.5
    min_confidence: float = 0.8
    min_eroded_voxels: int = 10


@dataclass(frozen=True)
class QCFlag:
    """One QC finding."""

    label: int
    muscle: str
    side: str
    code: str
    value: float
    limit: str
    message: str


def qc_flags(
    rows: Sequence[MuscleMetrics],
    *,
    confidence: Mapping[int, float] | None = None,
    thresholds: QCThresholds | None = None,
) -> list[QCFlag]:
    """Quality-control flags of one segmentation.

    Codes: ``volume_implausible``, ``ff_out_of_range``, ``t2_out_of_range``,
    ``lr_volume_ratio`` (flagged on the smaller side), ``low_confidence``,
    ``few_voxels_after_erosion``.
    """
    t = thresholds or QCThresholds()
    flags: list[QCFlag] = []

    def add(row: MuscleMetrics, code: str, value: float, limit: str, message: str) -> None:
        flags.append(QCFlag(row.label, row.muscle, row.side, code, value, limit, message))

    by_label = {r.label: r for r in rows}
    for r in rows:
        if not t.min_volume_ml <= r.volume_ml <= t.max_volume_ml:
            add(
                r,
                "volume_implausible",
                r.volume_ml,
                f"[{t.min_volume_ml}, {t.max_volume_ml}] mL",
                f"{r.side} {r.muscle}: volume {r.volume_ml:.1f} mL",
            )
        lo, hi = t.ff_range_pct
        if not math.isnan(r.ff_mean_pct) and not lo <= r.ff_mean_pct <= hi:
            add(r, "ff_out_of_range", r.ff_mean_pct, f"[{lo}, {hi}] %", "mean FF implausible")
        lo, hi = t.t2_water_range_ms
        if not math.isnan(r.t2_water_mean_ms) and not lo <= r.t2_water_mean_ms <= hi:
            add(
                r,
                "t2_out_of_range",
                r.t2_water_mean_ms,
                f"[{lo}, {hi}] ms",
                f"{r.side} {r.muscle}: mean water T2 {r.t2_water_mean_ms:.1f} ms",
            )
        if r.n_voxels_eroded < t.min_eroded_voxels:
            add(
                r,
                "few_voxels_after_erosion",
                float(r.n_voxels_eroded),
                f">= {t.min_eroded_voxels}",
                f"{r.side} {r.muscle}: {r.n_voxels_eroded} voxels left after erosion",
            )
        if confidence is not None and r.label in confidence:
            c = float(confidence[r.label])
            if c < t.min_confidence:
                add(r, "low_confidence", c, f">= {t.min_confidence}", f"confidence {c:.2f}")
        if r.side == "right":
            other = by_label.get(r.label + N_OUTPUT_LABELS // 2)
            if other is not None:
                small, large = sorted((r, other), key=lambda x: x.volume_ml)
                ratio = large.volume_ml / max(small.volume_ml, 1e-9)
                if ratio > t.max_lr_volume_ratio:
                    add(
                        small,
                        "lr_volume_ratio",
                        ratio,
                        f"<= {t.max_lr_volume_ratio}",
                        f"{r.muscle}: {large.side} volume is {ratio:.2f}x the {small.side}",
                    )
    return flags
