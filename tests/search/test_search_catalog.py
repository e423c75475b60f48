"""Metadata versions, snapshots (PIDs, immutability), landing pages, exports, OAI-PMH, REST API."""

from __future__ import annotations

import base64
import json
import re
import threading
import xml.etree.ElementTree as ET  # noqa: S405  (parsing our own output in tests)
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select

from repository.errors import NotFound, ServiceUnavailable, ValidationError
from repository.models import AuditEvent, CohortSnapshot, Project, User
from repository.services import metadata, search, snapshots
from repository.services.context import Actor
from repository.services.pids import DataCiteMinter, LocalMinter, minter_from_config
from repository.web import oai
from tests.app_fixtures import api_token, csrf_token, login
from tests.search.search_data import populate

SCHEMAS = Path(__file__).parent / "schemas"
GOOD = {
    "title": "FSHD thigh MRI",
    "description": "Natural history of facioscapulohumeral dystrophy",
    "diseases": [{"name": "FSHD", "orpha": "269", "icd10": "G71.0"}],
    "site_names": ["Leiden", "Paris"],
    "contact": {"name": "Dr A", "email": "a@example.org", "affiliation": "LUMC"},
    "licence": "CC-BY-NC-4.0",
    "data_use_conditions": ["DUO:0000007", "DUO:0000019"],
    "keywords": ["fat fraction", "FSHD"],
    "funding": [{"funder": "Prinses Beatrix Spierfonds", "award": "W.OR-1"}],
    "publications": [{"doi": "https://doi.org/10.1212/WNL.0000000000001", "citation": "A et al."}],
}


def _actor(session, email):
    return Actor(user=session.scalar(select(User).where(User.email == email)))


def test_metadata_validation_fails_closed():
    clean = metadata.validate(GOOD)
    assert clean["diseases"][0]["orpha"] == "ORPHA:269"
    assert clean["publications"][0]["doi"] == "10.1212/WNL.0000000000001"
    for patch in (
        {"colour": "red"},
        {"title": " "},
        {"licence": "WTFPL"},
        {"data_use_conditions": ["DUO:9999999"]},
        {"diseases": [{"name": "x"}]},
        {"diseases": [{"name": "x", "icd10": "banana"}]},
        {"diseases": [{"name": "x", "orpha": "1", "extra": 1}]},
        {"contact": {"email": "not-an-email"}},
        {"publications": [{"doi": "doi:abc"}]},
    ):
        with pytest.raises(ValidationError):
            metadata.validate({**GOOD, **patch})


@pytest.fixture
def filled(app, world):
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        populate(session, world.projects["alpha"], 12, seed=5)
        populate(session, world.projects["beta"], 6, seed=6, prefix="b")
        owner = _actor(session, world.emails["owner"])
        metadata.update_metadata(
            session, owner, session.get(Project, world.projects["alpha"]), GOOD
        )
    return world


def test_metadata_versions_are_kept_and_audited(app, filled):
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        project = session.get(Project, filled.projects["alpha"])
        owner = _actor(session, filled.emails["owner"])
        metadata.update_metadata(session, owner, project, {**GOOD, "keywords": ["muscle"]})
        versions = metadata.versions(session, owner, project)
        assert [v.version for v in versions] == [2, 1]
        assert versions[1].record["keywords"] == ["fat fraction", "FSHD"]
        from repository.errors import Forbidden

        with pytest.raises(Forbidden):
            metadata.update_metadata(
                session, _actor(session, filled.emails["researcher"]), project, GOOD
            )
        events = session.scalars(
            select(AuditEvent.action).where(AuditEvent.action == "project.metadata.update")
        ).all()
        assert len(events) == 2


