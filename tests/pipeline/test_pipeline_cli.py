"""CLI: resumable `myovault upload` against a live server, local `ingest`, `fixity check`,
and the C-STORE receiver with a real pynetdicom C-STORE on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import func, select
from werkzeug.serving import make_server

from repository.cli import ingest as cli
from repository.models import FileState, StoredObject, Upload, UploadFile
from repository.services.pipeline import run_local
from tests.app_fixtures import World, api_token
from tests.pipeline.pipeline_helpers import tiny_cohort


@pytest.fixture
def server(app: Flask) -> Iterator[str]:
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def _env(app: Flask) -> dict[str, str]:
    return {
        "MYOVAULT_HOME": app.config["HOME"],
        "MYOVAULT_DATABASE_URL": app.config["DATABASE_URL"],
        "MYOVAULT_SECRET_KEY": "test-secret-key-not-for-production",
    }


def _visit1(root: Path) -> Path:
    paths = tiny_cohort(root / "all")
    src = root / "in"
    for p in paths:
        if "visit1" in p.parent.name and "mese" in p.name:
            dst = src / p.relative_to(root / "all")
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(p.read_bytes())
    return src


def test_upload_command_resumes_after_a_crash(
    app: Flask, world: World, server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _visit1(tmp_path)
    token = api_token(app, world.emails["investigator"])
    args = [str(src), "--project", "alpha", "--server", server, "--token", token]
    args += ["--state-dir", str(tmp_path / "state"), "--chunk-mib", "1", "--no-wait"]
    real_call = cli._Client.call
    patches = {"n": 0}

    def flaky(self: Any, method: str, path: str, **kw: Any) -> Any:
        if method == "PATCH":
            patches["n"] += 1
            if patches["n"] == 3:
                raise ConnectionResetError("network dropped")
        return real_call(self, method, path, **kw)

    monkeypatch.setattr(cli._Client, "call", flaky)
    first = CliRunner().invoke(cli.upload, args)
    assert first.exit_code != 0
    monkeypatch.setattr(cli._Client, "call", real_call)
    second = CliRunner().invoke(cli.upload, args)
    assert second.exit_code == 0, second.output
    assert "resuming upload" in second.output
    ext = app.extensions["myovault"]
    with ext.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Upload)) == 1
        upload_id = s.scalar(select(Upload.id))
    with app.app_context():
        run_local(ext, upload_id)
    with ext.db.transaction() as s:
        states = set(s.scalars(select(UploadFile.state)))
    assert states == {FileState.CONVERTED}


def test_ingest_and_fixity_commands(app: Flask, world: World, tmp_path: Path) -> None:
    src = _visit1(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli.ingest, [str(src), "--project", "alpha"], env=_env(app))
    assert result.exit_code == 0, result.output
    assert "done" in result.output and "pipeline.convert: done" in result.output
    ok = runner.invoke(cli.fixity, ["check"], env=_env(app))
    assert ok.exit_code == 0, ok.output
    assert "0 corrupt" not in ok.output and " ok" in ok.output
    # damage one stored object: the check must report it and fail
    ext = app.extensions["myovault"]
    with ext.db.transaction() as s:
        obj = s.scalars(select(StoredObject).where(StoredObject.kind == "nifti")).first()
        assert obj is not None
        obj.sha256 = "0" * 64
    bad = runner.invoke(cli.fixity, ["check"], env=_env(app))
    assert bad.exit_code == 1
    assert "mismatch" in bad.output


def test_dicom_receiver_with_a_real_c_store(app: Flask, world: World, tmp_path: Path) -> None:
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    from ingest.receiver import StudyReceiver, parse_ae_table
    from repository.services.uploads import CStoreIngest

    src = _visit1(tmp_path)
    ext = app.extensions["myovault"]
    done: list[int] = []
    bridge = CStoreIngest(ext, dispatch=lambda _id: None, on_complete=done.append)
    table = parse_ae_table({"SCANNER1": {"project": "alpha", "site": "S1"}})
    receiver = StudyReceiver(table, bridge.stage, bridge.study_complete, quiet_seconds=0.5)
    host, port = receiver.start("127.0.0.1", 0)
    try:
        scu = AE(ae_title="SCANNER1")
        scu.add_requested_context(MRImageStorage)
        assoc = scu.associate(host, port, ae_title="MYOVAULT")
        assert assoc.is_established
        files = sorted(src.rglob("*.dcm"))
        for path in files:
            status = assoc.send_c_store(pydicom.dcmread(path))
            assert status.Status == 0x0000
        assoc.release()
        # an unknown AE title is refused
        stranger = AE(ae_title="STRANGER")
        stranger.add_requested_context(MRImageStorage)
        refused = stranger.associate(host, port, ae_title="MYOVAULT")
        assert not refused.is_established
        deadline = time.monotonic() + 20
        while not done and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        receiver.stop()
    assert len(done) == 1
    with app.app_context():
        run_local(ext, done[0])
    with ext.db.transaction() as s:
        upload = s.get(Upload, done[0])
        assert upload is not None and upload.source == "cstore"
        states = [f.state for f in upload.files]
    assert states == [FileState.CONVERTED] * len(files)
    assert list(ext.store.iter_keys("quarantine/")) == []


def test_receiver_restart_mid_study_continues_the_same_upload(
    app: Flask, world: World, tmp_path: Path
) -> None:
    """A receiver killed mid-study (no flush) and restarted: the rest of the study, sent in a
    second association, lands in the same upload; a stale open upload is completed."""
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    from ingest.receiver import StudyReceiver, parse_ae_table
    from repository.services.uploads import CStoreIngest

    src = _visit1(tmp_path)
    files = sorted(src.rglob("*.dcm"))
    half = len(files) // 2
    ext = app.extensions["myovault"]
    table = parse_ae_table({"SCANNER1": {"project": "alpha", "site": "S1"}})

    def send(paths: list[Path]) -> None:
        bridge = CStoreIngest(ext, dispatch=lambda _id: None)
        receiver = StudyReceiver(table, bridge.stage, bridge.study_complete, quiet_seconds=60)
        host, port = receiver.start("127.0.0.1", 0)
        try:
            scu = AE(ae_title="SCANNER1")
            scu.add_requested_context(MRImageStorage)
            assoc = scu.associate(host, port, ae_title="MYOVAULT")
            assert assoc.is_established
            for path in paths:
                assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
            assoc.release()
        finally:
            receiver.stop(flush=False)  # the process dies: nothing completed, memory lost

    send(files[:half])
    send(files[half:])  # a new process, a new association, the same study
    with ext.db.transaction() as s:
        uploads = s.scalars(select(Upload).where(Upload.source == "cstore")).all()
        assert len(uploads) == 1
        (upload,) = uploads
        assert len(upload.files) == len(files) and upload.state.value == "open"
        assert "study_sha256" in upload.report["cstore"]
        study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        assert study_uid not in str(upload.report) and study_uid not in upload.label
        upload_id = upload.id
    done: list[int] = []
    bridge = CStoreIngest(ext, dispatch=lambda _id: None, on_complete=done.append)
    assert bridge.complete_stale(3600) == []  # not quiet for an hour yet
    assert bridge.complete_stale(0) == [upload_id] and done == [upload_id]
    with app.app_context():
        run_local(ext, upload_id)
    with ext.db.transaction() as s:
        upload = s.get(Upload, upload_id)
        assert upload is not None
        assert [f.state for f in upload.files] == [FileState.CONVERTED] * len(files)
