"""Benchmark: saving a corrected label version and recomputing its metrics vs their floors.

Usage::

    .venv/bin/python bench/bench_labels.py [--shape X Y Z] [--repeat R]

One subject with a whole-thigh-sized MESE grid (default 256 x 192 x 48 voxels of 1.5 x 1.5 x 5
mm, 22 muscle labels in blocks), an FF and a water T2 map and label version 1, in a local
encrypted store and a SQLite database (embedded mode).

* "save" = ``labels.save_label_version`` + commit (decrypt the current version, parse and
  validate the upload, per-muscle diff, gzip + encrypt + store the new version, rows, audit,
  job) for an edit that repaints one muscle on one slice. Its floor ("store") is the I/O any
  save must do: parse the uploaded NIfTI, gzip it and ``store.put`` it.
* "recompute" = the ``labels.recompute_metrics`` job (decrypt labels + FF + T2, metrics with a
  one-voxel erosion, QC, TSV stored, metric rows replaced, audit). Its floor ("metrics") is
  ``qmri.metrics.compute_muscle_metrics`` alone on arrays already in memory (float64 maps,
  as the job reads them; the conversion is not timed).
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

from qmri.metrics import compute_muscle_metrics  # noqa: E402
from repository import create_app, migrate  # noqa: E402
from repository.db import make_engine  # noqa: E402
from repository.models import Derivative, Role, Series, StoredObject, Subject, User, Visit  # noqa: E402
from repository.services import accounts, jobs, labels, projects  # noqa: E402
from repository.services.context import SYSTEM, Actor  # noqa: E402
from repository.services.pipeline import FITTER  # noqa: E402
from repository.services.pipeline_segment import SEGMENTER  # noqa: E402
from repository.storage import generate_master_key_file  # noqa: E402

ZOOMS = (1.5, 1.5, 5.0)


def _labels(shape: tuple[int, int, int]) -> np.ndarray:
    """22 muscle blocks: right muscles in the left half of x, left muscles in the right half."""
    out = np.zeros(shape, dtype=np.uint8)
    nx, ny, _ = shape
    bx, by = nx // 12, ny // 6
    for m in range(11):
        col, row = m % 5, m // 5
        for side, x0 in ((0, bx // 2), (11, nx // 2 + bx // 2)):
            out[
                x0 + col * bx : x0 + (col + 1) * bx - 1, by + row * by : by + (row + 1) * by - 1
            ] = m + 1 + side
    return out


def _gz(data: np.ndarray) -> bytes:
    image = nib.Nifti1Image(data, np.diag([*ZOOMS, 1.0]))
    image.header.set_zooms(ZOOMS)
    return gzip.compress(image.to_bytes(), compresslevel=6)


def _setup(tmp: Path, shape: tuple[int, int, int]) -> tuple[Any, dict[str, Any]]:
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
    rng = np.random.default_rng(0)
    lab = _labels(shape)
    ff = (rng.random(shape) * 60).astype(np.float32)
    t2 = (30 + rng.random(shape) * 10).astype(np.float32)
    with ext.db.transaction() as session:
        project = projects.create_project(
            session, SYSTEM, slug="bench", title="Bench", wrap_secret=ext.wrap_project_secret
        )
        accounts.create_user(
            session, SYSTEM, email="inv@example.org", name="Inv", password=secrets.token_hex(16)
        )
        projects.add_member(
            session, SYSTEM, project, email="inv@example.org", role=Role.INVESTIGATOR
        )
        subject = Subject(project_id=project.id, pseudonym="SUBBENCH")
        session.add(subject)
        session.flush()
        visit = Visit(subject_id=subject.id, label="1")
        session.add(visit)
        session.flush()
        pid, sid, vid = project.id, subject.id, visit.id
    stem = "sub-bench/ses-1/mr-quant/sub-bench_ses-1_mese"
    payloads = {
        "image": (f"mids/p{pid}/sub-bench/ses-1/mr-anat/sub-bench_ses-1_mese.nii.gz", _gz(ff)),
        "FF": (f"mids/p{pid}/{stem}_desc-mese_FF.nii.gz", _gz(ff)),
        "T2": (f"mids/p{pid}/{stem}_T2.nii.gz", _gz(t2)),
        "LABELS": (f"mids/p{pid}/{stem}_dseg.nii.gz", _gz(lab)),
    }
    stored = {
        k: ext.store.put(key, data, subject="SUBBENCH") for k, (key, data) in payloads.items()
    }
    with ext.db.transaction() as session:
        objs = {}
        for kind, info in stored.items():
            obj = StoredObject(
                key=info.key,
                size=info.size,
                sha256=info.sha256,
                key_id=info.key_id,
                subject_id=sid,
                kind="derivative",
            )
            session.add(obj)
            session.flush()
            objs[kind] = obj.id
        series = Series(visit_id=vid, series_uid="1", contrast="MESE", object_id=objs["image"])
        session.add(series)
        session.flush()
        ids = {}
        for kind in ("FF", "T2", "LABELS"):
            d = Derivative(
                visit_id=vid,
                series_id=series.id,
                kind=kind,
                object_id=objs[kind],
                software=SEGMENTER if kind == "LABELS" else FITTER,
                software_version="bench",
                model_version="thigh-unet-v1@1.0.0" if kind == "LABELS" else "",
                parameters={"erosion_voxels": 1} if kind == "LABELS" else {},
            )
            session.add(d)
            session.flush()
            ids[kind] = d.id
        user = session.query(User).filter_by(email="inv@example.org").one()
        session.expunge(user)
    return app, {"labels": lab, "ff": ff, "t2": t2, "labels_id": ids["LABELS"], "user": user}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 192, 48])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    shape = tuple(args.shape)
    with tempfile.TemporaryDirectory() as tmp:
        app, ctx = _setup(Path(tmp), shape)  # type: ignore[arg-type]
        ext = app.extensions["myovault"]
        actor = Actor(user=ctx["user"])
        current, lab = ctx["labels_id"], ctx["labels"].copy()
        ff64, t2_64 = ctx["ff"].astype(np.float64), ctx["t2"].astype(np.float64)
        times: dict[str, list[float]] = {"store": [], "save": [], "metrics": [], "recompute": []}
        for r in range(args.repeat):
            lab[lab == 3 + (r % 2)] = 0  # an edit: a muscle erased / restored on every slice
            lab[:, :, r % shape[2]][lab[:, :, r % shape[2]] == 1] = 2
            upload = _gz(lab)
            t = time.perf_counter()
            parsed = nib.Nifti1Image.from_bytes(gzip.decompress(upload))
            np.asanyarray(parsed.dataobj)
            ext.store.put(f"bench/floor-{r}.nii.gz", io.BytesIO(upload), subject="SUBBENCH")
            times["store"].append(time.perf_counter() - t)
            t = time.perf_counter()
            with ext.db.transaction() as session:
                saved = labels.save_label_version(
                    session, actor, current, upload, store=ext.store, dispatch=lambda _id: None
                )
                current, job_id = saved.derivative.id, saved.job.id
            times["save"].append(time.perf_counter() - t)
            t = time.perf_counter()
            compute_muscle_metrics(  # maps as the job reads them (float64)
                lab,
                ZOOMS,
                ff_percent=ff64,
                t2_water_ms=t2_64,
                erosion_voxels=1,
            )
            times["metrics"].append(time.perf_counter() - t)
            t = time.perf_counter()
            status = jobs.run(ext.db, job_id, ext.services())
            times["recompute"].append(time.perf_counter() - t)
            assert status.value == "done", status
        best = {k: min(v) for k, v in times.items()}
        med = {k: statistics.median(v) for k, v in times.items()}
        n = int(np.prod(shape))
        print(
            f"label volume {shape} = {n / 1e6:.1f} M voxels, {args.repeat} saves (best / median s)"
        )
        print(f"  store floor   {best['store']:.3f} / {med['store']:.3f}")
        print(
            f"  save version  {best['save']:.3f} / {med['save']:.3f}   save/store = {best['save'] / best['store']:.2f}"
        )
        print(f"  metrics floor {best['metrics']:.3f} / {med['metrics']:.3f}")
        print(
            f"  recompute job {best['recompute']:.3f} / {med['recompute']:.3f}"
            f"   recompute/metrics = {best['recompute'] / best['metrics']:.2f}"
        )
        ext.db.engine.dispose()


if __name__ == "__main__":
    main()