def test_snapshots_are_versioned_immutable_and_audited(app, filled):
    ext = app.extensions["myovault"]
    q = search.parse_query({"mc": ["semimembranosus:any:ff_mean:20:"]})
    with ext.db.transaction() as session:
        researcher = _actor(session, filled.emails["researcher"])
        s1 = snapshots.freeze(
            session,
            researcher,
            q,
            project_slug="alpha",
            title="SM involved",
            minter=LocalMinter(),
            base_url="http://x",
        )
        s2 = snapshots.freeze(
            session,
            researcher,
            q,
            project_slug="alpha",
            title="SM involved",
            minter=LocalMinter(),
            base_url="http://x",
        )
        assert (s1.version, s2.version) == (1, 2) and s1.lineage == s2.lineage
        assert s1.pid.startswith("myovault:") and s1.pid != s2.pid
        assert s1.manifest_sha256 == s2.manifest_sha256  # nothing changed in between
        assert s1.n_subjects == len(s1.subject_ids) > 0
        assert all(len(f["sha256"]) == 64 for f in s1.files) and len(s1.files) == s1.n_visits
        with pytest.raises(NotFound):  # private project: invisible, answers 404
            snapshots.freeze(
                session,
                researcher,
                q,
                project_slug="beta",
                title="x",
                minter=LocalMinter(),
                base_url="http://x",
            )
        sid = s1.id
    with pytest.raises(ValueError, match="immutable"), ext.db.transaction() as session:
        session.get(CohortSnapshot, sid).title = "changed"
    with ext.db.transaction() as session:
        assert session.get(CohortSnapshot, sid).title == "SM involved"
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.object_type == "cohort_snapshot")
        ).all()
        assert actions.count("snapshot.create") == 2


class _FakeDataCite(BaseHTTPRequestHandler):
    received: list[dict] = []
    status = 201

    def do_POST(self) -> None:  # noqa: N802  (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append(
            {"auth": self.headers["Authorization"], "path": self.path, "body": body}
        )
        reply = json.dumps(
            {"data": {"id": body["data"]["attributes"]["doi"], "type": "dois"}}
        ).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/vnd.api+json")
        self.end_headers()
        self.wfile.write(reply if type(self).status == 201 else b'{"errors":[{"title":"bad"}]}')

    def log_message(self, *args) -> None:
        pass


def test_datacite_minter_registers_a_doi_on_a_local_fake_server():
    server = HTTPServer(("127.0.0.1", 0), _FakeDataCite)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        minter = minter_from_config(
            {
                "DATACITE_API_URL": url,
                "DATACITE_REPOSITORY_ID": "MV.TEST",
                "DATACITE_PASSWORD": "pw",
                "DATACITE_PREFIX": "10.5072",
            }
        )
        assert isinstance(minter, DataCiteMinter)
        pid, kind = minter.mint(suffix="abc.v1", attributes={"titles": [{"title": "t"}]})
        assert (pid, kind) == ("10.5072/myovault.abc.v1", "doi")
        sent = _FakeDataCite.received[-1]
        assert sent["path"] == "/dois" and sent["auth"].startswith("Basic ")
        assert sent["body"]["data"]["attributes"]["event"] == "publish"
        _FakeDataCite.status = 422
        with pytest.raises(ServiceUnavailable, match="422"):
            minter.mint(suffix="abc.v2", attributes={})
    finally:
        _FakeDataCite.status = 201
        server.shutdown()
        server.server_close()
        thread.join(5)
    with pytest.raises(ValidationError, match="missing"):
        minter_from_config({"DATACITE_API_URL": "https://api.test.datacite.org"})
    assert isinstance(minter_from_config({}), LocalMinter)


