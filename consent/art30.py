"""GDPR Art. 30 record of processing activities for one project, from facts the repository holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from consent.records import ART6_BASES, ART9_CONDITIONS

SECURITY_MEASURES = (
    "pseudonymisation at ingest; identifiable data only in encrypted, short-lived quarantine",
    "envelope encryption at rest (AES-256-GCM), one data key per participant",
    "crypto-shredding on erasure (participant data key destroyed)",
    "role-based access, denied by default; time-limited, revocable data-access grants",
    "hash-chained, append-only audit log of every access and change",
)


@dataclass(frozen=True)
class Recipient:
    institution: str
    country: str
    grants: int


@dataclass(frozen=True)
class ProcessingFacts:
    project: str
    title: str
    controller: str
    purposes: Sequence[str]
    subjects: int
    lawful_bases: Mapping[str, int]  # "6(1)(e)+9(2)(j)" -> participants
    data_categories: Sequence[str]
    processing_steps: Sequence[str]  # software and versions that processed the data
    recipients: Sequence[Recipient]
    retention: str
    generated_at: str
    extra: Mapping[str, Any] = field(default_factory=dict)


def _describe_basis(key: str) -> str:
    parts = []
    for part in key.split("+"):
        label = ART6_BASES.get(part) or ART9_CONDITIONS.get(part) or "unknown"
        parts.append(f"Art. {part} ({label})")
    return " and ".join(parts)


def art30_record(
    facts: ProcessingFacts, *, eu_countries: frozenset[str] | None = None
) -> dict[str, Any]:
    """The Art. 30(1) fields as a JSON-serialisable dict.

    Recipients outside ``eu_countries`` (default: EU/EEA) are listed as third-country transfers.
    """
    eea = eu_countries or EEA
    return {
        "record": "GDPR Art. 30(1) record of processing activities",
        "project": facts.project,
        "name_of_processing": facts.title,
        "controller": facts.controller,
        "purposes": list(facts.purposes),
        "categories_of_data_subjects": [
            f"research participants (pseudonymised), {facts.subjects} recorded"
        ],
        "categories_of_personal_data": list(facts.data_categories),
        "lawful_bases": [
            {"basis": _describe_basis(k), "participants": n}
            for k, n in sorted(facts.lawful_bases.items())
        ],
        "recipients": [
            {"institution": r.institution, "country": r.country, "grants": r.grants}
            for r in facts.recipients
        ],
        "third_country_transfers": sorted(
            {r.country for r in facts.recipients if r.country and r.country not in eea}
        ),
        "retention": facts.retention,
        "technical_and_organisational_measures": list(SECURITY_MEASURES),
        "processing_steps": list(facts.processing_steps),
        "generated_at": facts.generated_at,
        **dict(facts.extra),
    }


EEA = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "HU",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
        "IS",
        "LI",
        "NO",
    ]
)
