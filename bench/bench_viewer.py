"""Benchmark: the viewer's authorised image endpoint vs reading the same object from the store.

Usage::

    .venv/bin/python bench/bench_viewer.py [--size-mib M] [--repeat R] [--small N]

One subject with one visit and one series object of M MiB (a real gzip NIfTI of random data)
plus a small object (a thumbnail-sized PNG), in a local encrypted store and a SQLite database.
"baseline" decrypts and verifies the object straight from the store
(``EncryptedObjectStore.read_bytes``); "endpoint" is a logged-in project owner's GET of
``/projects/<slug>/subjects/<pseudonym>/visits/<label>/series/<id>.nii.gz`` through the Flask
app (policy check, grant/visit walk, audit event committed before the first byte, streamed
response), measured with the test client so that no network is involved. Reports MiB/s for the
large object, milliseconds per request for the small one (the fixed cost of authorisation and
auditing), the viewer page's render time, and the thumbnail renderer on a 256 x 256 slice.
"""

from __future__ import annotations

import argparse
import gzip
import io
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repository import create_app, migrate  # noqa: E402
from repository.db import make_engine  # noqa: E402
from repository.models import Role, Series, StoredObject, Subject, User, Visit  # noqa: E402
from repository.services import accounts, projects  # noqa: E402
from repository.services.context import SYSTEM  # noqa: E402
from repository.services.viewer import render_thumbnail  # noqa: E402
from repository.storage import generate_master_key_file  # noqa: E402

MIB = 1 << 20


def _nifti_gz(size_mib: int) -> bytes:
    """A gzip NIfTI of about ``size_mib`` MiB (random int16, so gzip cannot shrink it)."""
    n = size_mib * MIB // 2
    nz = max(1, n // (256 * 256))
    data = np.random.default_rng(0).integers(0, 4000, size=(256, 256, nz), dtype=np.int16)
    image = nib.Nifti1Image(data, np.diag([1.0, 1.0, 5.0, 1.0]))
    return gzip.compress(image.to_bytes(), compresslevel=1)


def _setup(tmp: Path, size_mib: int) -> tuple[Any, dict[str, Any]]:
    home = tmp / "home"
    (home / "keys").mkdir(parents=True)
    (home / "data" / "objects").mkdir(parents=True)
    generate_master_key_file(home / "keys" / "master.key")
    url = f"sqlite:///{tmp}/bench.sqlite"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    app = create_app(
        {"HOME": str(home), "DATABASE_URL": url, "SECRET_KEY": "bench-" + secrets.token_hex(8)}
    )
    ext = app.extensions["myovault"]
    big = _nifti_gz(size_mib)
    small = render_thumbnail(np.random.default_rng(1).random((64, 64, 3)), np.zeros((64, 64, 3)))
    with ext.db.transaction() as session:
        project = projects.create_project(
            session,
            SYSTEM,
            slug="bench",
            title="Bench",
            is_public=True,
            wrap_secret=ext.wrap_project_secret,
        )
        accounts.create_user(
            session, SYSTEM, email="owner@example.org", name="Owner", password=secrets.token_hex(16)
        )
        projects.add_member(session, SYSTEM, project, email="owner@example.org", role=Role.OWNER)
        subject = Subject(project_id=project.id, pseudonym="SUBBENCH")
        session.add(subject)
        session.flush()
        visit = Visit(subject_id=subject.id, label="1")
        session.add(visit)
        session.flush()
        project_id, subject_id, visit_id = project.id, subject.id, visit.id
    stored = {  # outside the transaction: the key ring writes the subject's key on its own
        name: ext.store.put(f"mids/p{project_id}/bench-{name}.nii.gz", payload, subject="SUBBENCH")
        for name, payload in (("big", big), ("small", small))
    }
    with ext.db.transaction() as session:
        ids = {}
        for name, info in stored.items():
            obj = StoredObject(
                key=info.key,
                size=info.size,
                sha256=info.sha256,
                key_id=info.key_id,
                subject_id=subject_id,
                kind="image",
            )
            session.add(obj)
            session.flush()
            series = Series(visit_id=visit_id, series_uid=name, contrast="MESE", object_id=obj.id)
            session.add(series)
            session.flush()
            ids[name] = (series.id, obj.key, obj.sha256, obj.size)
        owner = session.query(User).filter_by(email="owner@example.org").one()
        ids["uid"], ids["pwv"] = owner.id, owner.password_hash[-16:]
    return app, ids


def _time(fn: Any, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--small", type=int, default=100, help="requests for the small object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        app, ids = _setup(Path(tmp), args.size_mib)
        store = app.extensions["myovault"].store
        client = app.test_client()
        with client.session_transaction() as s:
            s["uid"], s["pwv"] = ids["uid"], ids["pwv"]
        base = "/projects/bench/subjects/SUBBENCH/visits/1"

        def endpoint(name: str) -> int:
            response = client.get(f"{base}/series/{ids[name][0]}.nii.gz")
            assert response.status_code == 200, response.status_code
            return len(response.data)

        def baseline(name: str) -> int:
            return len(store.read_bytes(ids[name][1], expected_sha256=ids[name][2]))

        size = ids["big"][3]
        assert endpoint("big") == baseline("big") == size
        print(
            f"python {sys.version.split()[0]}; object {size / MIB:.1f} MiB, best of {args.repeat}"
        )
        rates = {}
        for label, fn in (("baseline store read", baseline), ("viewer endpoint", endpoint)):
            best = min(_time(lambda fn=fn: fn("big"), args.repeat))
            rates[label] = size / MIB / best
            print(f"  {label:22s} {rates[label]:8.1f} MiB/s")
        print(
            f"  endpoint/baseline      {rates['viewer endpoint'] / rates['baseline store read']:8.2f}"
        )
        small = {}
        for label, fn in (("baseline store read", baseline), ("viewer endpoint", endpoint)):
            small[label] = statistics.median(_time(lambda fn=fn: fn("small"), args.small)) * 1000
        print(f"small object ({ids['small'][3]} bytes), median of {args.small}")
        for label, ms in small.items():
            print(f"  {label:22s} {ms:8.2f} ms/request")
        print(
            f"  endpoint - baseline    {small['viewer endpoint'] - small['baseline store read']:8.2f} ms (authorisation + audit + HTTP)"
        )
        page = statistics.median(
            _time(lambda: client.get(f"{base}/view").status_code == 200 or sys.exit(1), 20)
        )
        print(f"viewer page render, median of 20: {page * 1000:.1f} ms")
        rng = np.random.default_rng(2)
        image = rng.random((256, 256, 20))
        labels = rng.integers(0, 23, size=(256, 256, 20))
        thumb = statistics.median(_time(lambda: render_thumbnail(image, labels), 20))
        io.BytesIO(render_thumbnail(image, labels))
        print(f"thumbnail render (256 x 256 x 20, 22 labels), median of 20: {thumb * 1000:.1f} ms")


if __name__ == "__main__":
    main()
