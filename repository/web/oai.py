"""OAI-PMH 2.0 data provider for the public metadata (projects and cohort snapshots).

Verbs: Identify, ListMetadataFormats, ListSets, ListIdentifiers, ListRecords, GetRecord.
Formats: ``oai_dc`` and ``oai_datacite`` (DataCite kernel 4). Sets: ``projects``,
``snapshots``. Only what an anonymous visitor may see is harvestable. Resumption tokens are
opaque ``<signed payload>.<signature>``; a token is bound to its request's arguments and
expires after :data:`TOKEN_TTL` (announced in its ``expirationDate``); an expired, altered or
malformed token gets ``badResumptionToken``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import xml.etree.ElementTree as ET  # noqa: S405  (we only build XML)
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, current_app, request, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response

from repository.models import CohortSnapshot, Project
from repository.models._types import utcnow
from repository.request_context import db
from repository.security import policy
from repository.services import snapshots
from repository.services.context import ANONYMOUS
from repository.services.pids import DATACITE_NS, datacite_xml

bp = Blueprint("oai", __name__)

OAI_NS = "http://www.openarchives.org/OAI/2.0/"
OAI_SCHEMA = "http://www.openarchives.org/OAI/2.0/OAI-PMH.xsd"
OAI_DC_NS = "http://www.openarchives.org/OAI/2.0/oai_dc/"
DC_NS = "http://purl.org/dc/elements/1.1/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
PAGE_SIZE = 50
TOKEN_TTL = timedelta(hours=24)
EARLIEST = "2020-01-01T00:00:00Z"

FORMATS = {
    "oai_dc": ("http://www.openarchives.org/OAI/2.0/oai_dc.xsd", OAI_DC_NS),
    "oai_datacite": ("http://schema.datacite.org/meta/kernel-4/metadata.xsd", DATACITE_NS),
}
SETS = {"projects": "Datasets (projects)", "snapshots": "Cohort snapshots"}
VERB_ARGS = {
    "Identify": (set(), set()),
    "ListMetadataFormats": (set(), {"identifier"}),
    "ListSets": (set(), {"resumptionToken"}),
    "GetRecord": ({"identifier", "metadataPrefix"}, set()),
    "ListIdentifiers": ({"metadataPrefix"}, {"from", "until", "set", "resumptionToken"}),
    "ListRecords": ({"metadataPrefix"}, {"from", "until", "set", "resumptionToken"}),
}

for prefix, ns in (("", OAI_NS), ("oai_dc", OAI_DC_NS), ("dc", DC_NS), ("xsi", XSI)):
    ET.register_namespace(prefix, ns)


class OaiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _q(tag: str, ns: str = OAI_NS) -> str:
    return f"{{{ns}}}{tag}"


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _host() -> str:
    return request.host.split(":")[0] or "localhost"


def _parse_date(raw: str, name: str, end: bool) -> datetime:
    for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d"):
        try:
            value = datetime.strptime(raw, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
        if fmt == "%Y-%m-%d" and end:
            value = value.replace(hour=23, minute=59, second=59)
        return value
    raise OaiError("badArgument", f"{name} must be YYYY-MM-DD or YYYY-MM-DDThh:mm:ssZ")


def _sign(payload: str) -> str:
    key = str(current_app.config["SECRET_KEY"]).encode()
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()[:16]


def _make_token(args: dict[str, str], offset: int) -> tuple[str, datetime]:
    """A signed token for the next page and the moment it expires (whole seconds, UTC)."""
    expires = (utcnow() + TOKEN_TTL).replace(microsecond=0)
    payload = base64.urlsafe_b64encode(
        json.dumps(
            {**args, "offset": offset, "exp": int(expires.timestamp())}, sort_keys=True
        ).encode()
    ).decode()
    return f"{payload}.{_sign(payload)}", expires


def _read_token(token: str) -> dict[str, Any]:
    payload, _, sig = token.partition(".")
    if not payload or not hmac.compare_digest(sig, _sign(payload)):
        raise OaiError("badResumptionToken", "the resumption token is invalid")
    try:
        data = json.loads(base64.urlsafe_b64decode(payload.encode()))
    except (ValueError, json.JSONDecodeError):
        raise OaiError("badResumptionToken", "the resumption token is invalid") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("offset"), int)
        or not isinstance(data.get("exp"), int)
    ):
        raise OaiError("badResumptionToken", "the resumption token is invalid")
    if utcnow().timestamp() > data.pop("exp"):
        raise OaiError("badResumptionToken", "the resumption token has expired; start again")
    return data


# --- items -----------------------------------------------------------------------------------


def _items(
    set_spec: str | None, since: datetime | None, until: datetime | None
) -> list[tuple[str, datetime, str, Any]]:
    """Every public item as (identifier, datestamp, set, object), ordered by identifier."""
    session = db()
    host = _host()
    out: list[tuple[str, datetime, str, Any]] = []
    visible = policy.project_filter(ANONYMOUS, "project.view_metadata")
    if set_spec in (None, "projects"):
        for p in session.scalars(select(Project).where(visible).order_by(Project.id)):
            out.append(
                (
                    f"oai:{host}:project/{p.slug}",
                    p.metadata_updated_at or p.created_at,
                    "projects",
                    p,
                )
            )
    if set_spec in (None, "snapshots"):
        stmt = (
            select(CohortSnapshot)
            .join(Project, Project.id == CohortSnapshot.project_id)
            .where(visible)
        )
        for s in session.scalars(stmt.order_by(CohortSnapshot.id)):
            out.append((f"oai:{host}:snapshot/{s.id}", s.created_at, "snapshots", s))
    return [i for i in out if (since is None or i[1] >= since) and (until is None or i[1] <= until)]


def _find(identifier: str) -> tuple[str, datetime, str, Any]:
    for item in _items(None, None, None):
        if item[0] == identifier:
            return item
    raise OaiError("idDoesNotExist", f"no public record {identifier}")


def _record_of(obj: Any) -> tuple[dict[str, Any], str, str]:
    """(landing record, identifier for metadata, identifier type)."""
    session = db()
    if isinstance(obj, Project):
        url = url_for("catalog.dataset_page", slug=obj.slug, _external=True)
        return snapshots.landing_record_for(obj, None, url=url), url, "URL"
    project = session.get(Project, obj.project_id)
    url = url_for("catalog.snapshot_page", snapshot_id=obj.id, _external=True)
    record = snapshots.landing_record_for(project, obj, url=url)  # type: ignore[arg-type]
    if obj.pid_kind == "doi":
        return record, obj.pid, "DOI"
    return record, url, "URL"


def _oai_dc(record: dict[str, Any], identifier: str) -> ET.Element:
    root = ET.Element(
        _q("dc", OAI_DC_NS), {_q("schemaLocation", XSI): f"{OAI_DC_NS} {FORMATS['oai_dc'][0]}"}
    )

    def dc(tag: str, value: str) -> None:
        if value:
            ET.SubElement(root, _q(tag, DC_NS)).text = value

    dc("title", record["title"])
    contact = record.get("contact") or {}
    dc("creator", contact.get("name") or "MyoVault")
    for k in record.get("keywords", []):
        dc("subject", k)
    for d in record.get("diseases", []):
        dc("subject", d["name"])
        for code in (d.get("orpha"), d.get("icd10") and f"ICD-10:{d['icd10']}"):
            if code:
                dc("subject", code)
    dc("description", record.get("description", ""))
    dc("publisher", "MyoVault")
    dc("date", record["created"][:10])
    dc("type", "Dataset")
    dc("identifier", identifier)
    if record.get("pid"):
        dc("identifier", record["pid"])
    dc("rights", record.get("licence", ""))
    for t in record.get("data_use_conditions", []):
        dc("rights", t)
    return root


def _header(parent: ET.Element, ident: str, stamp: datetime, set_spec: str) -> None:
    header = ET.SubElement(parent, _q("header"))
    ET.SubElement(header, _q("identifier")).text = ident
    ET.SubElement(header, _q("datestamp")).text = _stamp(stamp)
    ET.SubElement(header, _q("setSpec")).text = set_spec


def _record(parent: ET.Element, item: tuple[str, datetime, str, Any], prefix: str) -> None:
    ident, stamp, set_spec, obj = item
    rec = ET.SubElement(parent, _q("record"))
    _header(rec, ident, stamp, set_spec)
    meta = ET.SubElement(rec, _q("metadata"))
    record, ident_value, ident_type = _record_of(obj)
    if prefix == "oai_dc":
        meta.append(_oai_dc(record, ident_value))
    else:
        meta.append(datacite_xml(record, ident_value, ident_type))


# --- protocol --------------------------------------------------------------------------------


def _envelope(args: dict[str, str]) -> ET.Element:
    root = ET.Element(_q("OAI-PMH"), {_q("schemaLocation", XSI): f"{OAI_NS} {OAI_SCHEMA}"})
    ET.SubElement(root, _q("responseDate")).text = _stamp(utcnow())
    req = ET.SubElement(root, _q("request"), args)
    req.text = url_for("oai.endpoint", _external=True)
    return root


def _respond(root: ET.Element) -> Response:
    body = ET.tostring(root, encoding="unicode")
    return Response('<?xml version="1.0" encoding="UTF-8"?>\n' + body, mimetype="text/xml")


@bp.route("/oai", methods=["GET", "POST"])
def endpoint() -> Response:
    params = request.values
    args = {k: params.get(k, "") for k in params}
    try:
        if any(len(params.getlist(k)) > 1 for k in params):
            raise OaiError("badArgument", "repeated argument")
        verb = args.get("verb", "")
        if verb not in VERB_ARGS:
            raise OaiError("badVerb", "illegal or missing verb")
        root = _envelope(args)
        required, optional = VERB_ARGS[verb]
        given = set(args) - {"verb"}
        if "resumptionToken" in given and given != {"resumptionToken"}:
            raise OaiError("badArgument", "resumptionToken is exclusive")
        if "resumptionToken" not in given and (required - given or given - required - optional):
            raise OaiError(
                "badArgument", f"arguments of {verb}: {', '.join(sorted(required | optional))}"
            )
        body = ET.SubElement(root, _q(verb))
        _dispatch(verb, args, body)
        return _respond(root)
    except OaiError as exc:
        root = _envelope(
            {k: v for k, v in args.items() if exc.code not in ("badVerb", "badArgument")}
        )
        ET.SubElement(root, _q("error"), {"code": exc.code}).text = exc.message
        return _respond(root)


def _dispatch(verb: str, args: dict[str, str], body: ET.Element) -> None:
    if verb == "Identify":
        for tag, value in (
            ("repositoryName", "MyoVault"),
            ("baseURL", url_for("oai.endpoint", _external=True)),
            ("protocolVersion", "2.0"),
            (
                "adminEmail",
                str(current_app.config.get("ADMIN_EMAIL") or "admin@localhost.localdomain"),
            ),
            ("earliestDatestamp", EARLIEST),
            ("deletedRecord", "no"),
            ("granularity", "YYYY-MM-DDThh:mm:ssZ"),
        ):
            ET.SubElement(body, _q(tag)).text = value
        return
    if verb == "ListMetadataFormats":
        if args.get("identifier"):
            _find(args["identifier"])
        for prefix, (schema, ns) in FORMATS.items():
            fmt = ET.SubElement(body, _q("metadataFormat"))
            ET.SubElement(fmt, _q("metadataPrefix")).text = prefix
            ET.SubElement(fmt, _q("schema")).text = schema
            ET.SubElement(fmt, _q("metadataNamespace")).text = ns
        return
    if verb == "ListSets":
        if args.get("resumptionToken"):
            raise OaiError("badResumptionToken", "ListSets is never paged")
        for spec, name in SETS.items():
            s = ET.SubElement(body, _q("set"))
            ET.SubElement(s, _q("setSpec")).text = spec
            ET.SubElement(s, _q("setName")).text = name
        return
    if verb == "GetRecord":
        if args["metadataPrefix"] not in FORMATS:
            raise OaiError("cannotDisseminateFormat", "use oai_dc or oai_datacite")
        _record(body, _find(args["identifier"]), args["metadataPrefix"])
        return
    # ListIdentifiers / ListRecords
    offset = 0
    if args.get("resumptionToken"):
        state = _read_token(args["resumptionToken"])
        offset = state.pop("offset")
        args = {k: str(v) for k, v in state.items()}
    prefix = args.get("metadataPrefix", "")
    if prefix not in FORMATS:
        raise OaiError("cannotDisseminateFormat", "use oai_dc or oai_datacite")
    set_spec = args.get("set") or None
    if set_spec is not None and set_spec not in SETS:
        raise OaiError("badArgument", f"no set {set_spec!r}")
    since = _parse_date(args["from"], "from", False) if args.get("from") else None
    until = _parse_date(args["until"], "until", True) if args.get("until") else None
    if args.get("from") and args.get("until") and len(args["from"]) != len(args["until"]):
        raise OaiError("badArgument", "from and until must have the same granularity")
    items = _items(set_spec, since, until)
    if not items:
        raise OaiError("noRecordsMatch", "no records match")
    page = items[offset : offset + PAGE_SIZE]
    for item in page:
        if verb == "ListIdentifiers":
            _header(body, item[0], item[1], item[2])
        else:
            _record(body, item, prefix)
    if offset + PAGE_SIZE < len(items) or offset > 0:
        keep = {
            k: v for k, v in args.items() if k in ("metadataPrefix", "set", "from", "until") and v
        }
        attrs = {"completeListSize": str(len(items)), "cursor": str(offset)}
        token = ""
        if offset + PAGE_SIZE < len(items):
            token, expires = _make_token(keep, offset + PAGE_SIZE)
            attrs["expirationDate"] = _stamp(expires)
        ET.SubElement(body, _q("resumptionToken"), attrs).text = token
