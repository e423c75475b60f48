"""Pure helpers: archive member names, type sniffing, the synthetic cohort writer, retention."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from flask import Flask
from sqlalchemy import select, update

from repository.demo_cohort import cylinder_phantom, write_cohort
from repository.models import UploadChunk, UploadFile
from repository.models._types import utcnow
from repository.services.context import SYSTEM
from repository.services.pipeline import _safe_member_name, ingest_directory
from repository.services.pipeline_deidentify import purge_expired
from repository.services.uploads import sniff
from tests.app_fixtures import World
from tests.pipeline.pipeline_helpers import tiny_cohort


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/b.dcm", "a/b.dcm"),
        ("./a//b.dcm", "a/b.dcm"),
        ("../b.dcm", None),
        ("a/../../b.dcm", None),
        ("/etc/passwd", None),
        ("C:\\x.dcm", None),
        ("a\\..\\..\\b", None),
    ],
)
def test_safe_member_name(name: str, expected: str | None) -> None:
    assert _safe_member_name(name) == expected


def test_sniff() -> None:
    assert sniff(b"PK\x03\x04rest") == "zip"
    assert sniff(b"\0" * 128 + b"DICM") == "dicom"
    assert sniff(b"hello") is None
    assert sniff(b"\0" * 128 + b"DICX") is None


def test_cylinder_phantom_matches_a_naive_signal_model() -> None:
    te = [10.0, 20.0, 30.0]
    images = cylinder_phantom((8, 8, 2), ff=0.3, t2_ms=35.0, echo_times_ms=te)
    x, y = 4, 4  # inside the muscle cylinder
    water, fat = images["water"][x, y, 0], images["fat"][x, y, 0]
    assert water == pytest.approx(700.0) and fat == pytest.approx(300.0)
    for e, t in enumerate(te):
        expected = water * np.exp(-t / 35.0) + fat * np.exp(-t / 150.0)
        assert images["mese"][x, y, 0, e] == pytest.approx(expected, rel=1e-5)


def test_cohort_has_fake_identifiers_two_visits_and_geometry(tmp_path: Path) -> None:
    patients = write_cohort(tmp_path, n_subjects=2, shape_xyz=(8, 8, 3), n_echoes=4)
    assert {p.disease for p in patients} == {"healthy", "FSHD"}
    files = sorted(tmp_path.rglob("*.dcm"))
    assert len(files) == 2 * 2 * (4 * 3 + 4 * 3)
    ds = pydicom.dcmread(next(f for f in files if "mese_e02_001" in f.name))
    assert ds.PatientName and ds.PatientBirthDate and ds.InstitutionName  # work for the anonymizer
    assert float(ds.EchoTime) == 20.0 and int(ds.EchoNumbers) == 2
    assert [float(v) for v in ds.ImagePositionPatient] == [0.0, 0.0, 8.0]
    pixels = ds.pixel_array  # (rows = y, columns = x)
    assert pixels.shape == (8, 8)
    studies = {pydicom.dcmread(f, stop_before_pixels=True).StudyDate for f in files[:100]}
    assert len(studies) >= 2


def test_retention_keeps_originals_until_expired(app: Flask, world: World, tmp_path: Path) -> None:
    tiny_cohort(tmp_path / "in")
    app.config["QUARANTINE_RETENTION_S"] = 3600
    ext = app.extensions["myovault"]
    with app.app_context():
        out = ingest_directory(ext, SYSTEM, tmp_path / "in", "alpha")
    assert out["state"] == "done"
    assert list(ext.store.iter_keys("quarantine/"))  # kept for the retention period
    assert purge_expired(ext.db, ext.store, 3600) == 0
    with ext.db.transaction() as s:  # two hours later
        s.execute(update(UploadFile).values(updated_at=utcnow() - timedelta(hours=2)))
        n_chunks = len(s.scalars(select(UploadChunk)).all())
    assert n_chunks == len(list(ext.store.iter_keys("quarantine/"))) > 0
    assert purge_expired(ext.db, ext.store, 3600) == n_chunks
    assert list(ext.store.iter_keys("quarantine/")) == []
