"""Pipeline jobs: killed mid-way and re-run, failing series, idempotent keys, real samples."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from flask import Flask
from sqlalchemy import func, select

from repository.models import (
    FileState,
    Job,
    JobStatus,
    Series,
    StoredObject,
    Upload,
    UploadFile,
    Visit,
)
from repository.services import jobs
from repository.services.context import SYSTEM
from repository.services.pipeline import ingest_directory, local_services, run_local
from tests.app_fixtures import World
from tests.pipeline.pipeline_helpers import tiny_cohort


def _counts(app: Flask) -> tuple[int, int, int]:
    with app.extensions["myovault"].db.transaction() as s:
        return (
            s.scalar(select(func.count()).select_from(Series)) or 0,
            s.scalar(select(func.count()).select_from(Visit)) or 0,
            s.scalar(select(func.count()).select_from(StoredObject)) or 0,
        )


def test_worker_killed_mid_conversion_leaves_nothing_half_written(
    app: Flask, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_cohort(tmp_path / "in")
    ext = app.extensions["myovault"]
    store = ext.store
    real_put = store.put
    calls = {"n": 0}

    def dying_put(key: str, source: object, *, subject: str) -> object:
        if key.startswith("mids/"):
            calls["n"] += 1
            if calls["n"] == 3:  # the worker process dies after two ORMIR-MIDS objects
                raise SystemExit("worker killed")
        return real_put(key, source, subject=subject)

    monkeypatch.setattr(store, "put", dying_put)
    with app.app_context(), pytest.raises(SystemExit):
        ingest_directory(ext, SYSTEM, tmp_path / "in", "alpha")
    with ext.db.transaction() as s:
        job = s.scalar(select(Job).where(Job.kind == "pipeline.convert"))
        assert job is not None and job.status == JobStatus.RUNNING  # as a killed worker leaves it
        assert s.scalar(select(func.count()).select_from(Series)) == 0  # no half record
        assert not s.scalars(select(StoredObject).where(StoredObject.kind == "nifti")).all()
        upload_id = s.scalar(select(Upload.id))
        states = set(s.scalars(select(UploadFile.state)))
    assert states == {FileState.DEIDENTIFIED}
    monkeypatch.setattr(store, "put", real_put)
    with app.app_context():  # the broker re-delivers the task (acks_late): it runs again
        ran = run_local(ext, upload_id)
    assert ran == [
        ("pipeline.convert", "done"),
        ("pipeline.fit", "done"),
        ("pipeline.segment", "done"),
    ]
    with ext.db.transaction() as s:
        assert set(s.scalars(select(UploadFile.state))) == {FileState.CONVERTED}
        job = s.scalar(select(Job).where(Job.kind == "pipeline.convert"))
        assert job is not None and job.attempts == 2
    first = _counts(app)
    # running the finished stage's work again changes nothing (idempotent upserts)
    with ext.db.transaction() as s:
        job = s.scalar(select(Job).where(Job.kind == "pipeline.convert"))
        assert job is not None
        job.status = JobStatus.QUEUED
        job_id = job.id
    with app.app_context():
        assert jobs.run(ext.db, job_id, local_services(ext)) == JobStatus.DONE
    assert _counts(app) == first


def test_a_failing_series_does_not_block_the_rest(app: Flask, world: World, tmp_path: Path) -> None:
    paths = tiny_cohort(tmp_path / "in")
    # break the geometry of one series (visit 2 MESE: one image without an orientation; a
    # differing orientation would now be split into stacks, see test_ingest_dwi_stacks_phase)
    import pydicom

    for p in paths:
        if "visit2" in p.parent.name and "mese" in p.name and "_001" in p.name:
            ds = pydicom.dcmread(p)
            del ds.ImageOrientationPatient
            ds.save_as(p)
    ext = app.extensions["myovault"]
    with app.app_context():
        out = ingest_directory(ext, SYSTEM, tmp_path / "in", "alpha")
    assert out["state"] == "attention"
    n_broken = sum(1 for p in paths if "visit2" in p.parent.name and "mese" in p.name)
    assert out["counts"]["converted"] == len(paths) - n_broken
    broken = [a for a in out["needs_attention"] if "visit2" in a[0]]
    assert len(broken) == n_broken and all(a[1] == "not_converted" and a[3] for a in broken)


def test_stage_jobs_are_keyed_by_content(app: Flask, world: World, tmp_path: Path) -> None:
    tiny_cohort(tmp_path / "in")
    ext = app.extensions["myovault"]
    with app.app_context():
        ingest_directory(ext, SYSTEM, tmp_path / "in", "alpha")
    with ext.db.transaction() as s:
        keys = list(s.scalars(select(Job.key).order_by(Job.id)))
    assert [k.split(":")[0] for k in keys] == [
        "pipeline.checksum",
        "pipeline.deidentify",
        "pipeline.verify",
        "pipeline.convert",
        "pipeline.fit",
        "pipeline.segment",
    ]
    assert all(len(k.split(":")[1]) == 32 for k in keys)


def test_segment_stage_stores_labels_and_indexes_metrics(
    app: Flask, world: World, tmp_path: Path
) -> None:
    from repository.models import Derivative, MuscleMetric

    tiny_cohort(tmp_path / "in")
    ext = app.extensions["myovault"]
    with app.app_context():
        ingest_directory(ext, SYSTEM, tmp_path / "in", "alpha")
    with ext.db.transaction() as s:
        job = s.scalar(select(Job).where(Job.kind == "pipeline.segment"))
        assert job is not None and job.status == JobStatus.DONE, job and job.error
        assert job.result["segmented"] >= 1 and job.result["failed"] == []
        labels = s.scalars(select(Derivative).where(Derivative.kind == "LABELS")).all()
        assert labels and all(d.model_version.startswith("thigh-unet-v1@") for d in labels)
        assert all("qc_flags" in d.parameters for d in labels)
        metrics = s.scalars(select(MuscleMetric)).all()
        assert {m.side for m in metrics} <= {"L", "R"}
        assert all(m.derivative_id in {d.id for d in labels} for m in metrics)
        first = len(metrics)
        job.status = JobStatus.QUEUED  # re-running replaces, never duplicates
        job_id = job.id
    with app.app_context():
        assert jobs.run(ext.db, job_id, local_services(ext)) == JobStatus.DONE
    with ext.db.transaction() as s:
        assert len(s.scalars(select(MuscleMetric)).all()) == first


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_real_samples_end_to_end(
    app: Flask, world: World, shared_data: Path, tmp_path: Path
) -> None:
    import shutil

    src = tmp_path / "in"
    for name in ("siemens_mese_thigh", "siemens_xa_enhanced_mese_calf", "ge_megre_thigh"):
        shutil.copytree(shared_data / "real" / name, src / name)
    ext = app.extensions["myovault"]
    with app.app_context():
        out = ingest_directory(ext, SYSTEM, src, "alpha")
    assert list(ext.store.iter_keys("quarantine/")) == []
    with ext.db.transaction() as s:
        series = {x.mids_path: x for x in s.scalars(select(Series))}
        objects = {o.id: o for o in s.scalars(select(StoredObject))}
        kept = {
            (x.mids_path, x.contrast, objects[x.object_id].key, objects[x.object_id].sha256)
            for x in series.values()
        }
    contrasts = sorted(c for _, c, _, _ in kept)
    assert contrasts.count("MESE") == 2, contrasts
    assert "MEGRE" in contrasts and "MEGRE_PHASE" in contrasts
    for _stem, contrast, key, sha in kept:
        if contrast != "MESE":
            continue
        image = nib.Nifti1Image.from_bytes(
            gzip.decompress(ext.store.read_bytes(key, expected_sha256=sha))
        )
        sidecar = json.loads(ext.store.read_bytes(key.removesuffix(".nii.gz") + ".json"))
        assert image.ndim == 4 and image.shape[3] == 17
        assert len(sidecar["EchoTime"]) == 17
        assert np.all(np.diff(sidecar["EchoTime"]) > 0)
        assert abs(np.linalg.det(image.affine[:3, :3])) > 0
        assert "PatientName" not in sidecar and "PatientID" not in sidecar
    # every image either converted or listed with a reason
    assert all(reason for _, _, _, reason in out["needs_attention"])


def test_a_failed_stage_can_be_retried_through_the_api(
    app: Flask, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from repository.services import pipeline_deidentify
    from tests.app_fixtures import api_token

    tiny_cohort(tmp_path / "in")
    ext = app.extensions["myovault"]

    def broken(*_args: object, **_kw: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipeline_deidentify, "verify_deidentified", broken)
    with app.app_context():
        out = ingest_directory(ext, SYSTEM, tmp_path / "in", "alpha")
    assert ("pipeline.verify", "failed") in out["jobs"]
    assert list(ext.store.iter_keys("quarantine/"))  # nothing verified: originals kept
    monkeypatch.undo()
    client = app.test_client()
    token = api_token(app, world.emails["investigator"])
    r = client.post(
        f"/api/v1/uploads/{out['upload_id']}/retry", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 202 and len(r.get_json()["jobs"]) == 1
    assert app.config["DISPATCHED"][-1] == r.get_json()["jobs"][0]
    with app.app_context():
        run_local(ext, out["upload_id"])
    with ext.db.transaction() as s:
        assert set(s.scalars(select(UploadFile.state))) == {FileState.CONVERTED}
    assert list(ext.store.iter_keys("quarantine/")) == []