def test_landing_pages_embed_json_ld_and_export_datacite(app, client, filled):
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        snap = snapshots.freeze(
            session,
            _actor(session, filled.emails["researcher"]),
            search.CohortQuery(),
            project_slug="alpha",
            title="All alpha",
            minter=LocalMinter(),
            base_url="http://localhost",
        )
        sid, pid = snap.id, snap.pid
    html = client.get("/datasets/alpha").get_data(as_text=True)
    doc = json.loads(
        re.search(r'<script type="application/ld\+json"[^>]*>(.*?)</script>', html, re.S).group(1)
    )
    assert doc["@type"] == "Dataset" and doc["name"] == "FSHD thigh MRI"
    assert doc["license"].startswith("https://creativecommons.org/licenses/by-nc/")
    assert {"codingSystem": "ORPHA", "codeValue": "ORPHA:269", "@type": "MedicalCode"} in doc[
        "about"
    ][0]["code"]
    assert 'data-testid="heatmap"' in html and "How to request access" in html
    assert client.get("/datasets/beta").status_code == 404  # private
    page = client.get(f"/cohorts/{sid}").get_data(as_text=True)
    assert pid in page and 'data-testid="stat-subjects">10<' in page  # 12 rounded to 10
    assert "12 subjects" not in page and "subjects: 12" not in page.lower()  # exact size hidden
    assert client.get(f"/pid/{pid}").status_code == 303
    xml = ET.fromstring(client.get(f"/cohorts/{sid}/datacite.xml").data)  # noqa: S314  (our own output)
    ns = {"d": "http://datacite.org/schema/kernel-4"}
    assert xml.find("d:identifier", ns).get("identifierType") == "URL"
    assert xml.find("d:titles/d:title", ns).text == "All alpha (v1)"
    dj = client.get("/datasets/alpha/datacite.json").get_json()
    assert dj["data"]["attributes"]["types"]["resourceTypeGeneral"] == "Dataset"
    assert client.get(f"/cohorts/{sid}/manifest.json").status_code == 302  # login first
    login(client, filled.emails["researcher"])
    assert client.get(f"/cohorts/{sid}/manifest.json").status_code == 403  # no grant
    sitemap = client.get("/sitemap.xml").get_data(as_text=True)
    assert (
        "/datasets/alpha" in sitemap
        and "/datasets/beta" not in sitemap
        and f"/cohorts/{sid}" in sitemap
    )


def test_owner_edits_metadata_in_the_form(app, client, filled):
    login(client, filled.emails["owner"])
    token = csrf_token(client, "/datasets/alpha/metadata")
    bad = client.post(
        "/datasets/alpha/metadata", data={"csrf_token": token, "title": "T", "licence": "nope"}
    )
    assert bad.status_code == 200 and "licence must be one of" in bad.get_data(as_text=True)
    ok = client.post(
        "/datasets/alpha/metadata",
        data={
            "csrf_token": token,
            "title": "New title",
            "diseases": "FSHD | ORPHA:269 | G71.0",
            "duo": ["DUO:0000042"],
            "keywords": "a, b",
        },
    )
    assert ok.status_code == 302
    assert "New title" in client.get("/datasets/alpha").get_data(as_text=True)
    other = app.test_client()
    login(other, filled.emails["researcher"])
    assert other.get("/datasets/alpha/metadata").status_code == 403


def _validate_oai(text: str) -> ET.Element:
    import xmlschema

    xmlschema.XMLSchema(str(SCHEMAS / "OAI-PMH.xsd")).validate(text)
    return ET.fromstring(text)  # noqa: S314  (our own output)


