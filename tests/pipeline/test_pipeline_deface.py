"""Defacing in the server pipeline: a whole-body series is defaced before it leaves quarantine.

The synthetic whole-body phantom (a face-like anterior surface: nose, brow, chin) goes through
the real pipeline (quarantine → parallel de-identification → series check → commit). The
stored de-identified series must equal the anonymizer's own ``deface`` of the volume: face box
emptied, every other voxel unchanged; a limb-only series is stored byte-for-byte unchanged in
its pixels; a worker killed while the defaced series is committed leaves none of its files
released, and the re-run finishes the job.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select

from anonymizer.deface import deface
from repository.models import FileState, Job, StoredObject, Upload, UploadFile
from repository.services.context import SYSTEM
from repository.services.pipeline import ingest_directory, run_local
from tests.anonymizer.anon_factory import mr_dataset
from tests.anonymizer.anon_phantoms import SPACING_MM, thighs, whole_body
from tests.app_fixtures import World

pytestmark = pytest.mark.slow


def _write_series(volume: np.ndarray, folder: Path, body_part: str) -> None:
    """One classic MR file per axial slice (image rows run posterior, as DICOM +P)."""
    dz, dy, dx = SPACING_MM
    folder.mkdir(parents=True, exist_ok=True)
    for z in range(volume.shape[0]):
        ds = mr_dataset(
            sop_uid=f"1.2.826.0.1.3680043.99.6.{z + 1}",
            series_uid="1.2.826.0.1.3680043.99.6",
            position=(0.0, 0.0, z * dz),
            pixels=np.ascontiguousarray(volume[z, ::-1, :]),
            body_part=body_part,
        )
        ds.PixelSpacing = [str(dy), str(dx)]
        ds.SliceThickness = str(dz)
        ds.InstanceNumber = str(z + 1)
        ds.save_as(folder / f"IM{z:04d}.dcm", enforce_file_format=True)


def _stored(app: Flask) -> list[Dataset]:
    """Every de-identified object the pipeline stored, read back through the store."""
    ext = app.extensions["myovault"]
    with ext.db.transaction() as s:
        objects = [
            (o.key, o.sha256)
            for o in s.scalars(select(StoredObject).where(StoredObject.kind == "dicom_deid"))
        ]
    return [
        dcmread(io.BytesIO(ext.store.read_bytes(key, expected_sha256=sha))) for key, sha in objects
    ]


def _volume(datasets: list[Dataset]) -> np.ndarray:
    ordered = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    images = [np.frombuffer(d.PixelData, "<u2").reshape(d.Rows, d.Columns) for d in ordered]
    return np.stack([image[::-1, :] for image in images])


def _states(app: Flask) -> set[FileState]:
    with app.extensions["myovault"].db.transaction() as s:
        return set(s.scalars(select(UploadFile.state)))


@pytest.fixture
def two_workers(app: Flask) -> Flask:
    app.config["DEIDENTIFY_WORKERS"] = 2  # the process pool, as on a 2-core server
    return app


def test_whole_body_series_is_defaced_in_the_pipeline(
    two_workers: Flask, world: World, tmp_path: Path
) -> None:
    app = two_workers
    volume, features = whole_body()
    _write_series(volume, tmp_path / "in", "WHOLEBODY")
    with app.app_context():
        outcome = ingest_directory(app.extensions["myovault"], SYSTEM, tmp_path / "in", "alpha")
    assert not [a for a in outcome["needs_attention"] if a[1] == "quarantined"]
    assert FileState.QUARANTINED not in _states(app)
    expected, mask = deface(volume, SPACING_MM)
    assert mask is not None
    stored = _stored(app)
    assert len(stored) == volume.shape[0]
    out = _volume(stored)
    assert np.array_equal(out, expected)  # the face box emptied, nothing else changed
    assert (out[features] == 0).all() and (volume[features] > 0).all()
    assert np.array_equal(out[~mask], volume[~mask])
    touched = {z for z in range(volume.shape[0]) if mask[z].any()}
    ordered = sorted(stored, key=lambda d: float(d.ImagePositionPatient[2]))
    for z, ds in enumerate(ordered):
        codes = [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]
        assert ("113102" in codes) == (z in touched)
        assert (ds.get("RecognizableVisualFeatures") == "NO") == (z in touched)
        assert ds.PatientIdentityRemoved == "YES" and ds.BodyPartExamined == "WHOLEBODY"
    with app.extensions["myovault"].db.transaction() as s:
        upload = s.scalar(select(Upload))
        assert upload is not None
        report = upload.report["deidentification"]
    assert report["pixel_actions"] == {"deface": len(touched)}
    assert report["files_written"] == volume.shape[0] and report["files_quarantined"] == 0


def test_limb_series_pixels_are_unchanged(app: Flask, world: World, tmp_path: Path) -> None:
    volume = thighs()
    _write_series(volume, tmp_path / "in", "THIGH")
    with app.app_context():
        ingest_directory(app.extensions["myovault"], SYSTEM, tmp_path / "in", "alpha")
    stored = _stored(app)
    assert len(stored) == volume.shape[0]
    assert np.array_equal(_volume(stored), volume)
    assert all("RecognizableVisualFeatures" not in ds for ds in stored)


def test_worker_killed_while_committing_a_defaced_series_releases_none_of_it(
    two_workers: Flask, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = two_workers
    volume, _ = whole_body()
    _write_series(volume, tmp_path / "in", "WHOLEBODY")
    ext = app.extensions["myovault"]
    real_put = ext.store.put
    calls = {"n": 0}

    def dying_put(key: str, source: object, *, subject: str) -> object:
        if key.startswith("deid/"):
            calls["n"] += 1
            if calls["n"] == 40:  # dies in the middle of the series' commit
                raise SystemExit("worker killed")
        return real_put(key, source, subject=subject)

    monkeypatch.setattr(ext.store, "put", dying_put)
    with app.app_context(), pytest.raises(SystemExit):
        ingest_directory(ext, SYSTEM, tmp_path / "in", "alpha")
    assert _states(app) == {FileState.RECEIVED}  # the series is committed all at once or not
    with ext.db.transaction() as s:
        assert not s.scalars(select(StoredObject).where(StoredObject.kind == "dicom_deid")).all()
        upload_id = s.scalar(select(Upload.id))
        job = s.scalar(select(Job).where(Job.kind == "pipeline.deidentify"))
        assert job is not None
    monkeypatch.setattr(ext.store, "put", real_put)
    with app.app_context():
        run_local(ext, upload_id)
    assert FileState.RECEIVED not in _states(app) and FileState.QUARANTINED not in _states(app)
    expected, _ = deface(volume, SPACING_MM)
    assert np.array_equal(_volume(_stored(app)), expected)
