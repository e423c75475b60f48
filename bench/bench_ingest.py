"""Ingest benchmark: the real samples end to end (chunked upload → quarantine → de-identify →
verify → ORMIR-MIDS) and peak memory while uploading one large file.

    .venv/bin/python bench/bench_ingest.py [--data ../shared/data] [--big-mb 2048]

Prints images/s and MB/s for the whole pipeline and per stage, against a baseline measured in
the same run (plain read + sha256 of the same files), and the peak resident memory of this
process while a ``--big-mb`` file goes through the upload API in 8 MiB chunks (encrypted into
the quarantine; the whole-file sha256 is a running digest, so the last chunk costs what any
other chunk costs — printed as the ratio of the last chunk's latency to the median chunk's,
measured in the same run; the pipeline's ``pipeline.checksum`` job re-verifies from the
quarantine, timed here as ``verify_received`` in the server process's data).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLES = ("ge_megre_thigh", "siemens_mese_thigh", "siemens_xa_enhanced_mese_calf")
CHUNK = 8 * 1024 * 1024


def make_app(home: Path) -> Any:
    from repository import create_app, migrate
    from repository.db import make_engine
    from repository.storage import generate_master_key_file

    (home / "keys").mkdir(parents=True)
    (home / "data" / "objects").mkdir(parents=True)
    generate_master_key_file(home / "keys" / "master.key")
    url = f"sqlite:///{home / 'data' / 'bench.sqlite'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    app = create_app(
        {
            "HOME": str(home),
            "DATABASE_URL": url,
            "SECRET_KEY": secrets.token_hex(16),
            "MAX_UPLOAD_BYTES": 64 * 1024**3,
        }
    )
    app.extensions["myovault"].set_dispatcher(lambda _job_id: None)
    return app


def setup_world(app: Any) -> str:
    from repository.models import Role
    from repository.services import accounts, projects
    from repository.services.context import SYSTEM, Actor

    ext = app.extensions["myovault"]
    with ext.db.transaction() as s:
        project = projects.create_project(
            s, SYSTEM, slug="bench", title="Bench", wrap_secret=ext.wrap_project_secret
        )
        user = accounts.create_user(
            s, SYSTEM, email="inv@example.org", name="Inv", password=secrets.token_urlsafe(16)
        )
        projects.add_member(s, SYSTEM, project, email=user.email, role=Role.INVESTIGATOR)
        _, token = accounts.create_token(s, Actor(user=user), name="bench", days=1, max_days=2)
    return str(token)


def count_images(paths: list[Path]) -> int:
    import pydicom

    n = 0
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        n += int(getattr(ds, "NumberOfFrames", 1) or 1)
    return n


def upload_via_api(client: Any, token: str, files: dict[str, Path]) -> int:
    auth = {"Authorization": f"Bearer {token}"}
    specs = []
    for rel, path in files.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        specs.append({"path": rel, "size": path.stat().st_size, "sha256": digest})
    r = client.post("/api/v1/projects/bench/uploads", json={"files": specs}, headers=auth)
    assert r.status_code == 201, r.get_json()
    upload = r.get_json()["upload"]
    for entry in upload["files"]:
        data = files[entry["path"]].read_bytes()
        for offset in range(0, len(data), CHUNK):
            piece = data[offset : offset + CHUNK]
            headers = auth | {
                "Upload-Offset": str(offset),
                "Upload-Checksum": f"sha256 {hashlib.sha256(piece).hexdigest()}",
            }
            r = client.patch(
                f"/api/v1/uploads/{upload['id']}/files/{entry['id']}", data=piece, headers=headers
            )
            assert r.status_code == 200, r.get_json()
    r = client.post(f"/api/v1/uploads/{upload['id']}/complete", headers=auth)
    assert r.status_code == 202
    return int(upload["id"])


def bench_real(data_dir: Path) -> None:
    from sqlalchemy import select

    from repository.models import Job
    from repository.services.pipeline import run_local

    paths = {
        f"{name}/{p.name}": p
        for name in SAMPLES
        for p in sorted((data_dir / "real" / name).glob("*.dcm"))
    }
    total_bytes = sum(p.stat().st_size for p in paths.values())
    n_images = count_images(list(paths.values()))
    t0 = time.perf_counter()
    for p in paths.values():
        hashlib.sha256(p.read_bytes()).hexdigest()
    baseline_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        app = make_app(Path(tmp) / "home")
        token = setup_world(app)
        client = app.test_client()
        t0 = time.perf_counter()
        upload_id = upload_via_api(client, token, paths)
        upload_s = time.perf_counter() - t0
        with app.app_context():
            ext = app.extensions["myovault"]
            t1 = time.perf_counter()
            ran = run_local(ext, upload_id)
            pipeline_s = time.perf_counter() - t1
            with ext.db.transaction() as s:
                stages = [
                    (j.kind, (j.finished_at - j.started_at).total_seconds())
                    for j in s.scalars(select(Job).order_by(Job.id))
                    if j.started_at and j.finished_at
                ]
            status = client.get(
                f"/api/v1/uploads/{upload_id}", headers={"Authorization": f"Bearer {token}"}
            ).get_json()["upload"]
        ext.db.engine.dispose()
    to_mids = ("pipeline.checksum", "pipeline.deidentify", "pipeline.verify", "pipeline.convert")
    end_to_end = upload_s + sum(seconds for kind, seconds in stages if kind in to_mids)
    with_fit = upload_s + pipeline_s
    mb = total_bytes / 1e6
    print(
        f"real samples: {len(paths)} files, {n_images} images, {mb:.1f} MB ({', '.join(SAMPLES)})"
    )
    print(f"  final state: {status['state']} {status['counts']}; jobs {ran}")
    print(f"  baseline read+sha256: {baseline_s:.2f} s = {mb / baseline_s:.0f} MB/s")
    print(
        f"  upload (chunked API → encrypted quarantine): {upload_s:.1f} s = "
        f"{mb / upload_s:.1f} MB/s, {n_images / upload_s:.1f} images/s"
    )
    for kind, seconds in stages:
        print(f"  {kind}: {seconds:.1f} s = {n_images / max(seconds, 1e-9):.1f} images/s")
    print(
        f"  END TO END upload → ORMIR-MIDS: {end_to_end:.1f} s = {n_images / end_to_end:.1f} "
        f"images/s, {mb / end_to_end:.2f} MB/s ({end_to_end / baseline_s:.0f}x the baseline)"
    )
    print(f"  with the later stages (fit, segment): {with_fit:.1f} s")


def _serve(home: str, port_file: str) -> None:
    """Child process: the app on a free port (werkzeug, threaded), port written to a file."""
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = make_app(Path(home))
    token = setup_world(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    Path(port_file).write_text(f"{server.server_port} {token}")
    server.serve_forever()


def _status(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def bench_big(big_mb: int) -> None:
    """Upload one ``big_mb`` file to a server in another process; sample the server's memory."""
    import http.client
    import multiprocessing

    size = big_mb * 1024 * 1024
    n_chunks = max(size // CHUNK, 1)
    block = os.urandom(CHUNK)

    def piece(i: int) -> bytes:
        if i == 0:
            return (b"\0" * 128 + b"DICM" + block)[:CHUNK]
        return i.to_bytes(8, "little") + block[8:]

    digest = hashlib.sha256()
    for i in range(n_chunks):
        digest.update(piece(i))
    with tempfile.TemporaryDirectory(prefix="bench-big-") as tmp:
        port_file = Path(tmp) / "port"
        ctx = multiprocessing.get_context("spawn")
        child = ctx.Process(target=_serve, args=(str(Path(tmp) / "home"), str(port_file)))
        child.start()
        try:
            while not port_file.exists() or not port_file.read_text():
                time.sleep(0.2)
            port_text, token = port_file.read_text().split()
            conn = http.client.HTTPConnection("127.0.0.1", int(port_text), timeout=600)
            auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            body = {
                "files": [
                    {"path": "big.dcm", "size": n_chunks * CHUNK, "sha256": digest.hexdigest()}
                ]
            }
            import json as _json

            conn.request("POST", "/api/v1/projects/bench/uploads", _json.dumps(body), auth)
            upload = _json.loads(conn.getresponse().read())["upload"]
            fid = upload["files"][0]["id"]
            idle = _status(child.pid)
            samples = []
            latencies: list[float] = []
            t0 = time.perf_counter()
            state = ""
            for i in range(n_chunks):
                t_chunk = time.perf_counter()
                data = piece(i)
                headers = {
                    "Authorization": f"Bearer {token}",
                    "Upload-Offset": str(i * CHUNK),
                    "Upload-Checksum": f"sha256 {hashlib.sha256(data).hexdigest()}",
                    "Content-Type": "application/offset+octet-stream",
                }
                conn.request("PATCH", f"/api/v1/uploads/{upload['id']}/files/{fid}", data, headers)
                response = conn.getresponse()
                payload = _json.loads(response.read())
                assert response.status == 200, payload
                latencies.append(time.perf_counter() - t_chunk)
                state = payload["file"]["state"]
                if i % max(n_chunks // 8, 1) == 0:
                    samples.append(round(_status(child.pid)["VmRSS"]))
            seconds = time.perf_counter() - t0
            final = _status(child.pid)
        finally:
            child.terminate()
            child.join(timeout=10)
    print(
        f"big upload: {n_chunks * CHUNK / 1024**3:.2f} GiB in {n_chunks} chunks of 8 MiB to a "
        f"server process, {seconds:.1f} s = {n_chunks * CHUNK / 1e6 / seconds:.0f} MB/s; "
        f"final state {state} (whole-file sha256 checked from the running digest)"
    )
    print(
        f"  server RSS idle {idle['VmRSS']:.0f} MiB, during {samples} MiB, end "
        f"{final['VmRSS']:.0f} MiB, peak (VmHWM) {final['VmHWM']:.0f} MiB"
    )
    median = sorted(latencies[:-1])[len(latencies[:-1]) // 2] if len(latencies) > 1 else 0.0
    print(
        f"  last chunk request {latencies[-1] * 1000:.0f} ms vs median chunk "
        f"{median * 1000:.0f} ms (ratio {latencies[-1] / max(median, 1e-9):.2f}; the whole-file "
        f"sha256 comes from the running digest, the file is not re-read in the request)"
    )


def bench_last_chunk(mb: int) -> None:
    """In one process: the last chunk's latency when the running digest is lost (chunks spread
    over web processes), against re-reading the whole file from the quarantine (what the last
    chunk cost before; now done by the pipeline.checksum job), both measured in this run."""
    from repository.models import UploadFile
    from repository.services import uploads

    n_chunks = max(mb * 1024 * 1024 // CHUNK, 2)
    block = os.urandom(CHUNK)
    pieces = [(b"\0" * 128 + b"DICM" + block)[:CHUNK]] + [
        i.to_bytes(8, "little") + block[8:] for i in range(1, n_chunks)
    ]
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    with tempfile.TemporaryDirectory(prefix="bench-last-") as tmp:
        app = make_app(Path(tmp) / "home")
        token = setup_world(app)
        client = app.test_client()
        auth = {"Authorization": f"Bearer {token}"}
        spec = {"path": "big.dcm", "size": n_chunks * CHUNK, "sha256": digest.hexdigest()}
        r = client.post("/api/v1/projects/bench/uploads", json={"files": [spec]}, headers=auth)
        upload = r.get_json()["upload"]
        fid = upload["files"][0]["id"]
        times = []
        for i, piece in enumerate(pieces):
            if i == n_chunks - 1:
                uploads._RUNNING.clear()  # the last chunk lands on another web process
            headers = auth | {
                "Upload-Offset": str(i * CHUNK),
                "Upload-Checksum": f"sha256 {hashlib.sha256(piece).hexdigest()}",
            }
            t0 = time.perf_counter()
            r = client.patch(
                f"/api/v1/uploads/{upload['id']}/files/{fid}", data=piece, headers=headers
            )
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.get_json()
        ext = app.extensions["myovault"]
        with ext.db.transaction() as s:
            item = s.get(UploadFile, fid)
            t0 = time.perf_counter()
            assert uploads.verify_received(s, ext.store, item)
            reread = time.perf_counter() - t0
        ext.db.engine.dispose()
    median = sorted(times[:-1])[len(times[:-1]) // 2]
    print(
        f"last chunk of a {n_chunks * CHUNK / 1024**2:.0f} MiB file, running digest lost: "
        f"{times[-1] * 1000:.0f} ms (median chunk {median * 1000:.0f} ms); re-reading the whole "
        f"file as the old last chunk did: {reread * 1000:.0f} ms "
        f"({reread / times[-1]:.0f}x the new last chunk)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--big-mb", type=int, default=2048)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--last-chunk-mb", type=int, default=512)
    args = parser.parse_args()
    if not args.skip_real:
        if (args.data / "real").is_dir():
            bench_real(args.data)
        else:
            print(f"real samples not found under {args.data}: skipped")
    if args.last_chunk_mb > 0:
        bench_last_chunk(args.last_chunk_mb)
    if args.big_mb > 0:
        bench_big(args.big_mb)


if __name__ == "__main__":
    main()
