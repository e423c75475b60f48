"""Services end to end (SQLite and PostgreSQL): consent → request → DAC → grant → download →
withdrawal → erasure, with audit events and notifications."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import date, timedelta

import pytest
from sqlalchemy import select

from repository.errors import Conflict, Forbidden, NotFound, ValidationError
from repository.models import (
    AuditEvent,
    Consent,
    Download,
    Grant,
    MuscleMetric,
    Notification,
    Project,
    StoredObject,
    Subject,
)
from repository.models._types import utcnow
from repository.security import policy
from repository.services import access, audit, downloads, erasure, provenance
from repository.services import consent as consent_service
from repository.services.consent_filters import shareable_subject_clause
from repository.storage.errors import StorageError
from tests.consent.consent_helpers import add_subject, give_consent, user

IMAGE = b"\x1f\x8b-fake-nifti-image-" * 200
T2MAP = b"\x1f\x8b-fake-t2-map-" * 100

USE = {"purpose": "HMB", "country": "DE"}


@pytest.fixture
def cohort(app, world):
    """Five subjects in alpha with different consents."""
    inv = world.emails["investigator"]
    for name in ("S1", "S2", "S3", "S4", "S5"):
        add_subject(app, "alpha", name, image=IMAGE + name.encode(), t2map=T2MAP + name.encode())
    give_consent(app, inv, "alpha", "S1", "HMB")
    give_consent(app, inv, "alpha", "S2", "GRU GS(DE,FR)")
    give_consent(app, inv, "alpha", "S3", "DS(MONDO:0008029)")
    give_consent(app, inv, "alpha", "S5", "HMB IRB")
    return app


def _project(session, slug="alpha"):
    return session.scalar(select(Project).where(Project.slug == slug))


def _request(app, world, **kw):
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        req = access.create_request(
            session,
            user(session, world.emails["researcher"]),
            _project(session),
            purpose="Muscle water T2 as a biomarker of disease activity in FSHD.",
            use=kw.pop("use", USE),
            institution="Uni Example",
            data_kinds=["images", "maps", "metrics"],
            store=ext.store,
            **kw,
        )
        return req.id


def _approve(app, world, request_id):
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        dac = user(session, world.emails["dac"])
        access.cast_vote(session, dac, request_id, "approve", "sound protocol")
        decision = access.decide(
            session, dac, request_id, "approved", "Consent and ethics in order."
        )
        grant = session.scalar(select(Grant).where(Grant.request_id == request_id))
        assert decision.outcome == "approved"
        return grant.id


def test_consent_versions_are_appended_and_withdrawal_leaves_the_shareable_set(cohort, world):
    ext = cohort.extensions["myovault"]
    give_consent(cohort, world.emails["investigator"], "alpha", "S1", "HMB NCU", form_version="1.1")
    with ext.db.transaction() as session:
        project, inv = _project(session), user(session, world.emails["investigator"])
        versions = consent_service.history(session, inv, project, "S1")
        assert [(c.version, c.duo_terms) for c in versions] == [(1, ["HMB"]), (2, ["HMB", "NCU"])]
        shareable = set(
            session.scalars(select(Subject.pseudonym).where(shareable_subject_clause()))
        )
        assert shareable == {"S1", "S2", "S3", "S5"}
        consent_service.withdraw(session, inv, project, "S1", reason="participant asked")
    with ext.db.transaction() as session:
        shareable = set(
            session.scalars(select(Subject.pseudonym).where(shareable_subject_clause()))
        )
        assert shareable == {"S2", "S3", "S5"}
        assert (
            session.scalar(select(Consent).where(Consent.version == 3)).withdrawn_on == date.today()
        )
        with pytest.raises(Conflict):
            consent_service.withdraw(
                session, user(session, world.emails["owner"]), _project(session), "S1"
            )
        with pytest.raises(Forbidden):
            consent_service.record_consent(
                session, user(session, world.emails["dac"]), _project(session), {"pseudonym": "S1"}
            )
        with pytest.raises(NotFound):  # beta is private: its existence is not revealed
            consent_service.overview(
                session, user(session, world.emails["investigator"]), _project(session, "beta")
            )


def test_bulk_import_is_all_or_nothing(cohort, world):
    ext = cohort.extensions["myovault"]
    header = "pseudonym\tform\tform_version\tsigned_on\tduo_terms\tlawful_basis\tspecial_category_basis\n"
    good = "S4\tF\t1\t2024-02-01\tHMB\t6(1)(e)\t9(2)(j)\n"
    bad = "NOPE\tF\t1\t2024-02-01\tHMB\t6(1)(e)\t9(2)(j)\nS1\tF\t1\t2024-02-01\tXX\t6(1)(e)\t9(2)(j)\n"
    with ext.db.transaction() as session:
        inv = user(session, world.emails["investigator"])
        result = consent_service.import_table(session, inv, _project(session), header + good + bad)
        assert not result.ok and result.created == 0
        assert [e.line for e in result.errors] == [3, 4]
        assert "no subject 'NOPE'" in result.errors[0].problems[0]
        assert (
            session.scalar(select(Consent).join(Subject).where(Subject.pseudonym == "S4")) is None
        )
        result = consent_service.import_table(session, inv, _project(session), header + good)
        assert result.ok and result.created == 1


def test_request_lists_only_matching_subjects_with_reasons(cohort, world):
    ext = cohort.extensions["myovault"]
    with ext.db.transaction() as session:
        result = access.preview(
            session, user(session, world.emails["researcher"]), _project(session), use=USE
        )
    assert result.candidates == 5 and len(result.matched_ids) == 2  # S1 (HMB), S2 (GRU, DE)
    assert result.exclusions == {
        "no consent recorded": 1,
        "consent (DS) does not cover HMB use": 1,
        "ethics approval required (IRB)": 1,
    }
    assert result.public()["matched"] == "<5"  # small cells suppressed for requesters
    request_id = _request(cohort, world, ethics_document=b"%PDF ethics approval")
    with ext.db.transaction() as session:
        req = access.get_request(session, user(session, world.emails["researcher"]), request_id)
        assert len(req.matched_subject_ids) == 3  # the ethics approval unlocks S5
        assert req.ethics_object_id is not None
        with pytest.raises(NotFound):  # another researcher cannot see it
            access.get_request(session, user(session, world.emails["other_owner"]), request_id)
        notes = session.scalars(
            select(Notification).where(Notification.kind == "access.new_request")
        ).all()
        assert [n.to_email for n in notes] == [world.emails["dac"]]
    with pytest.raises(Conflict):
        _request(cohort, world)
    with pytest.raises(ValidationError, match="no participant"), ext.db.transaction() as session:
        access.create_request(
            session,
            user(session, world.emails["owner"]),
            _project(session),
            purpose="Ancestry research on muscle imaging of everyone.",
            use={"purpose": "POA"},
            institution="X",
            data_kinds=["metrics"],
        )


@pytest.mark.parametrize(
    ("rule", "members", "votes", "quorum", "outcome"),
    [
        ("majority", 3, (2, 0, 0), 0, "approved"),
        ("majority", 3, (1, 1, 0), 0, None),
        ("majority", 3, (1, 1, 1), 0, "refused"),
        ("majority", 4, (2, 2, 0), 0, "refused"),
        ("unanimity", 3, (2, 0, 0), 0, None),
        ("unanimity", 3, (3, 0, 0), 0, "approved"),
        ("unanimity", 3, (2, 1, 0), 0, "refused"),
        ("quorum", 5, (1, 0, 0), 2, None),
        ("quorum", 5, (2, 1, 0), 3, "approved"),
        ("quorum", 5, (1, 1, 2), 2, "refused"),
    ],
)
def test_decision_rules(rule, members, votes, quorum, outcome):
    assert access.decide_rule(rule, members, *votes, quorum) == outcome


def test_dac_grant_download_withdraw_erase(cohort, world):
    ext = cohort.extensions["myovault"]
    request_id = _request(cohort, world)
    with ext.db.transaction() as session:
        owner = user(session, world.emails["owner"])
        with pytest.raises(Forbidden):  # owners are not on the committee
            access.cast_vote(session, owner, request_id, "approve")
        dac = user(session, world.emails["dac"])
        access.add_comment(session, dac, request_id, "Looks fine.")
        with pytest.raises(Conflict, match="do not support"):
            access.decide(session, dac, request_id, "approved", "too early")
    grant_id = _approve(cohort, world, request_id)
    with ext.db.transaction() as session:
        researcher = user(session, world.emails["researcher"])
        alpha = _project(session)
        assert not policy.can(session, researcher, "project.download", alpha)  # agreement pending
        with pytest.raises(Forbidden):
            downloads.create_link(session, researcher, grant_id)
        access.accept_conditions(session, researcher, grant_id)
        assert policy.can(session, researcher, "project.download", alpha)
        link, token = downloads.create_link(session, researcher, grant_id)
    with ext.db.transaction() as session, pytest.raises(NotFound):  # links are bound to users
        downloads.open_package(session, user(session, world.emails["owner"]), token)
    with ext.db.transaction() as session:
        plan = downloads.open_package(session, user(session, world.emails["researcher"]), token)
    body = b"".join(
        downloads.stream_package(
            plan,
            ext.store,
            lambda n, ok: downloads.finish(ext.db.transaction, plan.download_id, n, ok),
        )
    )
    archive = zipfile.ZipFile(io.BytesIO(body))
    names = archive.namelist()
    root = plan.name
    assert f"{root}/bagit.txt" in names and f"{root}/LICENSE.txt" in names
    assert f"{root}/data/sub-S1/ses-01/mr-anat/sub-S1_ses-01_mese.nii.gz" in names
    assert (
        archive.read(f"{root}/data/sub-S1/ses-01/mr-anat/sub-S1_ses-01_mese.nii.gz")
        == IMAGE + b"S1"
    )
    manifest = archive.read(f"{root}/manifest-sha256.txt").decode().splitlines()
    assert len(manifest) == 5  # 2 subjects x (image + map) + metrics table
    for line in manifest:
        digest, path = line.split("  ", 1)
        assert hashlib.sha256(archive.read(f"{root}/{path}")).hexdigest() == digest
    tsv = archive.read(f"{root}/data/derivatives/myovault/muscle_metrics.tsv").decode()
    assert "S1\t01\tsemimembranosus\tL\tt2_water_mean\t35.5\tms" in tsv
    assert "S3" not in tsv and "S4" not in tsv
    with ext.db.transaction() as session:
        row = session.get(Download, plan.download_id)
        assert row.status == "complete" and row.bytes_sent == len(body)
        with pytest.raises(Forbidden, match="already used"):
            downloads.open_package(session, user(session, world.emails["researcher"]), token)

    # withdrawal: the grant holder is told, the next package excludes the subject
    with ext.db.transaction() as session:
        consent_service.withdraw(
            session, user(session, world.emails["investigator"]), _project(session), "S1"
        )
    with ext.db.transaction() as session:
        note = session.scalars(
            select(Notification).where(Notification.kind == "consent.withdrawn")
        ).one()
        assert note.to_email == world.emails["researcher"] and "S1" not in note.body
        _, token = downloads.create_link(
            session, user(session, world.emails["researcher"]), grant_id
        )
    with ext.db.transaction() as session:
        plan = downloads.open_package(session, user(session, world.emails["researcher"]), token)
        assert {f.subject for f in plan.files if f.subject} == {"S2"}

    # erasure: key destroyed, objects deleted, tombstone, bytes unrecoverable
    with ext.db.transaction() as session:
        objs = session.scalars(
            select(StoredObject)
            .join(Subject, Subject.id == StoredObject.subject_id)
            .where(Subject.pseudonym == "S2")
        ).all()
        keys = [(o.key, o.sha256) for o in objs]
    backup = {k: b"".join(ext.store.backend.get_stream(k)) for k, _ in keys}  # a backup copy
    with ext.db.transaction() as session:
        report = erasure.erase_subject(
            session,
            user(session, world.emails["owner"]),
            _project(session),
            "S2",
            reason="participant request (Art. 17)",
            store=ext.store,
        )
        assert (
            report.keys_destroyed == 1
            and report.objects_deleted == 2
            and report.metrics_deleted == 2
        )
    for key, _ in keys:
        assert not ext.store.exists(key)
        ext.store.backend.put_stream(key, iter([backup[key]]))  # restore the backup copy...
        with pytest.raises(StorageError):  # ...it cannot be decrypted with any remaining key
            ext.store.read_bytes(key)
    with ext.db.transaction() as session:
        assert (
            session.scalar(select(MuscleMetric).join(Subject).where(Subject.pseudonym == "S2"))
            is None
        )
        tomb = session.scalars(select(AuditEvent).where(AuditEvent.action == "subject.erase")).one()
        assert tomb.details["pseudonym"] == "S2" and tomb.details["tombstone"] is True
        assert audit.verify_chain(session).ok
        actions = set(session.scalars(select(AuditEvent.action)))
        assert {
            "consent.record",
            "access.request",
            "access.vote",
            "access.decide",
            "grant.accept_conditions",
            "download.link",
            "download",
            "consent.withdraw",
            "subject.erase",
        } <= actions
        # S2 is gone from every future package
        _, token = downloads.create_link(
            session, user(session, world.emails["researcher"]), grant_id
        )
    with ext.db.transaction() as session:
        plan = downloads.open_package(session, user(session, world.emails["researcher"]), token)
        assert [f.kind for f in plan.files] == ["metrics"]


def test_revocation_and_expiry_are_immediate(cohort, world):
    ext = cohort.extensions["myovault"]
    grant_id = _approve(cohort, world, _request(cohort, world))
    with ext.db.transaction() as session:
        researcher = user(session, world.emails["researcher"])
        access.accept_conditions(session, researcher, grant_id)
        _, token = downloads.create_link(session, researcher, grant_id)
        access.revoke_grant(
            session, user(session, world.emails["owner"]), grant_id, "breach of agreement"
        )
    with ext.db.transaction() as session:
        researcher = user(session, world.emails["researcher"])
        assert not policy.can(session, researcher, "project.download", _project(session))
        with pytest.raises(Forbidden, match="revoked"):
            downloads.open_package(session, researcher, token)
        grant = session.get(Grant, grant_id)
        grant.revoked_at = None
        grant.expires_at = utcnow() - timedelta(seconds=1)
    with ext.db.transaction() as session, pytest.raises(Forbidden, match="expired"):
        downloads.create_link(session, user(session, world.emails["researcher"]), grant_id)


def test_reminder_then_escalation_job(cohort, world):
    from repository.services import jobs

    ext = cohort.extensions["myovault"]
    request_id = _request(cohort, world)
    later = utcnow() + timedelta(days=15)
    with ext.db.transaction() as session:
        assert access.process_overdue(session, utcnow()) == {"reminded": 0, "escalated": 0}
        assert access.process_overdue(session, later) == {"reminded": 1, "escalated": 0}
        assert access.process_overdue(session, later) == {"reminded": 0, "escalated": 0}
        assert access.process_overdue(session, later + timedelta(days=8)) == {
            "reminded": 0,
            "escalated": 1,
        }
        kinds = [
            (n.kind, n.to_email)
            for n in session.scalars(select(Notification).order_by(Notification.id))
        ]
        assert ("access.reminder", world.emails["dac"]) in kinds
        assert ("access.escalation", world.emails["owner"]) in kinds
        job = jobs.enqueue(
            session, user(session, world.emails["owner"]), ext.dispatch, kind="access.reminders"
        )
        job_id = job.job.id
    assert jobs.run(ext.db, job_id, ext.services()).value == "done"
    assert request_id


def test_provenance_art30_and_art15(cohort, world):
    ext = cohort.extensions["myovault"]
    grant_id = _approve(cohort, world, _request(cohort, world))
    with ext.db.transaction() as session:
        owner = user(session, world.emails["owner"])
        doc = json.loads(provenance.subject_prov(session, owner, _project(session), "S1"))
        t2 = [k for k, v in doc["entity"].items() if v.get("prov:label") == "T2"]
        mese = [k for k, v in doc["entity"].items() if v.get("prov:label") == "MESE"]
        assert t2 and mese
        derived = {
            (d["prov:generatedEntity"], d["prov:usedEntity"])
            for d in doc["wasDerivedFrom"].values()
        }
        assert (t2[0], mese[0]) in derived
        assert any(a["prov:label"] == "myovault-qmri 0.1.0" for a in doc["agent"].values())
        assert sum(1 for v in doc["entity"].values() if v["mv:kind"] == "muscle_metric") == 2
        project_doc = json.loads(provenance.project_prov(session, owner, _project(session)))
        assert len([v for v in project_doc["entity"].values() if v["mv:kind"] == "subject"]) == 5
        record = provenance.processing_record(session, owner, _project(session))
        assert record["recipients"] == [
            {"institution": "Uni Example", "country": "DE", "grants": 1}
        ]
        assert record["third_country_transfers"] == []
        assert "myovault-qmri 0.1.0 (model epg-1)" in record["processing_steps"]
        report = provenance.access_report(
            session, user(session, world.emails["investigator"]), _project(session), "S1"
        )
        assert [g["grant"] for g in report["grants"]] == [grant_id]
        assert report["consent"][0]["duo_terms"] == ["HMB"]
        none = provenance.access_report(session, owner, _project(session), "S3")
        assert none["grants"] == []
        with pytest.raises(Forbidden):
            provenance.processing_record(
                session, user(session, world.emails["dac"]), _project(session)
            )


def test_request_on_a_cohort_snapshot(cohort, world):
    from repository.services import search, snapshots
    from repository.services.pids import LocalMinter

    ext = cohort.extensions["myovault"]
    with ext.db.transaction() as session:
        researcher = user(session, world.emails["researcher"])
        snap = snapshots.freeze(
            session,
            researcher,
            search.CohortQuery(),
            project_slug="alpha",
            title="all of alpha",
            minter=LocalMinter(),
            base_url="http://localhost",
        )
        snapshot_id, frozen = snap.id, set(snap.subject_ids)
    assert len(frozen) == 4  # S4 has no consent: never in a snapshot
    with ext.db.transaction() as session:
        # S1 withdraws after the freeze: still in the snapshot, excluded from the request
        consent_service.withdraw(
            session, user(session, world.emails["investigator"]), _project(session), "S1"
        )
    request_id = _request(cohort, world, snapshot_id=snapshot_id)
    with ext.db.transaction() as session:
        req = access.get_request(session, user(session, world.emails["researcher"]), request_id)
        assert req.snapshot_id == snapshot_id
        assert set(req.matched_subject_ids) < frozen
        assert req.exclusions == {
            "consent withdrawn": 1,
            "consent (DS) does not cover HMB use": 1,
            "ethics approval required (IRB)": 1,
        }
        assert len(req.matched_subject_ids) == 1  # S2 only
        with pytest.raises(NotFound, match="snapshot"):
            access.preview(
                session,
                user(session, world.emails["other_owner"]),
                _project(session, "beta"),
                use=USE,
                snapshot_id=snapshot_id,
            )


@pytest.mark.parametrize(
    ("n", "shown"), [(0, 0), (1, "<5"), (4, "<5"), (5, 5), (7, 5), (8, 10), (12, 10)]
)
def test_requester_counts_are_suppressed_and_rounded(n, shown):
    assert access.suppress(n) == shown
