"""PROV "who uploaded" comes from the Upload rows (the uploader user), not from audit events."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import select

from repository.models import (
    AuditEvent,
    FileState,
    Project,
    Series,
    StoredObject,
    Subject,
    Upload,
    UploadFile,
    User,
)
from repository.services import provenance
from tests.consent.consent_helpers import add_subject, user

DICOM = b"DICM-deidentified-bytes" * 20


def test_uploader_and_upload_activity_come_from_upload_rows(app, world):
    ext = app.extensions["myovault"]
    add_subject(app, "alpha", "S1", image=b"image" * 40, t2map=b"map" * 40)
    info = ext.store.put("deid/p1/ab/s1.dcm", DICOM, subject="S1")
    with ext.db.transaction() as session:
        project = session.scalar(select(Project).where(Project.slug == "alpha"))
        subject = session.scalar(select(Subject).where(Subject.pseudonym == "S1"))
        uploader = session.scalar(select(User).where(User.email == world.emails["investigator"]))
        series = session.scalar(select(Series))
        deid = StoredObject(
            key=info.key,
            size=info.size,
            sha256=info.sha256,
            key_id=info.key_id,
            subject_id=subject.id,
            kind="dicom_deid",
        )
        session.add(deid)
        session.flush()
        upload = Upload(project_id=project.id, created_by_id=uploader.id, source="web")
        session.add(upload)
        session.flush()
        session.add(
            UploadFile(
                upload_id=upload.id,
                path="scan/IM0001.dcm",
                size=len(DICOM),
                sha256=hashlib.sha256(DICOM).hexdigest(),
                state=FileState.CONVERTED,
                subject_pseudonym="S1",
                deid_object_id=deid.id,
                series_id=series.id,
            )
        )
        # no audit event names the uploader: the Upload row alone must
        assert not session.scalars(
            select(AuditEvent).where(AuditEvent.actor_id == uploader.id)
        ).all()
        ids = {"deid": deid.id, "series": series.object_id, "upload": upload.id}
        doc = json.loads(
            provenance.subject_prov(session, user(session, world.emails["owner"]), project, "S1")
        )
        uploader_id = uploader.id
    agent = f"mv:user-{uploader_id}"
    assert doc["agent"][agent]["prov:label"] == "Investigator"
    activity = doc["activity"][f"mv:upload-{ids['upload']}"]
    assert activity["prov:label"] == "upload and de-identify (web)"
    generated = {g["prov:entity"] for g in doc["wasGeneratedBy"].values()}
    assert f"mv:object-{ids['deid']}" in generated
    associated = {(a["prov:activity"], a["prov:agent"]) for a in doc["wasAssociatedWith"].values()}
    assert (f"mv:upload-{ids['upload']}", agent) in associated
    attributed = {(a["prov:entity"], a["prov:agent"]) for a in doc["wasAttributedTo"].values()}
    assert (f"mv:object-{ids['deid']}", agent) in attributed
    assert (f"mv:object-{ids['series']}", agent) in attributed
    derived = {
        (d["prov:generatedEntity"], d["prov:usedEntity"]) for d in doc["wasDerivedFrom"].values()
    }
    assert (f"mv:object-{ids['series']}", f"mv:object-{ids['deid']}") in derived
    assert doc["entity"][f"mv:object-{ids['deid']}"]["mv:sha256"] == info.sha256
    assert "scan/IM0001.dcm" not in json.dumps(doc)  # upload paths may carry identifiers
