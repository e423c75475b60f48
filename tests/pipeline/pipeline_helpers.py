"""Helpers for the pipeline tests: a tiny synthetic cohort and a chunked API client."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from repository.demo_cohort import write_cohort


def tiny_cohort(root: Path, n_subjects: int = 1) -> list[Path]:
    """1 subject x 2 visits, 16x16x2 voxels, 4 echoes: Dixon (4 parts) + MESE per visit."""
    write_cohort(root, n_subjects=n_subjects, shape_xyz=(16, 16, 2), n_echoes=4)
    return sorted(p for p in root.rglob("*.dcm"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create(client: FlaskClient, token: str, files: dict[str, bytes], slug: str = "alpha") -> Any:
    body = {"files": [{"path": k, "size": len(v), "sha256": sha(v)} for k, v in files.items()]}
    return client.post(f"/api/v1/projects/{slug}/uploads", json=body, headers=auth(token))


def send(
    client: FlaskClient, token: str, upload_id: int, file_id: int, data: bytes, offset: int
) -> Any:
    headers = auth(token) | {
        "Upload-Offset": str(offset),
        "Upload-Checksum": f"sha256 {sha(data)}",
        "Content-Type": "application/offset+octet-stream",
    }
    return client.patch(f"/api/v1/uploads/{upload_id}/files/{file_id}", data=data, headers=headers)


def upload_all(
    client: FlaskClient, token: str, files: dict[str, bytes], chunk: int = 4096
) -> dict[str, Any]:
    """Create, send every file in chunks and return the upload JSON."""
    response = create(client, token, files)
    assert response.status_code == 201, response.get_json()
    upload = response.get_json()["upload"]
    for entry in upload["files"]:
        data = files[entry["path"]]
        for offset in range(entry["offset"], len(data), chunk):
            r = send(
                client, token, upload["id"], entry["id"], data[offset : offset + chunk], offset
            )
            assert r.status_code == 200, r.get_json()
    return dict(upload)
