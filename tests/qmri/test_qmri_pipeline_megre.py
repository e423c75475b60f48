"""The pipeline's fit stage on complex multi-echo gradient echo (MEGRE) series.

A synthetic 6-echo 3 T MEGRE (magnitude + phase series, Siemens 12-bit phase) goes through the
whole pipeline (quarantine, de-identification, ORMIR-MIDS, fit): FF, water, fat, B0, R2* and
residual maps are stored as derivatives of the magnitude series and match the simulated truth.
The real GE dual-echo sample (a B0-mapping protocol) gets a B0 map only and a warning saying why.
"""

from __future__ import annotations

import gzip
import json
from datetime import date
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from flask import Flask
from sqlalchemy import select

from qmri.fat_spectrum import fat_signal
from repository.demo_cohort import FakePatient, _image, _save, _uid
from repository.models import Derivative, Job, JobStatus, Series, StoredObject
from repository.services.context import SYSTEM
from repository.services.pipeline import ingest_directory
from repository.services.pipeline_fit import plan_fits
from tests.app_fixtures import World

TE_MS = 1.2 + 1.0 * np.arange(6)
SHAPE = (24, 20, 2)


def _truth() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """FF (fraction), B0 (Hz), R2* (1/s) and the body mask on SHAPE."""
    x, y = np.meshgrid(np.linspace(-1, 1, SHAPE[0]), np.linspace(-1, 1, SHAPE[1]), indexing="ij")
    r = np.hypot(x, y)
    body2d = r < 0.95
    ff2d = np.where(r < 0.6, 0.05 + 0.3 * (x > 0.2), 0.92) * body2d
    b02d = 60.0 * x - 40.0 * y
    body = np.repeat(body2d[..., None], SHAPE[2], axis=2)
    ff = np.repeat(ff2d[..., None], SHAPE[2], axis=2)
    b0 = np.repeat(b02d[..., None], SHAPE[2], axis=2) + 10.0 * np.arange(SHAPE[2])
    r2 = np.where(ff > 0.5, 60.0, 35.0)
    return ff, b0, r2, body


def write_megre(root: Path) -> None:
    """Magnitude and phase series (classic MR, ImageType M / P, phase 0..4095) of one visit."""
    ff, b0, r2, body = _truth()
    rng = np.random.default_rng(3)
    rho = (1 - ff)[..., None] + ff[..., None] * fat_signal(TE_MS, 3.0)
    sig = (
        1500
        * body[..., None]
        * rho
        * np.exp((2j * np.pi * b0[..., None] - r2[..., None]) * TE_MS * 1e-3)
    )
    sig = sig * np.exp(0.4j)
    sig = sig + 6 * (rng.standard_normal(sig.shape) + 1j * rng.standard_normal(sig.shape))
    # Siemens stores the conjugate phase, 0..4095 for -pi..pi
    phase = np.round((-np.angle(sig) + np.pi) / (2 * np.pi) * 4096) % 4096
    patient = FakePatient("MEGRE01", "Grove^Ada", date(1970, 5, 6), "F", "healthy")
    study = _uid("megre-study")
    folder = root / "megre"
    folder.mkdir(parents=True)
    for number, (code, data) in enumerate((("M", np.abs(sig)), ("P", phase))):
        series = _uid(study, code)
        for e, te in enumerate(TE_MS):
            for z in range(SHAPE[2]):
                ds = _image(
                    data[:, :, z, e],
                    patient=patient,
                    study_uid=study,
                    series_uid=series,
                    sop_uid=_uid(series, e, z),
                    study_date=date(2024, 3, 4),
                    series_number=30 + number,
                    instance_number=e * SHAPE[2] + z + 1,
                    z_mm=5.0 * z,
                    spacing_mm=(2.0, 2.0, 5.0),
                    image_type=["ORIGINAL", "PRIMARY", code, "ND"],
                    scanning_sequence="GR",
                    echo_time_ms=float(te),
                    echo_number=e + 1,
                    repetition_time_ms=12.0,
                    description="gre_6echo_dixon",
                )
                _save(ds, folder / f"{code}_e{e}_z{z}.dcm")


