"""CLI: ``myovault upload`` (resumable, against a server), ``ingest`` (local, whole pipeline),
``fixity check`` and ``dicom-receiver`` (C-STORE SCP). Thin: parse, call a service, print.

The lead registers ``upload``, ``ingest``, ``fixity`` and ``dicom_receiver`` in the main group.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

DEFAULT_CHUNK_MIB = 8


# --- upload (HTTP client of the resumable protocol) ---------------------------------------------


class _Client:
    def __init__(self, server: str, token: str, timeout_s: float = 120.0) -> None:
        if not server.startswith(("http://", "https://")):
            raise click.ClickException("--server must be an http:// or https:// URL")
        self.base = server.rstrip("/") + "/api/v1"
        self.token = token
        self.timeout_s = timeout_s

    def call(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        all_headers = {"Authorization": f"Bearer {self.token}"} | (headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            all_headers["Content-Type"] = "application/json"
        request = urllib.request.Request(  # noqa: S310  (scheme checked in __init__)
            self.base + path, data=body, method=method, headers=all_headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                raw = response.read()
                return response.status, _json(raw), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, _json(exc.read()), dict(exc.headers)
        except OSError as exc:  # URLError, resets, timeouts: the upload can be resumed
            raise click.ClickException(
                f"connection to the server failed ({exc}); run the same command again to resume"
            ) from exc


def _json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _state_file(state_dir: Path, server: str, project: str, root: Path) -> Path:
    ident = hashlib.sha256(f"{server}\n{project}\n{root.resolve()}".encode()).hexdigest()[:24]
    return state_dir / f"upload-{ident}.json"


def _fail(status: int, data: dict[str, Any], what: str) -> click.ClickException:
    return click.ClickException(f"{what}: HTTP {status}: {data.get('message', data)}")


@click.command("upload")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--project", "-p", required=True, help="Project short name.")
@click.option(
    "--server", required=True, envvar="MYOVAULT_SERVER", help="e.g. https://myovault.example.org"
)
@click.option(
    "--token", required=True, envvar="MYOVAULT_TOKEN", help="API token (or MYOVAULT_TOKEN)."
)
@click.option("--label", default="", help="Label for the upload (no patient names).")
@click.option(
    "--chunk-mib", default=DEFAULT_CHUNK_MIB, show_default=True, type=click.IntRange(1, 32)
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "myovault",
    help="Where the resume state is kept.",
)
@click.option("--no-wait", is_flag=True, help="Do not wait for the pipeline to finish.")
def upload(
    directory: Path,
    project: str,
    server: str,
    token: str,
    label: str,
    chunk_mib: int,
    state_dir: Path,
    no_wait: bool,
) -> None:
    """Upload every file under DIRECTORY to PROJECT (resumable: run it again to resume)."""
    import time

    client = _Client(server, token)
    paths = sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink())
    if not paths:
        raise click.ClickException(f"{directory} holds no files")
    click.echo(f"checking {len(paths)} files …")
    specs: list[dict[str, Any]] = [
        {
            "path": p.relative_to(directory).as_posix(),
            "size": p.stat().st_size,
            "sha256": _sha256_file(p),
        }
        for p in paths
    ]
    local = {s["path"]: p for s, p in zip(specs, paths, strict=True)}
    state_dir.mkdir(parents=True, exist_ok=True)
    state_path = _state_file(state_dir, server, project, directory)
    upload_data: dict[str, Any] | None = None
    if state_path.is_file():
        saved = _json(state_path.read_bytes())
        status, data, _ = client.call("GET", f"/uploads/{saved.get('upload_id')}")
        if status == 200 and data["upload"]["state"] == "open":
            files = {f["path"]: f["sha256"] for f in data["upload"]["files"]}
            if files == {s["path"]: s["sha256"] for s in specs}:
                upload_data = data["upload"]
                click.echo(f"resuming upload {upload_data['id']}")
    if upload_data is None:
        status, data, _ = client.call(
            "POST",
            f"/projects/{project}/uploads",
            json_body={"files": specs, "label": label, "source": "cli"},
        )
        if status != 201:
            raise _fail(status, data, "cannot start the upload")
        upload_data = data["upload"]
        state_path.write_text(json.dumps({"upload_id": upload_data["id"]}))
    upload_id = upload_data["id"]
    chunk = chunk_mib * 1024 * 1024
    total = sum(s["size"] for s in specs) or 1
    sent = 0
    problems: list[str] = []
    with click.progressbar(length=total, label="uploading") as bar:
        for entry in upload_data["files"]:
            offset, state = int(entry["offset"]), entry["state"]
            if state != "uploading":
                bar.update(entry["size"])
                continue
            bar.update(offset)
            with open(local[entry["path"]], "rb") as fh:
                while state == "uploading":
                    fh.seek(offset)
                    piece = fh.read(chunk)
                    status, data, headers = client.call(
                        "PATCH",
                        f"/uploads/{upload_id}/files/{entry['id']}",
                        body=piece,
                        headers={
                            "Content-Type": "application/offset+octet-stream",
                            "Upload-Offset": str(offset),
                            "Upload-Checksum": f"sha256 {hashlib.sha256(piece).hexdigest()}",
                        },
                    )
                    if status == 409 and "offset" in data:
                        offset = int(data["offset"])  # the server knows better: resume there
                        continue
                    if status != 200:
                        raise _fail(status, data, f"{entry['path']}: chunk at {offset} refused")
                    bar.update(int(data["file"]["offset"]) - offset)
                    offset, state = int(data["file"]["offset"]), data["file"]["state"]
                    sent += len(piece)
            if state == "rejected":
                problems.append(
                    f"{entry['path']}: {data['file']['reason']}: {data['file']['detail']}"
                )
    status, data, _ = client.call("POST", f"/uploads/{upload_id}/complete")
    if status != 202:
        raise _fail(status, data, "cannot complete the upload")
    state_path.unlink(missing_ok=True)
    click.echo(f"upload {upload_id} complete ({sent} bytes sent); processing")
    for line in problems:
        click.echo(f"  rejected: {line}", err=True)
    if no_wait:
        return
    while True:
        status, data, _ = client.call("GET", f"/uploads/{upload_id}")
        if status != 200:
            raise _fail(status, data, "cannot read the upload's status")
        info = data["upload"]
        if info["state"] not in ("open", "processing"):
            break
        time.sleep(2)
    click.echo(f"upload {upload_id}: {info['state']} {info['counts']}")
    for item in info["needs_attention"]:
        click.echo(
            f"  needs attention: {item['path']}: {item['reason']}: {item['detail']}", err=True
        )
    if info["state"] != "done":
        raise SystemExit(1)


# --- ingest (local, whole pipeline) -------------------------------------------------------------


@click.command("ingest")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--project", "-p", required=True, help="Project short name.")
@click.option("--label", default="", help="Label for the upload (no patient names).")
def ingest(directory: Path, project: str, label: str) -> None:
    """Ingest DIRECTORY into PROJECT locally: quarantine → de-identify → verify → ORMIR-MIDS."""
    from repository.cli import _app
    from repository.errors import MyoVaultError
    from repository.services.context import SYSTEM
    from repository.services.pipeline import PipelineError, ingest_directory

    with _app() as app, app.app_context():
        try:
            summary = ingest_directory(
                app.extensions["myovault"],
                SYSTEM,
                directory,
                project,
                label=label,
                progress=lambda message: click.echo(message),
            )
        except (PipelineError, MyoVaultError) as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"upload {summary['upload_id']}: {summary['state']} {summary['counts']}")
    for kind, status in summary["jobs"]:
        click.echo(f"  {kind}: {status}")
    for path, state, reason, detail in summary["needs_attention"]:
        click.echo(f"  needs attention: {path}: {state} ({reason}) {detail}", err=True)
    if summary["state"] != "done":
        raise SystemExit(1)


# --- fixity -------------------------------------------------------------------------------------


@click.group("fixity")
def fixity() -> None:
    """Fixity of stored objects."""


@fixity.command("check")
@click.option("--purge-quarantine", is_flag=True, help="Also delete originals past the retention.")
def fixity_check(purge_quarantine: bool) -> None:
    """Re-read every stored object and compare its sha256 with the record (exit 1 on damage)."""
    from repository.cli import _app
    from repository.services import fixity as fixity_service
    from repository.services.pipeline_deidentify import purge_expired

    with _app() as app:
        ext = app.extensions["myovault"]
        if purge_quarantine:
            retention = int(app.config.get("QUARANTINE_RETENTION_S", 0) or 0)
            click.echo(f"quarantine: {purge_expired(ext.db, ext.store, retention)} objects deleted")
        report = fixity_service.run_check(ext.db, ext.store)
    click.echo(report.summary())
    for problem in report.problems:
        click.echo(f"  {problem.status.value}: {problem.key}: {problem.detail}", err=True)
    if not report.ok:
        raise SystemExit(1)


# --- DICOM C-STORE receiver ---------------------------------------------------------------------


@click.command("dicom-receiver")
@click.option(
    "--ae-map",
    "ae_map",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSON {"CALLING_AE": {"project": "slug", "site": "CODE"}, …}',
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=11112, show_default=True, type=int)
@click.option("--ae-title", default="MYOVAULT", show_default=True)
@click.option("--quiet-seconds", default=60.0, show_default=True, type=float)
@click.option("--process-here", is_flag=True, help="Run the pipeline in this process (no worker).")
def dicom_receiver(
    ae_map: Path, host: str, port: int, ae_title: str, quiet_seconds: float, process_here: bool
) -> None:
    """Receive studies by DICOM C-STORE into the quarantine; process each once it is quiet."""
    from ingest.receiver import ReceiverConfigError, StudyReceiver, parse_ae_table
    from repository.cli import _app
    from repository.services.pipeline import run_local
    from repository.services.uploads import CStoreIngest

    try:
        table = parse_ae_table(json.loads(ae_map.read_text()))
    except (ValueError, ReceiverConfigError) as exc:
        raise click.ClickException(f"{ae_map}: {exc}") from exc
    with _app() as app, app.app_context():
        ext = app.extensions["myovault"]

        def finished(upload_id: int) -> None:
            if process_here:
                with app.app_context():
                    run_local(ext, upload_id)
            click.echo(f"study received: upload {upload_id} queued for processing")

        bridge = CStoreIngest(
            ext, dispatch=(lambda _id: None) if process_here else ext.dispatch, on_complete=finished
        )
        receiver = StudyReceiver(
            table,
            bridge.stage,
            bridge.study_complete,
            ae_title=ae_title,
            quiet_seconds=quiet_seconds,
        )
        bound = receiver.start(host, port)
        click.echo(f"listening as {ae_title} on {bound[0]}:{bound[1]} for {', '.join(table)}")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        # uploads left open by an earlier run (crash, restart mid-association): the mapping
        # study → upload is persisted, so new instances continue them; quiet ones complete
        resumed = bridge.complete_stale(quiet_seconds)
        if resumed:
            click.echo(f"completed {len(resumed)} quiet upload(s) left open by an earlier run")
        try:
            ticks = 0
            while not stop.wait(1.0):
                ticks += 1
                if ticks % max(int(quiet_seconds), 5) == 0:
                    bridge.complete_stale(quiet_seconds)
        except KeyboardInterrupt:
            pass
        finally:
            # no flush: a study still arriving stays open and continues after a restart
            receiver.stop(flush=False)
