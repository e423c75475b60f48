"""Resumable upload API: chunks, offsets, checksums, limits, permissions, bad input."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from repository.models import AuditEvent, Job, Subject, UploadChunk
from repository.services.pipeline import run_local
from tests.app_fixtures import World, api_token
from tests.pipeline.pipeline_helpers import auth, create, send, sha, tiny_cohort, upload_all


@pytest.fixture
def token(app: Flask, world: World) -> str:
    return api_token(app, world.emails["investigator"])


@pytest.fixture(scope="module")
def cohort_bytes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("cohort")
    paths = tiny_cohort(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in paths}


def _one_visit(cohort: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in cohort.items() if "visit1" in k and "mese" in k}


def _complete_and_run(app: Flask, client: FlaskClient, token: str, upload_id: int) -> Any:
    r = client.post(f"/api/v1/uploads/{upload_id}/complete", headers=auth(token))
    assert r.status_code == 202, r.get_json()
    with app.app_context():
        run_local(app.extensions["myovault"], upload_id)
    return client.get(f"/api/v1/uploads/{upload_id}", headers=auth(token)).get_json()["upload"]


def _quarantine_keys(app: Flask) -> list[str]:
    return list(app.extensions["myovault"].store.iter_keys("quarantine/"))


def test_resume_after_interruption(app: Flask, client: FlaskClient, token: str) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes, sent in 4 KiB chunks
    body = b"\0" * 128 + b"DICM" + data  # sniffed as DICOM; never processed here
    r = create(client, token, {"a/IM1.dcm": body})
    upload = r.get_json()["upload"]
    fid = upload["files"][0]["id"]
    assert send(client, token, upload["id"], fid, body[:4096], 0).status_code == 200
    # the connection drops: the client asks where to resume
    head = client.head(f"/api/v1/uploads/{upload['id']}/files/{fid}", headers=auth(token))
    assert head.headers["Upload-Offset"] == "4096"
    # a stale client resending from 0 is told the right offset, nothing is stored twice
    stale = send(client, token, upload["id"], fid, body[:4096], 0)
    assert stale.status_code == 409
    assert stale.headers["Upload-Offset"] == "4096"
    for offset in range(4096, len(body), 4096):
        r = send(client, token, upload["id"], fid, body[offset : offset + 4096], offset)
        assert r.status_code == 200
    item = r.get_json()["file"]
    assert item["state"] == "received" and item["offset"] == len(body)
    with app.extensions["myovault"].db.transaction() as s:
        assert s.scalar(select(func.sum(UploadChunk.size))) == len(body)
    # the bytes in quarantine are encrypted: the plaintext marker is nowhere on disk
    objects = Path(app.config["STORAGE"])
    for path in objects.rglob("*"):
        if path.is_file():
            assert data[:64] not in path.read_bytes()


def test_chunk_checksum_mismatch_is_rejected(app: Flask, client: FlaskClient, token: str) -> None:
    body = b"\0" * 128 + b"DICM" + b"x" * 100
    upload = create(client, token, {"IM1.dcm": body}).get_json()["upload"]
    fid = upload["files"][0]["id"]
    headers = auth(token) | {"Upload-Offset": "0", "Upload-Checksum": f"sha256 {sha(b'other')}"}
    r = client.patch(f"/api/v1/uploads/{upload['id']}/files/{fid}", data=body, headers=headers)
    assert r.status_code == 422
    assert r.get_json()["error"] == "checksum_mismatch"
    assert _quarantine_keys(app) == []
    head = client.head(f"/api/v1/uploads/{upload['id']}/files/{fid}", headers=auth(token))
    assert head.headers["Upload-Offset"] == "0"


def test_whole_file_checksum_mismatch_discards_the_file(
    app: Flask, client: FlaskClient, token: str
) -> None:
    body = b"\0" * 128 + b"DICM" + b"y" * 100
    spec = {"path": "IM1.dcm", "size": len(body), "sha256": sha(b"something else")}
    r = client.post("/api/v1/projects/alpha/uploads", json={"files": [spec]}, headers=auth(token))
    upload = r.get_json()["upload"]
    r = send(client, token, upload["id"], upload["files"][0]["id"], body, 0)
    item = r.get_json()["file"]
    assert item["state"] == "rejected" and item["reason"] == "checksum_mismatch"
    assert _quarantine_keys(app) == []


def test_size_limit_answers_413(app: Flask, client: FlaskClient, token: str) -> None:
    app.config["MAX_UPLOAD_BYTES"] = 1000
    r = create(client, token, {"a.dcm": b"0" * 600, "b.dcm": b"1" * 600})
    assert r.status_code == 413
    assert r.get_json()["error"] == "too_large"


def test_path_traversal_in_declared_paths_is_refused(client: FlaskClient, token: str) -> None:
    r = create(client, token, {"../../etc/passwd": b"x"})
    assert r.status_code == 422


@pytest.mark.parametrize(
    ("who", "slug", "status"),
    [("researcher", "alpha", 403), ("researcher", "beta", 404), ("dac", "alpha", 403)],
)
def test_upload_to_a_project_you_may_not_write_to(
    app: Flask, client: FlaskClient, world: World, who: str, slug: str, status: int
) -> None:
    token = api_token(app, world.emails[who])
    r = create(client, token, {"IM1.dcm": b"x"}, slug=slug)
    assert r.status_code == status
    assert "Traceback" not in r.get_data(as_text=True)


def test_other_users_cannot_see_or_feed_an_upload(
    app: Flask, client: FlaskClient, token: str, world: World
) -> None:
    upload = create(client, token, {"IM1.dcm": b"\0" * 200}).get_json()["upload"]
    other = api_token(app, world.emails["other_owner"])
    assert client.get(f"/api/v1/uploads/{upload['id']}", headers=auth(other)).status_code == 404
    r = send(client, other, upload["id"], upload["files"][0]["id"], b"\0" * 200, 0)
    assert r.status_code == 404


def test_non_dicom_and_corrupt_files(
    app: Flask, client: FlaskClient, token: str, cohort_bytes: dict[str, bytes]
) -> None:
    good = _one_visit(cohort_bytes)
    first = next(iter(good.values()))
    files = dict(good) | {
        "notes.txt": b"patient list: nothing to see here\n" * 10,
        "broken.dcm": first[: len(first) // 3],  # truncated DICOM
    }
    upload = upload_all(client, token, files)
    states = {
        f["path"]: f["state"]
        for f in client.get(f"/api/v1/uploads/{upload['id']}", headers=auth(token)).get_json()[
            "upload"
        ]["files"]
    }
    assert states["notes.txt"] == "rejected"  # not stored at all
    result = _complete_and_run(app, client, token, upload["id"])
    by_path = {f["path"]: f for f in result["files"]}
    assert by_path["broken.dcm"]["state"] in ("quarantined", "rejected", "not_converted")
    assert by_path["broken.dcm"]["detail"]
    assert all(by_path[p]["state"] == "converted" for p in good)
    attention = {f["path"] for f in result["needs_attention"]}
    assert {"notes.txt", "broken.dcm"} <= attention
    assert result["state"] == "attention"


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_zip_archive_bomb_traversal_and_non_dicom_members(
    app: Flask, client: FlaskClient, token: str, cohort_bytes: dict[str, bytes]
) -> None:
    good = _one_visit(cohort_bytes)
    archive = _zip(
        {f"study/{k}": v for k, v in good.items()}
        | {
            "../../evil.dcm": next(iter(good.values())),
            "bomb.dcm": b"\0" * (4 * 1024 * 1024),
            "readme.txt": b"hello",
        }
    )
    upload = upload_all(client, token, {"cohort.zip": archive}, chunk=64 * 1024)
    result = _complete_and_run(app, client, token, upload["id"])
    by_path = {f["path"]: f for f in result["files"]}
    assert by_path["cohort.zip"]["state"] == "unpacked"
    reasons = {p.split("!", 1)[1]: f["reason"] for p, f in by_path.items() if "!" in p}
    assert reasons["bomb.dcm"] == "zip_bomb"
    assert reasons["readme.txt"] == "not_dicom"
    assert [r for n, r in reasons.items() if "evil" in n or n.startswith("member-")] == [
        "path_traversal"
    ]
    converted = [f for f in result["files"] if f["state"] == "converted"]
    assert len(converted) == len(good)
    assert _quarantine_keys(app) == []  # the archive and its members are gone


def test_pipeline_end_to_end_and_quarantine_deleted(
    app: Flask, client: FlaskClient, token: str, cohort_bytes: dict[str, bytes]
) -> None:
    upload = upload_all(client, token, cohort_bytes)
    result = _complete_and_run(app, client, token, upload["id"])
    assert result["state"] == "done", result["needs_attention"]
    assert result["counts"] == {"converted": len(cohort_bytes)}
    assert [(j["kind"], j["status"]) for j in result["jobs"]] == [
        ("pipeline.checksum", "done"),
        ("pipeline.deidentify", "done"),
        ("pipeline.verify", "done"),
        ("pipeline.convert", "done"),
        ("pipeline.fit", "done"),
        ("pipeline.segment", "done"),
    ]
    assert _quarantine_keys(app) == []
    ext = app.extensions["myovault"]
    with ext.db.transaction() as s:
        from repository.models import Series, Visit

        subjects = s.scalars(select(Subject)).all()
        assert len(subjects) == 1
        assert "DEMO" not in subjects[0].pseudonym
        assert subjects[0].sex == "M"  # the first synthetic subject
        visits = s.scalars(select(Visit).order_by(Visit.label)).all()
        assert [v.label for v in visits] == ["1", "2"]
        assert visits[1].day_offset == 365
        contrasts = sorted(x.contrast for x in s.scalars(select(Series)))
        assert contrasts.count("MESE") == 2
        assert {"DIXON_WATER", "DIXON_FAT"} <= set(contrasts)
        actions = set(s.scalars(select(AuditEvent.action)))
        from repository.models import Derivative

        derivatives = s.scalars(select(Derivative)).all()
        kinds = {d.kind for d in derivatives}
        assert {"T2", "FF"} <= kinds, kinds  # water T2 from MESE, FF from vendor Dixon
        maps = [
            d
            for d in derivatives
            if d.kind not in ("LABELS", "LABELS_JSON", "METRICS_TSV", "THUMBNAIL")
        ]
        assert all(d.software == "myovault-qmri" and d.software_version for d in maps)
        segmentations = [d for d in derivatives if d.kind == "LABELS"]
        assert segmentations and all(d.model_version for d in segmentations)
    assert {"upload.create", "upload.deidentify", "upload.convert"} <= actions
    assert "upload.quarantine_purged" in actions
    keys = list(ext.store.iter_keys("mids/"))
    assert any(k.endswith("_MESE.nii.gz") for k in keys)
    assert any(k.endswith("participants.tsv") for k in keys)
    assert not any("DEMO" in k for k in ext.store.iter_keys(""))
    report = client.get(f"/api/v1/uploads/{upload['id']}/report", headers=auth(token))
    assert report.headers["Content-Disposition"].startswith("attachment")
    deid = report.get_json()["deidentification"]
    assert deid["files_written"] == len(cohort_bytes) and deid["safe"]
    assert "DEMO" not in report.get_data(as_text=True)


def test_identical_reupload_is_detected_and_not_duplicated(
    app: Flask, client: FlaskClient, token: str, cohort_bytes: dict[str, bytes]
) -> None:
    files = _one_visit(cohort_bytes)
    first = upload_all(client, token, files)
    _complete_and_run(app, client, token, first["id"])
    with app.extensions["myovault"].db.transaction() as s:
        jobs_before = s.scalar(select(func.count()).select_from(Job))
    again = create(client, token, files).get_json()["upload"]
    assert {f["state"] for f in again["files"]} == {"duplicate"}
    result = _complete_and_run(app, client, token, again["id"])
    assert result["state"] == "done"
    with app.extensions["myovault"].db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == jobs_before
        from repository.models import Series

        assert s.scalar(select(func.count()).select_from(Series)) == 1


def test_mixed_patients_are_reported(
    app: Flask, client: FlaskClient, token: str, tmp_path: Path
) -> None:
    paths = tiny_cohort(tmp_path, n_subjects=2)
    files = {
        p.relative_to(tmp_path).as_posix(): p.read_bytes()
        for p in paths
        if "visit1" in p.parent.name and "mese" in p.name
    }
    upload = upload_all(client, token, files)
    _complete_and_run(app, client, token, upload["id"])
    report = client.get(f"/api/v1/uploads/{upload['id']}/report", headers=auth(token)).get_json()
    assert len(report["deidentification"]["subjects"]) == 2
    assert any("mixed patients" in w for w in report["deidentification"]["warnings"])
    with app.extensions["myovault"].db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Subject)) == 2


def test_incomplete_upload_cannot_be_completed(client: FlaskClient, token: str) -> None:
    upload = create(client, token, {"IM1.dcm": b"\0" * 200}).get_json()["upload"]
    r = client.post(f"/api/v1/uploads/{upload['id']}/complete", headers=auth(token))
    assert r.status_code == 409


def test_upload_routes_are_in_the_openapi_document(client: FlaskClient) -> None:
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    assert "/api/v1/uploads/{upload_id}/files/{file_id}" in paths
    assert "patch" in paths["/api/v1/uploads/{upload_id}/files/{file_id}"]


def test_cancel_deletes_the_received_bytes(app: Flask, client: FlaskClient, token: str) -> None:
    body = b"\0" * 128 + b"DICM" + b"q" * 5000
    upload = create(client, token, {"IM1.dcm": body}).get_json()["upload"]
    send(client, token, upload["id"], upload["files"][0]["id"], body[:4096], 0)
    assert _quarantine_keys(app)
    r = client.delete(f"/api/v1/uploads/{upload['id']}", headers=auth(token))
    assert r.status_code == 200 and r.get_json()["upload"]["state"] == "cancelled"
    assert _quarantine_keys(app) == []
    again = send(client, token, upload["id"], upload["files"][0]["id"], body[4096:], 4096)
    assert again.status_code == 409


def test_last_chunk_never_rereads_the_file_and_the_pipeline_checks_it(
    app: Flask, client: FlaskClient, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks served by different web processes (no running digest here): the last chunk
    reads at most the first chunk (to sniff the type); pipeline.checksum finds the mismatch."""
    from repository.services import uploads

    body = b"\0" * 128 + b"DICM" + bytes(range(256)) * 64
    spec = {"path": "IM1.dcm", "size": len(body), "sha256": sha(body[:-1] + b"?")}  # lies
    r = client.post("/api/v1/projects/alpha/uploads", json={"files": [spec]}, headers=auth(token))
    upload = r.get_json()["upload"]
    fid = upload["files"][0]["id"]
    store = app.extensions["myovault"].store
    opened: list[str] = []
    real_open = store.open

    def counting_open(key: str, **kwargs: Any) -> Any:
        opened.append(key)
        return real_open(key, **kwargs)

    monkeypatch.setattr(store, "open", counting_open)
    for offset in range(0, len(body), 4096):
        uploads._RUNNING.clear()  # the next chunk lands on another process
        r = send(client, token, upload["id"], fid, body[offset : offset + 4096], offset)
        assert r.status_code == 200
    assert len(opened) == 1  # the first chunk, for the DICM sniff; never the whole file
    assert r.get_json()["file"]["state"] == "received"
    done = _complete_and_run(app, client, token, upload["id"])
    (item,) = done["files"]
    assert item["state"] == "rejected" and item["reason"] == "checksum_mismatch"
    assert done["state"] == "attention"
    assert [j["kind"] for j in done["jobs"]] == ["pipeline.checksum"]
    assert _quarantine_keys(app) == []
    with app.extensions["myovault"].db.transaction() as s:
        actions = set(s.scalars(select(AuditEvent.action)))
    assert "upload.file_checksum_failed" in actions


def test_last_chunk_checks_the_running_digest_in_one_process(
    app: Flask, client: FlaskClient, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = b"\0" * 128 + b"DICM" + bytes(range(256)) * 64
    upload = create(client, token, {"IM1.dcm": body}).get_json()["upload"]
    fid = upload["files"][0]["id"]
    store = app.extensions["myovault"].store
    monkeypatch.setattr(store, "open", lambda *a, **k: pytest.fail("the file was re-read"))
    for offset in range(0, len(body), 4096):
        r = send(client, token, upload["id"], fid, body[offset : offset + 4096], offset)
    assert r.get_json()["file"]["state"] == "received"
