"""Audited downloads: short-lived links bound to a user, streamed zip / BagIt packages.

A package holds only subjects that are in the grant's cohort *and* still shareable with a
consent that still covers the grant's intended use (withdrawals apply to every later download).
Files are decrypted and streamed one chunk at a time (memory does not grow with file size);
each object's sha256 is verified while it streams (``EncryptedObjectStore.open``), and the
manifest carries the same checksums. Every package has a licence / conditions file, and every
download is logged (who, what, when, which grant) before the first byte leaves.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from consent.duo import IntendedUse
from repository.errors import Forbidden, NotFound, ValidationError
from repository.models import (
    Derivative,
    Download,
    DownloadLink,
    Grant,
    MuscleMetric,
    Project,
    Series,
    StoredObject,
    Subject,
    Visit,
)
from repository.models._types import utcnow
from repository.services import audit
from repository.services.access import evaluate, get_grant, grant_state
from repository.services.context import Actor

LINK_TTL_S = 300
LAYOUTS = ("bagit", "zip")


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_link(
    session: Session,
    actor: Actor,
    grant_id: int,
    *,
    layout: str = "bagit",
    subject_pseudonym: str | None = None,
    ttl_s: int = LINK_TTL_S,
) -> tuple[DownloadLink, str]:
    """A single-use link for the grant holder, valid ``ttl_s`` seconds; returns (row, token)."""
    grant = get_grant(session, actor, grant_id)
    if actor.user is None or grant.user_id != actor.user.id:
        raise Forbidden("only the grant holder can download")
    state = grant_state(grant)
    if state != "active":
        raise Forbidden(f"this grant is {state.replace('_', ' ')}")
    if layout not in LAYOUTS:
        raise ValidationError(f"layout must be one of {', '.join(LAYOUTS)}")
    subject_id = None
    if subject_pseudonym:
        subject_id = session.scalar(
            select(Subject.id).where(
                Subject.project_id == grant.project_id, Subject.pseudonym == subject_pseudonym
            )
        )
        if subject_id is None or subject_id not in (grant.subject_ids or []):
            raise NotFound("no such subject in this grant")
    token = secrets.token_urlsafe(32)
    link = DownloadLink(
        token_hash=_hash_token(token),
        grant_id=grant.id,
        user_id=actor.user.id,
        subject_id=subject_id,
        layout=layout,
        expires_at=utcnow() + timedelta(seconds=ttl_s),
    )
    session.add(link)
    session.flush()
    audit.record(
        session,
        actor,
        "download.link",
        object_type="grant",
        object_id=grant.id,
        project_id=grant.project_id,
        details={"link_id": link.id, "layout": layout, "subject_id": subject_id},
    )
    return link, token


@dataclass(frozen=True)
class PackageFile:
    path: str  # inside the payload (data/ for BagIt)
    sha256: str
    size: int
    object_key: str | None = None  # streamed from the store
    content: bytes | None = None  # generated (metrics tables)
    kind: str = ""
    subject: str = ""


@dataclass(frozen=True)
class PackagePlan:
    name: str
    layout: str
    download_id: int
    files: tuple[PackageFile, ...]
    licence: str
    conditions: str
    info: dict[str, Any]


def _mids_path(pseudonym: str, visit: Visit, series: Series, obj: StoredObject) -> str:
    if series.mids_path:
        path = PurePosixPath(series.mids_path)
        if not path.is_absolute() and ".." not in path.parts:
            return str(path)
    suffix = "".join(PurePosixPath(obj.key).suffixes) or ".bin"
    return f"sub-{pseudonym}/ses-{visit.label}/mr-anat/sub-{pseudonym}_ses-{visit.label}_{series.contrast}-{series.id}{suffix}"


def _derivative_path(pseudonym: str, visit: Visit, der: Derivative, obj: StoredObject) -> str:
    suffix = "".join(PurePosixPath(obj.key).suffixes) or ".bin"
    return (
        f"derivatives/myovault/sub-{pseudonym}/ses-{visit.label}/"
        f"sub-{pseudonym}_ses-{visit.label}_{der.kind.lower()}-v{der.version}-{der.id}{suffix}"
    )


def _metrics_tsv(rows: list[tuple[str, str, MuscleMetric]]) -> bytes:
    out = io.StringIO()
    out.write("subject\tsession\tmuscle\tside\tmetric\tvalue\tunit\tmodel_version\n")
    for pseudonym, visit_label, m in rows:
        out.write(
            f"{pseudonym}\t{visit_label}\t{m.muscle}\t{m.side}\t{m.metric}\t{m.value!r}\t{m.unit}\t{m.model_version}\n"
        )
    return out.getvalue().encode()


def included_subjects(session: Session, grant: Grant, only: int | None = None) -> list[Subject]:
    """The grant's subjects that may still be shared for its intended use, today."""
    project = session.get(Project, grant.project_id)
    assert project is not None  # noqa: S101
    ids = [int(i) for i in grant.subject_ids or []]
    if only is not None:
        ids = [i for i in ids if i == only]
    use = None
    if grant.request_id is not None:
        from repository.models import AccessRequest

        req = session.get(AccessRequest, grant.request_id)
        if req is not None and req.intended_use:
            use = IntendedUse.from_json(req.intended_use)
    if use is None:
        raise ValidationError("this grant has no recorded intended use")
    matched = set(evaluate(session, project, use, restrict_to=ids).matched_ids)
    return list(
        session.scalars(select(Subject).where(Subject.id.in_(matched)).order_by(Subject.pseudonym))
    )


