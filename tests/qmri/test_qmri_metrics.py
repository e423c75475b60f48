"""Per-muscle metrics and QC flags against naive references."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from qmri.metrics import (
    TSV_COLUMNS,
    QCThresholds,
    compute_muscle_metrics,
    qc_flags,
    to_long_records,
    write_metrics_tsv,
)


def _naive_erode(mask: np.ndarray) -> np.ndarray:
    """In-plane 4-neighbour erosion by loops (outside the volume counts as background)."""
    out = np.zeros_like(mask)
    nx, ny, nz = mask.shape
    for x in range(nx):
        for y in range(ny):
            for z in range(nz):
                if not mask[x, y, z]:
                    continue
                ok = True
                for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    xx, yy = x + dx, y + dy
                    if not (0 <= xx < nx and 0 <= yy < ny) or not mask[xx, yy, z]:
                        ok = False
                out[x, y, z] = ok
    return out


@pytest.fixture
def volume() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.zeros((24, 20, 5), dtype=np.uint8)
    labels[2:10, 3:15, 0:4] = 7  # right vastus lateralis
    labels[14:22, 4:12, 1:5] = 18  # left vastus lateralis (7 + 11)
    labels[12:14, 16:19, 2] = 10  # tiny right gracilis
    ff = rng.uniform(0, 40, labels.shape)
    ff[3, 5, 1] = np.nan  # an unmeasured voxel
    t2 = rng.uniform(28, 45, labels.shape)
    return {"labels": labels, "ff": ff, "t2": t2}


def test_metrics_match_naive_reference(volume: dict[str, np.ndarray]) -> None:
    spacing = (1.5, 1.5, 6.0)
    rows = compute_muscle_metrics(
        volume["labels"], spacing, ff_percent=volume["ff"], t2_water_ms=volume["t2"]
    )
    assert [r.label for r in rows] == [7, 10, 18]
    for row in rows:
        mask = volume["labels"] == row.label
        eroded = _naive_erode(mask)
        ff = volume["ff"][eroded]
        ff = ff[np.isfinite(ff)]
        t2 = volume["t2"][eroded]
        assert row.n_voxels == mask.sum()
        assert row.volume_ml == pytest.approx(mask.sum() * 1.5 * 1.5 * 6.0 / 1000)
        assert row.max_csa_cm2 == pytest.approx(max(mask[:, :, z].sum() for z in range(5)) * 0.0225)
        assert row.n_voxels_eroded == eroded.sum()
        if ff.size:
            assert row.ff_mean_pct == pytest.approx(ff.mean())
            assert row.ff_median_pct == pytest.approx(np.median(ff))
            q = np.percentile(ff, [25, 75])
            assert row.ff_iqr_pct == pytest.approx(q[1] - q[0])
            assert row.t2_water_mean_ms == pytest.approx(t2.mean())
        else:
            assert math.isnan(row.ff_mean_pct)
        # profile: proximal (high z) first
        expected = []
        for z in range(4, -1, -1):
            v = volume["ff"][:, :, z][eroded[:, :, z]]
            v = v[np.isfinite(v)]
            expected.append(v.mean() if v.size else np.nan)
        np.testing.assert_allclose(row.ff_profile_pct, expected, equal_nan=True)
    names = {r.label: (r.side, r.muscle) for r in rows}
    assert names[7] == ("right", "vastus_lateralis")
    assert names[18] == ("left", "vastus_lateralis")


def test_erosion_zero_uses_all_voxels(volume: dict[str, np.ndarray]) -> None:
    rows = compute_muscle_metrics(
        volume["labels"], (1, 1, 1), ff_percent=volume["ff"], erosion_voxels=0
    )
    row = next(r for r in rows if r.label == 10)
    assert row.n_voxels_eroded == row.n_voxels == 6
    assert math.isnan(row.t2_water_mean_ms)  # no T2 map given


def test_input_validation(volume: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="shape"):
        compute_muscle_metrics(volume["labels"], (1, 1, 1), ff_percent=np.zeros((2, 2, 2)))
    with pytest.raises(ValueError):
        compute_muscle_metrics(volume["labels"], (1, 1))
    with pytest.raises(ValueError):
        compute_muscle_metrics(volume["labels"], (1, 1, 1), erosion_voxels=-1)


def test_tsv_round_trip(volume: dict[str, np.ndarray], tmp_path: Path) -> None:
    rows = compute_muscle_metrics(
        volume["labels"], (1, 1, 1), ff_percent=volume["ff"], model_version="m@1"
    )
    path = write_metrics_tsv(rows, tmp_path / "sub-01_metrics.tsv")
    with path.open(encoding="utf-8") as handle:
        table = list(csv.DictReader(handle, delimiter="\t"))
    assert tuple(table[0]) == TSV_COLUMNS
    assert [int(r["label"]) for r in table] == [7, 10, 18]
    assert table[0]["model_version"] == "m@1"
    assert table[0]["t2_water_mean_ms"] == "n/a"
    assert float(table[0]["ff_mean_pct"]) == pytest.approx(rows[0].ff_mean_pct, rel=1e-3)


def test_qc_flags_each_code(volume: dict[str, np.ndarray]) -> None:
    labels = volume["labels"].copy()
    t2 = volume["t2"].copy()
    t2[labels == 18] = 95.0  # implausible water T2 on the left
    rows = compute_muscle_metrics(labels, (2, 2, 10), ff_percent=volume["ff"], t2_water_ms=t2)
    flags = qc_flags(
        rows,
        confidence={7: 0.95, 10: 0.5, 18: 0.9},
        thresholds=QCThresholds(min_volume_ml=1.0, max_lr_volume_ratio=1.2),
    )
    codes = {(f.label, f.code) for f in flags}
    assert (18, "t2_out_of_range") in codes
    assert (10, "low_confidence") in codes
    assert (10, "volume_implausible") in codes  # 6 voxels * 40 uL = 0.24 mL
    assert (10, "few_voxels_after_erosion") in codes
    assert (18, "lr_volume_ratio") in codes  # left VL is smaller (256 vs 384 voxels)
    assert (7, "low_confidence") not in codes
    assert not any(f.code == "ff_out_of_range" for f in flags)


def test_qc_ff_out_of_range() -> None:
    labels = np.zeros((8, 8, 2), dtype=np.uint8)
    labels[1:7, 1:7] = 5
    ff = np.full(labels.shape, 130.0)
    rows = compute_muscle_metrics(labels, (10, 10, 10), ff_percent=ff)
    assert [f.code for f in qc_flags(rows)] == ["ff_out_of_range"]


def test_long_records_for_the_database(volume: dict[str, np.ndarray]) -> None:
    rows = compute_muscle_metrics(volume["labels"], (1, 1, 1), ff_percent=volume["ff"])
    records = to_long_records(rows)
    vl = {r["metric"]: r for r in records if r["label"] == 7}
    assert vl["volume_ml"]["unit"] == "mL" and vl["volume_ml"]["side"] == "right"
    assert vl["ff_mean_pct"]["value"] == pytest.approx(rows[0].ff_mean_pct)
    assert "t2_water_mean_ms" not in vl  # NaN (no T2 map) is left out
