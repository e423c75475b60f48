"""The portal journey through the consent / access / grant / download pages (Flask client)."""

from __future__ import annotations

import io
import re
import zipfile

from sqlalchemy import select

from repository.models import AuditEvent, Download, Grant, Notification
from repository.services import audit
from tests.app_fixtures import csrf_token, login
from tests.consent.consent_helpers import add_subject

IMAGE = b"image-bytes-" * 100


def _post(client, path, data, page=None, **kw):
    data = {**data, "csrf_token": csrf_token(client, page or path)}
    return client.post(path, data=data, **kw)


def test_portal_journey(app, world):
    ext = app.extensions["myovault"]
    for name in ("S1", "S2"):
        add_subject(
            app, "alpha", name, image=IMAGE + name.encode(), t2map=b"map" * 50 + name.encode()
        )

    inv = app.test_client()
    login(inv, world.emails["investigator"])
    page = "/projects/alpha/consent"
    r = _post(
        inv,
        page,
        {
            "pseudonym": "S1",
            "form": "Main",
            "form_version": "1",
            "signed_on": "2024-01-01",
            "permission": "HMB",
            "lawful_basis": "6(1)(e)",
            "special_category_basis": "9(2)(j)",
        },
    )
    assert r.status_code == 302
    table = (
        "pseudonym,form,form_version,signed_on,duo_terms,lawful_basis,special_category_basis\n"
        "S2,Main,1,2024-01-02,GRU,6(1)(e),9(2)(j)\nS9,Main,1,2024-01-02,XYZ,6(1)(e),9(2)(j)\n"
    )
    r = _post(
        inv,
        page + "/import",
        {"table": (io.BytesIO(table.encode()), "c.csv")},
        page=page,
        content_type="multipart/form-data",
    )
    assert r.status_code == 422
    html = r.get_data(as_text=True)
    assert "line 3" in html and "XYZ" in html and "Nothing was imported" in html
    r = _post(
        inv,
        page + "/import",
        {"table": (io.BytesIO(table.rsplit("S9", 1)[0].encode()), "c.csv")},
        page=page,
        content_type="multipart/form-data",
    )
    assert r.status_code == 302
    html = inv.get(page).get_data(as_text=True)
    assert 'data-testid="consent-row-S1"' in html and "active" in html

    researcher = app.test_client()
    login(researcher, world.emails["researcher"])
    form = {
        "purpose": "Fat fraction progression in FSHD over two years.",
        "use_purpose": "HMB",
        "institution": "Uni R",
        "data": ["images", "metrics"],
        "duration_days": "30",
    }
    r = _post(researcher, "/projects/alpha/request-access", {**form, "action": "preview"})
    assert r.status_code == 200 and 'data-testid="preview-matched">&lt;5<' in r.get_data(
        as_text=True
    )
    r = _post(researcher, "/projects/alpha/request-access", {**form, "action": "submit"})
    assert r.status_code == 302
    request_path = r.headers["Location"]

    dac = app.test_client()
    login(dac, world.emails["dac"])
    assert "Request #" in dac.get("/requests").get_data(as_text=True)
    _post(dac, request_path + "/comment", {"body": "Ethics fine."}, page=request_path)
    _post(dac, request_path + "/vote", {"vote": "approve", "reason": "ok"}, page=request_path)
    html = dac.get(request_path).get_data(as_text=True)
    assert "Ethics fine." in html and 'data-testid="decide"' in html
    r = _post(
        dac,
        request_path + "/decide",
        {"outcome": "approved", "reason": "Meets the consent."},
        page=request_path,
    )
    assert r.status_code == 302

    html = researcher.get(request_path).get_data(as_text=True)
    assert "Ethics fine." not in html  # committee discussion is internal
    grant_path = re.search(r'href="(/grants/\d+)" data-testid="grant-link"', html).group(1)
    assert (
        _post(researcher, grant_path + "/accept", {"agree": "on"}, page=grant_path).status_code
        == 302
    )
    r = _post(
        researcher, grant_path + "/download", {"layout": "bagit", "subject": ""}, page=grant_path
    )
    download_path = r.headers["Location"]
    other = app.test_client()
    login(other, world.emails["owner"])
    assert other.get(download_path).status_code == 404  # bound to the researcher
    r = researcher.get(download_path)
    assert r.status_code == 200 and r.mimetype == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(r.get_data()))
    assert any(n.endswith("LICENSE.txt") for n in archive.namelist())
    assert any(n.endswith("sub-S2_ses-01_mese.nii.gz") for n in archive.namelist())
    assert researcher.get(download_path).status_code == 403  # single use

    # withdrawal from the subject page; the researcher is told
    sp = "/projects/alpha/subjects/S2/consent"
    assert (
        _post(inv, sp.replace("/consent", "/withdraw"), {"reason": "asked"}, page=sp).status_code
        == 302
    )
    # erasure by the owner
    assert (
        _post(
            other,
            sp.replace("/consent", "/erase"),
            {"reason": "Art. 17 request", "confirm": "S2"},
            page=sp,
        ).status_code
        == 302
    )
    assert 'data-testid="subject-status">erased<' in other.get(sp).get_data(as_text=True)
    report = inv.get("/projects/alpha/subjects/S2/access-report").get_data(as_text=True)
    assert "Uni R" in report and "Download #" in report

    with ext.db.transaction() as session:
        assert session.scalar(select(Download)).status == "complete"
        assert session.scalar(select(Grant)).conditions_accepted_at is not None
        kinds = set(session.scalars(select(Notification.kind)))
        assert {"access.new_request", "access.approved", "consent.withdrawn"} <= kinds
        assert audit.verify_chain(session).ok
        assert (
            session.scalar(select(AuditEvent).where(AuditEvent.action == "subject.erase"))
            is not None
        )


def test_request_form_prefills_a_snapshot_and_hides_private_projects(app, world):
    client = app.test_client()
    login(client, world.emails["researcher"])
    html = client.get("/projects/alpha/request-access?snapshot=12").get_data(as_text=True)
    assert 'name="snapshot_id" inputmode="numeric" value="12"' in html
    assert 'value="metrics" checked' in html
    assert client.get("/projects/beta/request-access").status_code == 404