def open_package(session: Session, actor: Actor, token: str) -> PackagePlan:
    """Check the link (user, expiry, single use, grant still active), plan and log the download."""
    link = session.scalar(select(DownloadLink).where(DownloadLink.token_hash == _hash_token(token)))
    if link is None or actor.user is None or link.user_id != actor.user.id:
        raise NotFound("no such download link")  # another user's link looks like no link
    now = utcnow()
    if link.used_at is not None:
        raise Forbidden("this download link was already used; create a new one")
    if link.expires_at <= now:
        raise Forbidden("this download link has expired; create a new one")
    grant = session.get(Grant, link.grant_id)
    assert grant is not None  # noqa: S101
    state = grant_state(grant, now)
    if state != "active":
        raise Forbidden(f"this grant is {state.replace('_', ' ')}")
    link.used_at = now
    project = session.get(Project, grant.project_id)
    assert project is not None  # noqa: S101
    subjects = included_subjects(session, grant, link.subject_id)
    kinds = set(grant.data_level.split(","))
    files: list[PackageFile] = []
    metric_rows: list[tuple[str, str, MuscleMetric]] = []
    for subject in subjects:
        visits = session.scalars(
            select(Visit).where(Visit.subject_id == subject.id).order_by(Visit.label)
        ).all()
        for visit in visits:
            if "images" in kinds:
                for series, obj in session.execute(
                    select(Series, StoredObject)
                    .join(StoredObject, StoredObject.id == Series.object_id)
                    .where(Series.visit_id == visit.id, StoredObject.deleted_at.is_(None))
                    .order_by(Series.id)
                ).all():
                    files.append(
                        PackageFile(
                            _mids_path(subject.pseudonym, visit, series, obj),
                            obj.sha256,
                            obj.size,
                            object_key=obj.key,
                            kind="image",
                            subject=subject.pseudonym,
                        )
                    )
            if "maps" in kinds:
                for der, obj in session.execute(
                    select(Derivative, StoredObject)
                    .join(StoredObject, StoredObject.id == Derivative.object_id)
                    .where(Derivative.visit_id == visit.id, StoredObject.deleted_at.is_(None))
                    .order_by(Derivative.id)
                ).all():
                    files.append(
                        PackageFile(
                            _derivative_path(subject.pseudonym, visit, der, obj),
                            obj.sha256,
                            obj.size,
                            object_key=obj.key,
                            kind=der.kind,
                            subject=subject.pseudonym,
                        )
                    )
            if "metrics" in kinds:
                for metric in session.scalars(
                    select(MuscleMetric)
                    .where(MuscleMetric.visit_id == visit.id)
                    .order_by(MuscleMetric.muscle, MuscleMetric.side, MuscleMetric.metric)
                ):
                    metric_rows.append((subject.pseudonym, visit.label, metric))
    if "metrics" in kinds:
        table = _metrics_tsv(metric_rows)
        files.append(
            PackageFile(
                "derivatives/myovault/muscle_metrics.tsv",
                hashlib.sha256(table).hexdigest(),
                len(table),
                content=table,
                kind="metrics",
            )
        )
    paths = [f.path for f in files]
    if len(paths) != len(set(paths)):
        raise ValidationError("two files map to the same package path; report this to the owner")
    name = f"myovault-{project.slug}-grant{grant.id}-{now:%Y%m%dT%H%M%SZ}"
    download = Download(
        grant_id=grant.id,
        user_id=actor.user.id,
        contents={
            "layout": link.layout,
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in files],
            "data": grant.data_level,
        },
        subject_ids=[s.id for s in subjects],
        status="started",
    )
    session.add(download)
    session.flush()
    audit.record(
        session,
        actor,
        "download",
        object_type="grant",
        object_id=grant.id,
        project_id=project.id,
        details={
            "download_id": download.id,
            "link_id": link.id,
            "subjects": len(subjects),
            "files": len(files),
            "bytes": sum(f.size for f in files),
            "layout": link.layout,
        },
    )
    info = {
        "Source-Organization": "MyoVault",
        "External-Identifier": name,
        "Project": project.slug,
        "Grant": str(grant.id),
        "Grant-Expires": grant.expires_at.isoformat(),
        "Recipient": actor.user.email,
        "Bagging-Date": now.date().isoformat(),
        "Payload-Oxum": f"{sum(f.size for f in files)}.{len(files)}",
    }
    return PackagePlan(
        name=name,
        layout=link.layout,
        download_id=download.id,
        files=tuple(files),
        licence=project.licence or "No licence was set by the project owner; see CONDITIONS.txt.",
        conditions=grant.conditions,
        info=info,
    )


