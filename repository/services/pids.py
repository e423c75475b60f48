"""Persistent identifiers for cohort snapshots, and the DataCite metadata they carry.

Without configuration snapshots get *local* PIDs (``myovault:<lineage>.v<version>``) resolved
by ``/pid/<pid>``. With ``DATACITE_API_URL``, ``DATACITE_REPOSITORY_ID``, ``DATACITE_PASSWORD``
and ``DATACITE_PREFIX`` set, :class:`DataCiteMinter` registers a findable DOI through the
DataCite REST API (``POST /dois``, JSON:API, HTTP basic auth). A failure to mint is an error:
no snapshot is created with a PID that does not resolve.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET  # noqa: S405  (we only build XML, never parse)
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from repository.errors import ServiceUnavailable, ValidationError

LOCAL_PREFIX = "myovault:"
DATACITE_NS = "http://datacite.org/schema/kernel-4"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
DATACITE_SCHEMA = "http://schema.datacite.org/meta/kernel-4/metadata.xsd"
PUBLISHER = "MyoVault"


class PidMinter(Protocol):
    def mint(self, *, suffix: str, attributes: dict[str, Any]) -> tuple[str, str]:
        """Register an identifier; returns ``(pid, kind)`` with kind ``local`` or ``doi``."""
        ...


class LocalMinter:
    """Local PIDs: unique by construction (``suffix`` is lineage + version)."""

    def mint(self, *, suffix: str, attributes: dict[str, Any]) -> tuple[str, str]:
        return f"{LOCAL_PREFIX}{suffix}", "local"


@dataclass(frozen=True)
class DataCiteMinter:
    api_url: str
    repository_id: str
    password: str
    prefix: str
    timeout_s: float = 10.0

    def mint(self, *, suffix: str, attributes: dict[str, Any]) -> tuple[str, str]:
        if not self.api_url.startswith(("https://", "http://")):
            raise ValidationError("DATACITE_API_URL must be an http(s) URL")
        doi = f"{self.prefix}/myovault.{suffix}"
        body = {
            "data": {
                "type": "dois",
                "attributes": {**attributes, "doi": doi, "event": "publish"},
            }
        }
        auth = base64.b64encode(f"{self.repository_id}:{self.password}".encode()).decode()
        request = urllib.request.Request(  # noqa: S310  (scheme checked above)
            self.api_url.rstrip("/") + "/dois",
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Content-Type": "application/vnd.api+json",
                "Accept": "application/vnd.api+json",
                "Authorization": f"Basic {auth}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
            raise ServiceUnavailable(f"DataCite refused the DOI ({exc.code}): {detail}") from None
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
            raise ServiceUnavailable(f"DataCite is unreachable: {exc}") from None
        minted = str(payload.get("data", {}).get("id", ""))
        if minted.lower() != doi.lower():
            raise ServiceUnavailable(f"DataCite returned an unexpected DOI {minted!r}")
        return minted, "doi"


def minter_from_config(config: Mapping[str, Any]) -> PidMinter:
    keys = ("DATACITE_API_URL", "DATACITE_REPOSITORY_ID", "DATACITE_PASSWORD", "DATACITE_PREFIX")
    values = [config.get(k) for k in keys]
    if not any(values):
        return LocalMinter()
    if not all(values):
        missing = [k for k, v in zip(keys, values, strict=True) if not v]
        raise ValidationError(f"DataCite is partly configured; missing {', '.join(missing)}")
    url, repository_id, password, prefix = (str(v) for v in values)
    return DataCiteMinter(url, repository_id, password, prefix)


# --- DataCite metadata (kernel 4) --------------------------------------------------------------


def datacite_attributes(record: Mapping[str, Any]) -> dict[str, Any]:
    """DataCite REST ``attributes`` from a landing record (see ``snapshots.landing_record``)."""
    contact = record.get("contact") or {}
    creator = contact.get("name") or record.get("project_title") or PUBLISHER
    subjects = [{"subject": k} for k in record.get("keywords", [])]
    for d in record.get("diseases", []):
        if d.get("orpha"):
            subjects.append(
                {"subject": d["name"], "subjectScheme": "ORPHA", "valueUri": _orpha_uri(d["orpha"])}
            )
        if d.get("icd10"):
            subjects.append({"subject": f"{d['icd10']} {d['name']}", "subjectScheme": "ICD-10"})
    rights = []
    if record.get("licence"):
        rights.append({"rights": record["licence"], "rightsIdentifier": record["licence"]})
    attrs: dict[str, Any] = {
        "titles": [{"title": record["title"]}],
        "creators": [
            {
                "name": creator,
                "nameType": "Organizational" if not contact.get("name") else "Personal",
            }
        ],
        "publisher": {"name": PUBLISHER},  # the object form of schema 4.5+
        "publicationYear": record["created"][:4],
        "types": {
            "resourceTypeGeneral": "Dataset",
            "resourceType": record.get("resource_type", "Cohort"),
        },
        "descriptions": [
            {
                "description": record.get("description") or record["title"],
                "descriptionType": "Abstract",
            }
        ],
        "subjects": subjects,
        "rightsList": rights,
        "version": str(record.get("version", "1")),
        "url": record["url"],
        "schemaVersion": "http://datacite.org/schema/kernel-4",
    }
    if record.get("funding"):
        attrs["fundingReferences"] = [
            {"funderName": f["funder"], **({"awardNumber": f["award"]} if f.get("award") else {})}
            for f in record["funding"]
        ]
    if record.get("publications"):
        attrs["relatedIdentifiers"] = [
            {
                "relatedIdentifier": p["doi"],
                "relatedIdentifierType": "DOI",
                "relationType": "IsCitedBy",
            }
            for p in record["publications"]
            if p.get("doi")
        ]
    if record.get("is_version_of"):
        attrs.setdefault("relatedIdentifiers", []).append(
            {
                "relatedIdentifier": record["is_version_of"],
                "relatedIdentifierType": "URL",
                "relationType": "IsVersionOf",
            }
        )
    return attrs


_SUBJECT_XML_ATTRS = {"subjectScheme": "subjectScheme", "valueUri": "valueURI"}


def _orpha_uri(code: str) -> str:
    return "https://www.orpha.net/en/disease/detail/" + code.split(":", 1)[1]


def datacite_xml(record: Mapping[str, Any], identifier: str, identifier_type: str) -> ET.Element:
    """A DataCite kernel-4 ``<resource>`` element for ``record``."""
    ET.register_namespace("", DATACITE_NS)
    ET.register_namespace("xsi", XSI)
    attrs = datacite_attributes(record)

    def el(parent: ET.Element, tag: str, value: str | None = None, **attrib: str) -> ET.Element:
        child = ET.SubElement(parent, f"{{{DATACITE_NS}}}{tag}", attrib)
        if value is not None:
            child.text = value
        return child

    root = ET.Element(
        f"{{{DATACITE_NS}}}resource",
        {f"{{{XSI}}}schemaLocation": f"{DATACITE_NS} {DATACITE_SCHEMA}"},
    )
    el(root, "identifier", identifier, identifierType=identifier_type)
    creators = el(root, "creators")
    for c in attrs["creators"]:
        el(el(creators, "creator"), "creatorName", c["name"], nameType=c["nameType"])
    titles = el(root, "titles")
    for t in attrs["titles"]:
        el(titles, "title", t["title"])
    el(root, "publisher", attrs["publisher"]["name"])
    el(root, "publicationYear", attrs["publicationYear"])
    el(root, "resourceType", attrs["types"]["resourceType"], resourceTypeGeneral="Dataset")
    if attrs["subjects"]:
        subjects = el(root, "subjects")
        for s in attrs["subjects"]:
            # XML attribute names differ from the JSON keys (valueURI vs valueUri)
            extra = {xml: s[key] for key, xml in _SUBJECT_XML_ATTRS.items() if key in s}
            el(subjects, "subject", s["subject"], **extra)
    el(root, "version", attrs["version"])
    if attrs["rightsList"]:
        rights = el(root, "rightsList")
        for r in attrs["rightsList"]:
            el(rights, "rights", r["rights"], rightsIdentifier=r["rightsIdentifier"])
    descriptions = el(root, "descriptions")
    for d in attrs["descriptions"]:
        el(descriptions, "description", d["description"], descriptionType=d["descriptionType"])
    if attrs.get("relatedIdentifiers"):
        related = el(root, "relatedIdentifiers")
        for r in attrs["relatedIdentifiers"]:
            el(
                related,
                "relatedIdentifier",
                r["relatedIdentifier"],
                relatedIdentifierType=r["relatedIdentifierType"],
                relationType=r["relationType"],
            )
    if attrs.get("fundingReferences"):
        funding = el(root, "fundingReferences")
        for f in attrs["fundingReferences"]:
            ref = el(funding, "fundingReference")
            el(ref, "funderName", f["funderName"])
            if f.get("awardNumber"):
                el(ref, "awardNumber", f["awardNumber"])
    return root
