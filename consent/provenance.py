"""W3C PROV documents of stored objects and derived numbers, built with the ``prov`` package.

The repository gathers what happened (uploads, pipeline steps with software/model versions and
parameters, inputs by hash) into a :class:`ProvGraph` of plain records; :func:`build_document`
turns it into a :class:`prov.model.ProvDocument` and :func:`to_prov_json` serialises it.
Local identifiers never contain personal data: subjects appear by pseudonym only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from prov.model import ProvDocument

from consent.errors import ConsentError

NAMESPACE_PREFIX = "mv"
NAMESPACE_URI = "urn:myovault:"
AGENT_TYPES = {
    "person": "prov:Person",
    "software": "prov:SoftwareAgent",
    "organization": "prov:Organization",
}


@dataclass(frozen=True)
class ProvEntity:
    id: str
    label: str
    kind: str
    sha256: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProvAgent:
    id: str
    label: str
    kind: Literal["person", "software", "organization"]
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProvActivity:
    """One step: ``used`` and ``generated`` are entity ids, ``agents`` agent ids."""

    id: str
    label: str
    used: tuple[str, ...] = ()
    generated: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    started: datetime | None = None
    ended: datetime | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProvGraph:
    entities: tuple[ProvEntity, ...] = ()
    agents: tuple[ProvAgent, ...] = ()
    activities: tuple[ProvActivity, ...] = ()
    attributions: tuple[tuple[str, str], ...] = ()  # (entity id, agent id)
    derivations: tuple[tuple[str, str], ...] = ()  # (derived entity id, source entity id)


def _q(local: str) -> str:
    return f"{NAMESPACE_PREFIX}:{local}"


def _attr_value(value: Any) -> Any:
    if isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _attrs(extra: Mapping[str, Any]) -> dict[str, Any]:
    return {_q(k): _attr_value(v) for k, v in sorted(extra.items()) if v not in (None, "")}


def build_document(graph: ProvGraph) -> ProvDocument:
    """A PROV document of ``graph``; dangling references raise :class:`ConsentError`."""
    entity_ids = {e.id for e in graph.entities}
    agent_ids = {a.id for a in graph.agents}
    if len(entity_ids) != len(graph.entities) or len(agent_ids) != len(graph.agents):
        raise ConsentError("duplicate ids in the provenance graph")
    for activity in graph.activities:
        for ref in (*activity.used, *activity.generated):
            if ref not in entity_ids:
                raise ConsentError(f"activity {activity.id} refers to unknown entity {ref}")
        for ref in activity.agents:
            if ref not in agent_ids:
                raise ConsentError(f"activity {activity.id} refers to unknown agent {ref}")
    for ent, agent_ref in graph.attributions:
        if ent not in entity_ids or agent_ref not in agent_ids:
            raise ConsentError(f"attribution {ent} -> {agent_ref} refers to unknown ids")
    for derived, source in graph.derivations:
        if derived not in entity_ids or source not in entity_ids:
            raise ConsentError(f"derivation {derived} <- {source} refers to unknown ids")

    doc = ProvDocument()
    doc.add_namespace(NAMESPACE_PREFIX, NAMESPACE_URI)
    for entity in graph.entities:
        attrs = {"prov:label": entity.label, _q("kind"): entity.kind}
        if entity.sha256:
            attrs[_q("sha256")] = entity.sha256
        attrs.update(_attrs(entity.attributes))
        doc.entity(_q(entity.id), attrs)
    for agent in graph.agents:
        attrs = {"prov:label": agent.label, "prov:type": AGENT_TYPES[agent.kind]}
        attrs.update(_attrs(agent.attributes))
        doc.agent(_q(agent.id), attrs)
    for activity in graph.activities:
        attrs = {"prov:label": activity.label, **_attrs(activity.attributes)}
        doc.activity(_q(activity.id), activity.started, activity.ended, attrs)
        for ref in activity.used:
            doc.used(_q(activity.id), _q(ref))
        for ref in activity.generated:
            doc.wasGeneratedBy(_q(ref), _q(activity.id))
        for ref in activity.agents:
            doc.wasAssociatedWith(_q(activity.id), _q(ref))
    for ent, agent_ref in graph.attributions:
        doc.wasAttributedTo(_q(ent), _q(agent_ref))
    for derived, source in graph.derivations:
        doc.wasDerivedFrom(_q(derived), _q(source))
    return doc


def to_prov_json(graph: ProvGraph) -> str:
    """PROV-JSON text of ``graph``."""
    return str(build_document(graph).serialize(format="json"))