class _Sink(io.RawIOBase):
    """A write-only, unseekable buffer the zip writer fills and the generator drains."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.written += len(chunk)
        return len(chunk)

    def drain(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def _tag_files(plan: PackagePlan) -> list[tuple[str, bytes]]:
    manifest = "".join(f"{f.sha256}  data/{f.path}\n" for f in plan.files).encode()
    manifest_json = json.dumps(
        {
            "package": plan.name,
            "info": plan.info,
            "files": [
                {
                    "path": f"data/{f.path}",
                    "sha256": f.sha256,
                    "size": f.size,
                    "kind": f.kind,
                    "subject": f.subject,
                }
                for f in plan.files
            ],
        },
        indent=2,
    ).encode()
    tags = [
        ("bagit.txt", b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"),
        ("bag-info.txt", "".join(f"{k}: {v}\n" for k, v in plan.info.items()).encode()),
        ("manifest-sha256.txt", manifest),
        ("manifest.json", manifest_json),
        ("LICENSE.txt", plan.licence.encode() + b"\n"),
        ("CONDITIONS.txt", plan.conditions.encode() + b"\n"),
    ]
    if plan.layout == "zip":
        tags = [t for t in tags if t[0] not in ("bagit.txt", "bag-info.txt")]
    tagmanifest = "".join(
        f"{hashlib.sha256(body).hexdigest()}  {name}\n"
        for name, body in tags
        if name != "manifest.json"
    ).encode()
    if plan.layout == "bagit":
        tags.append(("tagmanifest-sha256.txt", tagmanifest))
    return tags


def stream_package(
    plan: PackagePlan,
    store: Any,
    on_done: Callable[[int, bool], None] | None = None,
) -> Iterator[bytes]:
    """Yield the zip bytes of ``plan``; ``on_done(bytes_sent, complete)`` runs at the end.

    Stored files are not recompressed (MRI NIfTI is already gzip); text files are deflated.
    """
    sink = _Sink()
    complete = False
    try:
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            root = plan.name
            for name, body in _tag_files(plan):
                archive.writestr(f"{root}/{name}", body, compress_type=zipfile.ZIP_DEFLATED)
                yield sink.drain()
            for item in plan.files:
                target = f"{root}/data/{item.path}"
                if item.content is not None:
                    archive.writestr(target, item.content, compress_type=zipfile.ZIP_DEFLATED)
                    yield sink.drain()
                    continue
                info = zipfile.ZipInfo(target, date_time=(2000, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_STORED
                info.file_size = item.size
                with archive.open(info, "w", force_zip64=True) as out:
                    for chunk in store.open(item.object_key, expected_sha256=item.sha256):
                        out.write(chunk)
                        yield sink.drain()
                yield sink.drain()
        complete = True
        yield sink.drain()
    finally:
        if on_done is not None:
            on_done(sink.written, complete)


def finish(
    db_transaction: Callable[[], Any], download_id: int, bytes_sent: int, complete: bool
) -> None:
    """Record the outcome of a streamed download (its own transaction)."""
    with db_transaction() as session:
        row = session.get(Download, download_id)
        if row is not None:
            row.bytes_sent = bytes_sent
            row.status = "complete" if complete else "failed"
