"""Consent for participants not uploaded yet: registered by the site's own participant id (never
stored), under the pseudonym the anonymizer will give their images; the pipeline then finds the
same Subject. UI, CSV bulk and API, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from anonymizer import Pseudonymizer
from consent.duo import IntendedUse
from repository.models import AuditEvent, Consent, Project, Subject, Visit
from repository.services import access, projects
from repository.services.consent_filters import shareable_subject_clause
from repository.services.context import SYSTEM
from tests.app_fixtures import api_token, csrf_token, login
from tests.consent.consent_helpers import BASE_CONSENT

PID = "HOSP-000123"  # a site's own participant id (what the scanner sends as Patient ID)
CONSENT = {**BASE_CONSENT, "duo_terms": "HMB"}
HMB_USE = IntendedUse(purpose="HMB")


def _expected(app, participant_id: str, site: str = "", slug: str = "alpha") -> str:
    """The pseudonym computed independently, straight from the anonymizer."""
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        project = session.scalar(select(Project).where(Project.slug == slug))
        secret = ext.unwrap_project_secret(project.pseudonym_secret_wrapped)
    return Pseudonymizer(secret, slug, site).subject_pseudonym(participant_id)


def subject_project(session) -> Project:
    return session.scalar(select(Project).where(Project.slug == "alpha"))


def _auth(app, email):
    return {"Authorization": f"Bearer {api_token(app, email)}"}


def _no_trace_of(app, participant_id: str) -> None:
    """The participant id is in no table: audit events, subjects, consents."""
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        dumped = json.dumps(
            [
                [e.details for e in session.scalars(select(AuditEvent))],
                [s.pseudonym for s in session.scalars(select(Subject))],
                [(c.form, c.duo_terms) for c in session.scalars(select(Consent))],
            ],
            default=str,
        )
    assert participant_id not in dumped


def test_pipeline_files_images_under_the_registered_subject(app, world, tmp_path: Path):
    from repository.demo_cohort import write_cohort
    from repository.services.pipeline import ingest_directory
    from tests.consent.consent_helpers import user

    app.config.update(PIPELINE_FIT=False, PIPELINE_SEGMENT=False)
    ext = app.extensions["myovault"]
    write_cohort(tmp_path / "in", n_subjects=1, shape_xyz=(16, 16, 2), n_echoes=4)
    first = sorted((tmp_path / "in").rglob("*.dcm"))[0]
    patient_id = str(pydicom.dcmread(first, stop_before_pixels=True).PatientID)

    client = app.test_client()
    inv = world.emails["investigator"]
    r = client.post(
        "/api/v1/projects/alpha/participants",
        json={"participant_id": patient_id, "consent": CONSENT},
        headers=_auth(app, inv),
    )
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    pseudonym = body["pseudonym"]
    assert pseudonym == _expected(app, patient_id)
    assert body["created"] is True and body["consent"]["version"] == 1
    assert patient_id not in r.get_data(as_text=True)
    with ext.db.transaction() as session:
        subject = session.scalar(select(Subject).where(Subject.pseudonym == pseudonym))
        assert subject.project_id == world.projects["alpha"]
        assert session.scalar(select(func.count()).where(Visit.subject_id == subject.id)) == 0
        subject_id = subject.id
        # consented but nothing uploaded yet: not part of any cohort
        before = access.evaluate(session, subject_project(session), HMB_USE)
        assert before.matched_ids == () and before.exclusions == {access.NO_DATA: 1}

    with ext.db.transaction() as session:
        uploader = user(session, inv)  # sessions do not expire on commit
    with app.app_context():
        result = ingest_directory(ext, uploader, tmp_path / "in", "alpha")
    assert result["state"] == "done", result
    with ext.db.transaction() as session:
        subjects = session.scalars(
            select(Subject).where(Subject.project_id == world.projects["alpha"])
        ).all()
        assert [(s.id, s.pseudonym) for s in subjects] == [(subject_id, pseudonym)]
        assert session.scalar(select(func.count()).where(Visit.subject_id == subject_id)) == 2
        assert session.scalar(
            select(Subject.id).where(Subject.id == subject_id, shareable_subject_clause())
        )
        assert access.evaluate(session, subject_project(session), HMB_USE).matched_ids == (
            subject_id,
        )
    _no_trace_of(app, patient_id)
    # provenance names the uploader from the Upload row
    prov = client.get(
        f"/api/v1/projects/alpha/subjects/{pseudonym}/prov", headers=_auth(app, inv)
    ).get_json()
    text = json.dumps(prov)
    assert "upload and de-identify (local)" in text and "Investigator" in text


def test_api_registration_rules(app, world):
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        alpha = session.get(Project, world.projects["alpha"])
        for code in ("LEI", "PAR"):
            projects.add_site(session, SYSTEM, alpha, code=code, name=code)
    client = app.test_client()
    owner, inv = _auth(app, world.emails["owner"]), _auth(app, world.emails["investigator"])
    url = "/api/v1/projects/alpha/participants"

    r = client.post(url, json={"participant_id": PID, "site": "LEI"}, headers=owner)
    assert r.status_code == 201 and r.get_json() == {
        "pseudonym": _expected(app, PID, "LEI"),
        "created": True,
    }
    again = client.post(url, json={"participant_id": f"  {PID} ", "site": "LEI"}, headers=owner)
    assert again.status_code == 200 and again.get_json()["created"] is False
    assert again.get_json()["pseudonym"] == r.get_json()["pseudonym"]
    # the same id at another site is another participant
    other = client.post(url, json={"participant_id": PID, "site": "PAR"}, headers=owner)
    assert other.get_json()["pseudonym"] == _expected(app, PID, "PAR") != r.get_json()["pseudonym"]

    for payload, status, message in (
        ({}, 422, "participant_id is required"),
        ({"participant_id": "x" * 65}, 422, "longer than 64"),
        ({"participant_id": "a\\b"}, 422, "backslash"),
        ({"participant_id": PID, "site": "NOPE"}, 422, "no site 'NOPE'"),
        ({"participant_id": PID, "consent": {"form": "x"}}, 422, "signed_on"),
        ({"participant_id": PID, "consent": "HMB"}, 422, "consent must be an object"),
    ):
        r = client.post(url, json=payload, headers=inv)
        assert r.status_code == status, (payload, r.get_json())
        assert message in r.get_json()["message"]
        assert PID not in r.get_data(as_text=True)
    for role, status in (("researcher", 403), ("dac", 403), ("other_owner", 403)):
        r = client.post(url, json={"participant_id": PID}, headers=_auth(app, world.emails[role]))
        assert r.status_code == status, role
    _no_trace_of(app, PID)


def test_investigator_bound_to_a_site_registers_for_it_only(app, world):
    ext = app.extensions["myovault"]
    from repository.models import Membership, Role, Site

    with ext.db.transaction() as session:
        alpha = session.get(Project, world.projects["alpha"])
        lei = projects.add_site(session, SYSTEM, alpha, code="LEI", name="Leiden")
        projects.add_site(session, SYSTEM, alpha, code="PAR", name="Paris")
        membership = session.scalar(
            select(Membership).where(
                Membership.project_id == alpha.id, Membership.role == Role.INVESTIGATOR
            )
        )
        membership.site_id = lei.id
        assert session.scalar(select(Site.code).where(Site.id == lei.id)) == "LEI"
    client = app.test_client()
    inv = _auth(app, world.emails["investigator"])
    url = "/api/v1/projects/alpha/participants"
    r = client.post(url, json={"participant_id": PID}, headers=inv)  # default: own site
    assert r.status_code == 201 and r.get_json()["pseudonym"] == _expected(app, PID, "LEI")
    with ext.db.transaction() as session:
        subject = session.scalar(
            select(Subject).where(Subject.pseudonym == _expected(app, PID, "LEI"))
        )
        assert subject.site_id == lei.id
    r = client.post(url, json={"participant_id": PID, "site": "PAR"}, headers=inv)
    assert r.status_code == 403 and "your own site" in r.get_json()["message"]


def test_erased_participant_cannot_be_registered_again(app, world):
    ext = app.extensions["myovault"]
    pseudonym = _expected(app, PID)
    with ext.db.transaction() as session:
        from repository.models._types import utcnow

        session.add(
            Subject(project_id=world.projects["alpha"], pseudonym=pseudonym, erased_at=utcnow())
        )
    r = app.test_client().post(
        "/api/v1/projects/alpha/participants",
        json={"participant_id": PID},
        headers=_auth(app, world.emails["owner"]),
    )
    assert r.status_code == 409 and "erased" in r.get_json()["message"]


def _post(client, path, data, page, **kw):
    return client.post(path, data={**data, "csrf_token": csrf_token(client, page)}, **kw)


def test_ui_form_and_csv_register_participants(app, world):
    ext = app.extensions["myovault"]
    client = app.test_client()
    login(client, world.emails["investigator"])
    page = "/projects/alpha/consent"
    html = client.get(page).get_data(as_text=True)
    assert 'name="participant_id"' in html and 'data-testid="register-participant"' in html
    form = {
        "form": "Main",
        "form_version": "2",
        "signed_on": "2024-03-01",
        "permission": "GRU",
        "lawful_basis": "6(1)(e)",
        "special_category_basis": "9(2)(j)",
        "participant_id": PID,
    }
    r = _post(client, page, form, page, follow_redirects=True)
    pseudonym = _expected(app, PID)
    text = r.get_data(as_text=True)
    assert f"Participant registered as {pseudonym}; consent version 1 recorded." in text
    assert f'data-testid="consent-row-{pseudonym}"' in text and PID not in text
    r = _post(client, page, {**form, "pseudonym": "S1"}, page, follow_redirects=True)
    assert "either a pseudonym or a participant id" in r.get_data(as_text=True)
    r = _post(client, page, form, page, follow_redirects=True)  # a second consent version
    assert f"already registered as {pseudonym}; consent version 2" in r.get_data(as_text=True)

    header = (
        "participant_id,site,form,form_version,signed_on,duo_terms,lawful_basis,"
        "special_category_basis\n"
    )
    bad = header + (
        "P-1,,Main,1,2024-01-02,HMB,6(1)(e),9(2)(j)\n"
        "P-1,,Main,1,2024-01-02,HMB,6(1)(e),9(2)(j)\n"
        ",,Main,1,2024-01-02,HMB,6(1)(e),9(2)(j)\n"
        "P-2,XXX,Main,1,2024-01-02,HMB,6(1)(e),9(2)(j)\n"
        "P-3,,Main,1,2024-01-02,NOPE,6(1)(e),9(2)(j)\n"
    )
    r = _post(
        client,
        page + "/import",
        {"table": (io.BytesIO(bad.encode()), "r.csv")},
        page,
        content_type="multipart/form-data",
    )
    assert r.status_code == 422
    html = r.get_data(as_text=True)
    for expected in (
        "line 3: the same participant is already given on line 2",
        "line 4: participant_id is required",
        "line 5: no site &#39;XXX&#39; in this project",
        "line 6:",
    ):
        assert expected in html, expected
    assert "P-1" not in html and "P-2" not in html
    with ext.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Subject)) == 1  # nothing imported

    good = header + (
        "P-1,,Main,1,2024-01-02,HMB,6(1)(e),9(2)(j)\n"
        f"{PID},,Main,1,2024-01-02,HMB IRB,6(1)(e),9(2)(j)\n"
    )
    r = _post(
        client,
        page + "/import",
        {"table": (io.BytesIO(good.encode()), "r.csv")},
        page,
        content_type="multipart/form-data",
        follow_redirects=True,
    )
    assert "2 consent records imported (1 participants registered)." in r.get_data(as_text=True)
    with ext.db.transaction() as session:
        subject = session.scalar(select(Subject).where(Subject.pseudonym == _expected(app, "P-1")))
        assert subject is not None
        versions = session.scalars(
            select(Consent.version)
            .join(Subject, Subject.id == Consent.subject_id)
            .where(Subject.pseudonym == pseudonym)
            .order_by(Consent.version)
        ).all()
        assert versions == [1, 2, 3]
        sources = set(session.scalars(select(Consent.source)))
        assert sources == {"ui", "csv"}
        registered = session.scalars(
            select(AuditEvent.action).where(AuditEvent.action == "subject.register")
        ).all()
        assert len(registered) == 2
    _no_trace_of(app, PID)
    _no_trace_of(app, "P-1")


def test_api_csv_registration(app, world):
    table = (
        "participant_id\tform\tform_version\tsigned_on\tduo_terms\tlawful_basis\t"
        "special_category_basis\n"
        f"{PID}\tMain\t1\t2024-01-02\tHMB\t6(1)(e)\t9(2)(j)\n"
    )
    r = app.test_client().post(
        "/api/v1/projects/alpha/consents/import",
        data=table.encode(),
        headers={
            **_auth(app, world.emails["investigator"]),
            "Content-Type": "text/tab-separated-values",
        },
    )
    assert r.status_code == 201 and r.get_json() == {"imported": 1, "registered": 1}
    with app.extensions["myovault"].db.transaction() as session:
        assert session.scalar(select(Subject.id).where(Subject.pseudonym == _expected(app, PID)))


@pytest.mark.parametrize(
    "header",
    [
        "pseudonym,participant_id,form,form_version,signed_on,duo_terms,lawful_basis,special_category_basis",
    ],
)
def test_table_with_both_identifier_columns_is_refused(header):
    from consent.tabular import parse_table

    parsed = parse_table(header + "\nS1,P1,Main,1,2024-01-02,HMB,6(1)(e),9(2)(j)\n")
    assert parsed.rows == () and "not both" in parsed.errors[0].problems[0]


def test_uploads_default_to_the_uploaders_site_so_pseudonyms_match(app, world):
    """Every upload path (web, API, CLI) goes through create_upload, which takes the uploader's
    site when none is given — pre-registered participants and their later scans then share the
    pseudonym (it is keyed by site)."""
    from repository.models import Membership, Role, User
    from repository.services import uploads
    from repository.services.context import Actor

    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        alpha = session.get(Project, world.projects["alpha"])
        lei = projects.add_site(session, SYSTEM, alpha, code="LEI", name="Leiden")
        membership = session.scalar(
            select(Membership).where(
                Membership.project_id == alpha.id, Membership.role == Role.INVESTIGATOR
            )
        )
        membership.site_id = lei.id
        user = session.scalar(select(User).where(User.email == world.emails["investigator"]))
        upload = uploads.create_upload(
            session, Actor(user=user), alpha, files=[], max_bytes=1 << 20, source="web"
        )
        assert upload.site_id == lei.id
        assert uploads.uploader_site(session, user.id, alpha.id) == lei.id