def test_oai_pmh_validates_against_the_protocol_schema(app, client, filled, monkeypatch):
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        researcher = _actor(session, filled.emails["researcher"])
        for i in range(3):
            snapshots.freeze(
                session,
                researcher,
                search.CohortQuery(sex=("F", "M")),
                project_slug="alpha",
                title=f"c{i}",
                minter=LocalMinter(),
                base_url="http://x",
            )
    ns = {"o": oai.OAI_NS, "dc": oai.DC_NS, "oai_dc": oai.OAI_DC_NS}
    for verb in ("Identify", "ListMetadataFormats", "ListSets"):
        _validate_oai(client.get(f"/oai?verb={verb}").get_data(as_text=True))
    monkeypatch.setattr(oai, "PAGE_SIZE", 2)
    seen, url = [], "/oai?verb=ListRecords&metadataPrefix=oai_dc"
    while True:
        root = _validate_oai(client.get(url).get_data(as_text=True))
        seen += [h.text for h in root.iterfind(".//o:header/o:identifier", ns)]
        token = root.find(".//o:resumptionToken", ns)
        if token is None or not token.text:
            break
        url = f"/oai?verb=ListRecords&resumptionToken={token.text}"
    assert len(seen) == 4 == len(set(seen))  # alpha + 3 snapshots; beta is private
    assert not any("beta" in s for s in seen)
    one = _validate_oai(
        client.get(f"/oai?verb=GetRecord&metadataPrefix=oai_dc&identifier={seen[0]}").get_data(
            as_text=True
        )
    )
    assert one.find(".//oai_dc:dc/dc:title", ns).text == "FSHD thigh MRI"
    dc = _validate_oai(
        client.get(
            f"/oai?verb=GetRecord&metadataPrefix=oai_datacite&identifier={seen[1]}"
        ).get_data(as_text=True)
    )
    assert dc.find(".//{http://datacite.org/schema/kernel-4}resource") is not None
    ids = _validate_oai(
        client.post(
            "/oai", data={"verb": "ListIdentifiers", "metadataPrefix": "oai_dc", "set": "projects"}
        ).get_data(as_text=True)
    )
    assert [h.text for h in ids.iterfind(".//o:identifier", ns)] == [seen[0]]
    for query, code in (
        ("verb=Nope", "badVerb"),
        ("verb=ListRecords", "badArgument"),
        ("verb=ListRecords&metadataPrefix=marc", "cannotDisseminateFormat"),
        ("verb=GetRecord&metadataPrefix=oai_dc&identifier=oai:x:project/beta", "idDoesNotExist"),
        ("verb=ListRecords&resumptionToken=abc.def", "badResumptionToken"),
        ("verb=ListRecords&metadataPrefix=oai_dc&from=2999-01-01", "noRecordsMatch"),
    ):
        root = _validate_oai(client.get(f"/oai?{query}").get_data(as_text=True))
        assert root.find("o:error", ns).get("code") == code, query


def test_oai_resumption_tokens_expire_and_cannot_be_forged(app, client, filled, monkeypatch):
    from datetime import UTC, datetime, timedelta

    ns = {"o": oai.OAI_NS}
    monkeypatch.setattr(oai, "PAGE_SIZE", 1)  # alpha and one snapshot: two pages
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        snapshots.freeze(
            session,
            _actor(session, filled.emails["researcher"]),
            search.CohortQuery(),
            project_slug="alpha",
            title="one",
            minter=LocalMinter(),
            base_url="http://x",
        )
    first = _validate_oai(
        client.get("/oai?verb=ListIdentifiers&metadataPrefix=oai_dc").get_data(as_text=True)
    )
    token = first.find(".//o:resumptionToken", ns)
    expires = datetime.strptime(token.get("expirationDate"), "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC
    )
    now = datetime.now(UTC)
    assert now + oai.TOKEN_TTL - timedelta(minutes=5) < expires <= now + oai.TOKEN_TTL
    url = f"/oai?verb=ListIdentifiers&resumptionToken={token.text}"

    def error(path: str) -> tuple[str | None, str]:
        root = _validate_oai(client.get(path).get_data(as_text=True))
        found = root.find("o:error", ns)
        return (None, "") if found is None else (found.get("code"), found.text or "")

    assert error(url) == (None, "")  # valid now
    # just before expiry still valid, just after it is refused
    monkeypatch.setattr(oai, "utcnow", lambda: expires - timedelta(seconds=1))
    assert error(url) == (None, "")
    monkeypatch.setattr(oai, "utcnow", lambda: expires + timedelta(seconds=1))
    code, message = error(url)
    assert code == "badResumptionToken" and "expired" in message
    monkeypatch.undo()
    # a token whose payload was altered (e.g. a later expiry) fails its signature
    payload, _, sig = token.text.partition(".")
    forged = base64.urlsafe_b64encode(
        json.dumps({**json.loads(base64.urlsafe_b64decode(payload)), "exp": 4102444800}).encode()
    ).decode()
    assert error(f"/oai?verb=ListIdentifiers&resumptionToken={forged}.{sig}")[0] == (
        "badResumptionToken"
    )
    # a correctly signed token without an expiry (an old-format token) is refused too
    with app.test_request_context():
        old = base64.urlsafe_b64encode(
            json.dumps({"metadataPrefix": "oai_dc", "offset": 1}).encode()
        ).decode()
        old_token = f"{old}.{oai._sign(old)}"
    assert error(f"/oai?verb=ListIdentifiers&resumptionToken={old_token}")[0] == (
        "badResumptionToken"
    )


