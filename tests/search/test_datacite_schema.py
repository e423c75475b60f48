"""Our DataCite exports validated against the official schemas shipped in tests/search/data/.

XML: DataCite Metadata Schema 4.6 (kernel-4) XSD. JSON: the DataCite v4.5 JSON schema of the
``datacite`` package (inveniosoftware), applied to the REST ``attributes`` we send when minting.
See tests/search/data/README.md for where the files come from and their licences.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET  # noqa: S405  (parsing our own output)
from pathlib import Path

import jsonschema
import pytest
import xmlschema
from sqlalchemy import select

from repository.models import Project, User
from repository.services import metadata, pids, search, snapshots
from repository.services.context import Actor
from repository.services.pids import LocalMinter
from tests.search.search_data import populate
from tests.search.test_search_catalog import GOOD

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def datacite_xsd() -> xmlschema.XMLSchema:
    # every include and xml.xsd are local: no network access while loading
    return xmlschema.XMLSchema(
        str((DATA / "datacite-kernel-4.6" / "metadata.xsd").resolve()), allow="local"
    )


@pytest.fixture(scope="module")
def datacite_json_validator() -> jsonschema.Draft201909Validator:
    schema = json.loads((DATA / "datacite-json" / "datacite-v4.5.json").read_text())
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def _actor(session, email):
    return Actor(user=session.scalar(select(User).where(User.email == email)))


def test_the_xsd_rejects_what_datacite_rejects(datacite_xsd):
    """The shipped schema is the real one: a record without a publisher is invalid."""
    record = {"title": "T", "created": "2026-01-01T00:00:00", "url": "https://x.org/t"}
    good = pids.datacite_xml(record, "https://x.org/t", "URL")
    datacite_xsd.validate(good)
    publisher = good.find("{http://datacite.org/schema/kernel-4}publisher")
    good.remove(publisher)
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        datacite_xsd.validate(good)


def test_dataset_and_snapshot_datacite_exports_validate(
    app, client, world, datacite_xsd, datacite_json_validator
):
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        populate(session, world.projects["alpha"], 6, seed=7)
        owner = _actor(session, world.emails["owner"])
        metadata.update_metadata(
            session, owner, session.get(Project, world.projects["alpha"]), GOOD
        )
        snap = snapshots.freeze(
            session,
            owner,
            search.CohortQuery(),
            project_slug="alpha",
            title="All alpha",
            minter=LocalMinter(),
            base_url="http://localhost",
        )
        sid = snap.id
    for url in ("/datasets/alpha/datacite.xml", f"/cohorts/{sid}/datacite.xml"):
        body = client.get(url)
        assert body.status_code == 200
        datacite_xsd.validate(body.get_data(as_text=True))
    # the oai_datacite payloads of the OAI-PMH endpoint too
    listing = ET.fromstring(  # noqa: S314  (our own output)
        client.get("/oai?verb=ListRecords&metadataPrefix=oai_datacite").data
    )
    resources = list(listing.iter("{http://datacite.org/schema/kernel-4}resource"))
    assert len(resources) == 2  # alpha and its snapshot
    for resource in resources:
        datacite_xsd.validate(resource)
    for url in ("/datasets/alpha/datacite.json", f"/cohorts/{sid}/datacite.json"):
        attributes = client.get(url).get_json()["data"]["attributes"]
        errors = sorted(datacite_json_validator.iter_errors(attributes), key=str)
        assert not errors, [e.message for e in errors]
        # and the schema does reject what DataCite rejects
        assert not datacite_json_validator.is_valid({**attributes, "publicationYear": "26"})