def _maps(app: Flask) -> tuple[dict[str, np.ndarray], dict[str, dict], Job]:
    ext = app.extensions["myovault"]
    with ext.db.transaction() as s:
        job = s.scalar(select(Job).where(Job.kind == "pipeline.fit"))
        assert job is not None
        s.expunge(job)
        rows = s.execute(
            select(Derivative.kind, StoredObject.key, Series.contrast)
            .join(StoredObject, StoredObject.id == Derivative.object_id)
            .join(Series, Series.id == Derivative.series_id)
            .where(Derivative.software == "myovault-qmri")
        ).all()
    maps, sidecars = {}, {}
    for kind, key, contrast in rows:
        assert contrast == "MEGRE"  # attached to the magnitude series
        image = nib.Nifti1Image.from_bytes(gzip.decompress(ext.store.read_bytes(key)))
        maps[kind] = np.asanyarray(image.dataobj)
        sidecars[kind] = json.loads(ext.store.read_bytes(key.removesuffix(".nii.gz") + ".json"))
        assert "/mr-quant/" in key and "_desc-megre_" in key
    return maps, sidecars, job


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_pipeline_fits_synthetic_megre(app: Flask, world: World, tmp_path: Path) -> None:
    write_megre(tmp_path / "in")
    ext = app.extensions["myovault"]
    with app.app_context():
        out = ingest_directory(ext, SYSTEM, tmp_path / "in", "alpha")
    assert ("pipeline.fit", "done") in out["jobs"], out
    maps, sidecars, job = _maps(app)
    assert job.status == JobStatus.DONE and job.progress == 1.0
    assert job.result["failed"] == [] and job.result["warnings"] == []
    assert set(maps) == {"FF", "WATER", "FAT", "B0", "R2STAR", "RESIDUAL"}
    # the segment stage labels the magnitude series and reads its FF map into per-muscle rows
    assert ("pipeline.segment", "done") in out["jobs"], out
    with ext.db.transaction() as s:
        labelled = s.scalars(
            select(Series.contrast)
            .join(Derivative, Derivative.series_id == Series.id)
            .where(Derivative.kind == "LABELS")
        ).all()
        assert labelled == ["MEGRE"]
        segment = s.scalar(select(Job).where(Job.kind == "pipeline.segment"))
        assert segment is not None and segment.result["segmented"] == 1
    ff, b0, r2, body = _truth()
    core = body & np.isfinite(maps["FF"])  # fitted voxels
    assert core.sum() > 0.8 * body.sum()
    err = np.abs(maps["FF"] - 100 * ff)[core]
    assert np.median(err) < 1.5 and np.percentile(err, 95) < 5.0
    assert (err > 30).sum() == 0  # no water-fat swaps
    assert np.median(np.abs(maps["B0"] - b0)[core]) < 3.0
    assert np.median(np.abs(maps["R2STAR"] - r2)[core]) < 10.0
    assert sidecars["FF"]["Units"] == "%" and sidecars["B0"]["Units"] == "Hz"
    assert sidecars["R2STAR"]["Units"] == "1/s"
    assert sidecars["FF"]["ModelParameters"]["phase_convention_used"] == "conjugate"
    assert sidecars["FF"]["ModelParameters"]["well_conditioned"] is True


def test_plan_groups_megre_parts_and_prefers_magnitude() -> None:
    base = "sub-1/ses-1/mr-anat/sub-1_ses-1"
    rows = [
        (1, 7, f"{base}_part-real_MEGRE", "MEGRE_REAL", "P1"),
        (2, 7, f"{base}_part-imag_MEGRE", "MEGRE_IMAGINARY", "P1"),
        (3, 7, f"{base}_MEGRE", "MEGRE", "P1"),
        (4, 7, f"{base}_part-phase_MEGRE", "MEGRE_PHASE", "P1"),
        (5, 7, f"{base}_MESE", "MESE", "P1"),
        (6, 8, "sub-1/ses-2/mr-anat/sub-1_ses-2_part-real_MEGRE", "MEGRE_REAL", "P1"),
        (7, 8, "sub-1/ses-2/mr-anat/sub-1_ses-2_part-imag_MEGRE", "MEGRE_IMAGINARY", "P1"),
    ]
    fits = plan_fits(rows)
    assert [(f["series_id"], f["contrast"]) for f in fits] == [
        (5, "MESE"),
        (3, "MEGRE"),
        (6, "MEGRE"),
    ]
    assert sorted(fits[1]["stems"]) == sorted(r[2] for r in rows[:4])
    assert fits[1]["stem"] == f"{base}_MEGRE"
    assert sorted(fits[2]["stems"]) == sorted(r[2] for r in rows[5:])


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_pipeline_real_ge_dual_echo_gives_b0_only(
    app: Flask, world: World, shared_data: Path, tmp_path: Path
) -> None:
    import shutil

    shutil.copytree(shared_data / "real" / "ge_megre_thigh", tmp_path / "in" / "ge")
    ext = app.extensions["myovault"]
    with app.app_context():
        out = ingest_directory(ext, SYSTEM, tmp_path / "in", "alpha")
    assert ("pipeline.fit", "done") in out["jobs"], out
    maps, sidecars, job = _maps(app)
    assert job.result["failed"] == []
    assert set(maps) == {"B0", "RESIDUAL"}  # FF / water / fat refused
    (warning,) = job.result["warnings"]
    assert "25 deg" in warning["warning"] and "NOT written" in warning["warning"]
    params = sidecars["B0"]["ModelParameters"]
    assert params["well_conditioned"] is False and params["field_strength_t"] == 3.0
    assert params["echo_times_ms"] == [3.9, 6.3]
    b0 = maps["B0"][np.isfinite(maps["B0"])]
    assert b0.size > 10_000 and np.percentile(np.abs(b0), 90) < 300.0