def test_rest_api_search_and_snapshot(app, client, filled):
    anon = client.get("/api/v1/search?disease=FSHD&mc=semimembranosus:any:ff_mean:0:100")
    assert anon.status_code == 200
    body = anon.get_json()
    assert body["exact"] is False and body["total"] == 10 and body["subjects"] == []
    assert client.get("/api/v1/search?colour=red").status_code == 422
    owner = {"Authorization": f"Bearer {api_token(app, filled.emails['owner'])}"}
    mine = client.get("/api/v1/search?project=alpha&per_page=5&page=3", headers=owner).get_json()
    assert (
        mine["exact"] is True
        and mine["total"] == 12
        and len(mine["subjects"]) == 2
        and mine["pages"] == 3
    )
    researcher = {"Authorization": f"Bearer {api_token(app, filled.emails['researcher'])}"}
    assert (
        client.post(
            "/api/v1/snapshots", json={"project": "alpha", "title": "t", "query": {}}
        ).status_code
        == 401
    )
    made = client.post(
        "/api/v1/snapshots",
        json={"project": "alpha", "title": "API cohort", "query": {"sex": ["F", "M"]}},
        headers=researcher,
    )
    assert made.status_code == 201, made.get_json()
    snap = made.get_json()
    got = client.get(f"/api/v1/snapshots/{snap['id']}").get_json()
    assert got["pid"] == snap["pid"] and got["statistics"]["subjects"] == 10
    assert (
        client.get("/api/v1/projects/alpha/metadata").get_json()["record"]["licence"]
        == "CC-BY-NC-4.0"
    )
    put = client.put(
        "/api/v1/projects/alpha/metadata", json={**GOOD, "keywords": ["x"]}, headers=owner
    )
    assert put.status_code == 200 and put.get_json()["version"] == 2
    assert (
        client.put("/api/v1/projects/alpha/metadata", json=GOOD, headers=researcher).status_code
        == 403
    )


def test_configured_datacite_mints_dois_for_api_snapshots(app, client, filled):
    server = HTTPServer(("127.0.0.1", 0), _FakeDataCite)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        app.config.update(
            DATACITE_API_URL=f"http://127.0.0.1:{server.server_port}",
            DATACITE_REPOSITORY_ID="MV.TEST",
            DATACITE_PASSWORD="pw",
            DATACITE_PREFIX="10.5072",
        )
        headers = {"Authorization": f"Bearer {api_token(app, filled.emails['researcher'])}"}
        made = client.post(
            "/api/v1/snapshots",
            json={"project": "alpha", "title": "DOI cohort", "query": {}},
            headers=headers,
        )
        assert made.status_code == 201, made.get_json()
        snap = made.get_json()
        assert snap["pid_kind"] == "doi" and snap["pid"].startswith("10.5072/myovault.")
        sent = _FakeDataCite.received[-1]["body"]["data"]["attributes"]
        assert sent["doi"] == snap["pid"] and sent["url"].startswith("http://localhost/pid/")
        assert sent["types"]["resourceTypeGeneral"] == "Dataset"
        xml = ET.fromstring(client.get(f"/cohorts/{snap['id']}/datacite.xml").data)  # noqa: S314
        ident = xml.find("{http://datacite.org/schema/kernel-4}identifier")
        assert (ident.get("identifierType"), ident.text) == ("DOI", snap["pid"])
        _FakeDataCite.status = 500  # the agency fails: no snapshot, a 503 to the caller
        failed = client.post(
            "/api/v1/snapshots",
            json={"project": "alpha", "title": "DOI cohort 2", "query": {"sex": ["F"]}},
            headers=headers,
        )
        assert failed.status_code == 503
    finally:
        _FakeDataCite.status = 201
        server.shutdown()
        server.server_close()
        thread.join(5)
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        titles = session.scalars(select(CohortSnapshot.title)).all()
        assert titles == ["DOI cohort"]
