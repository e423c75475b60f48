"""Table-driven classification of MR series (pure: records in, classification out).

The rules live in a versioned JSON table (``ingest/data/classification-v1.json``) over a closed
vocabulary of *features* computed here and *operators* defined here. Loading a table that uses
anything else raises :class:`~ingest.errors.RuleTableError`; a series that matches no rule is
labelled ``other`` with the features that were seen, never given a silent default.

Two stages:

1. every image gets an *image part* (``magnitude``, ``phase``, ``real``, ``imaginary``,
   ``water``, ``fat``, ``in_phase``, ``opposed_phase``, or ``unknown``) from vendor hints:
   ImageType tokens, ComplexImageComponent (enhanced MR), GE private (0043,102F), GE IDEAL
   series descriptions;
2. the series (all its parts together) gets a *label* from the series rules.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ingest.errors import RuleTableError
from ingest.records import InstanceRecord, SeriesRecord

LABELS = frozenset(
    {
        "dixon",
        "megre",
        "mese",
        "t1w",
        "t2w",
        "stir",
        "dti",
        "dti_derived",
        "localizer",
        "other",
    }
)
DATATYPE_RE = re.compile(r"mr-[a-z]+")
PARTS = frozenset(
    {
        "magnitude",
        "phase",
        "real",
        "imaginary",
        "water",
        "fat",
        "in_phase",
        "opposed_phase",
        "unknown",
    }
)
DEFAULT_RULES = "classification-v1.json"
RULES_DIR = Path(__file__).resolve().parent / "data"  # packaged via package-data "data/*"


def normalize_manufacturer(manufacturer: str) -> str:
    """Map a DICOM Manufacturer string to ``siemens``, ``ge``, ``philips`` or ``unknown``."""
    upper = manufacturer.upper()
    if "SIEMENS" in upper:
        return "siemens"
    if "PHILIPS" in upper:
        return "philips"
    if upper.startswith("GE ") or upper == "GE" or "GENERAL ELECTRIC" in upper:
        return "ge"
    return "unknown"


# --------------------------------------------------------------------------------------------
# Features (closed vocabulary)


def image_features(record: InstanceRecord) -> dict[str, Any]:
    """Features of one image, used by the part rules."""
    return {
        "manufacturer": normalize_manufacturer(record.manufacturer),
        "image_type": frozenset(record.image_type),
        "complex_image_component": (record.complex_image_component or "").upper() or None,
        "ge_image_part": record.ge_image_part,
        "series_description": (record.series_description or "").lower(),
    }


def _min(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _max(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def series_features(records: Sequence[InstanceRecord], parts: Iterable[str]) -> dict[str, Any]:
    """Features of a whole series, used by the series rules."""
    first = records[0]
    echo_times = {round(r.echo_time_ms, 3) for r in records if r.echo_time_ms is not None}
    return {
        "manufacturer": normalize_manufacturer(first.manufacturer),
        "parts": frozenset(parts),
        "n_echoes": max(len(echo_times), 1),
        "scanning_sequence": frozenset(t for r in records for t in r.scanning_sequence),
        "image_type": frozenset(t for r in records for t in r.image_type),
        "series_description": (first.series_description or "").lower(),
        "sequence_name": (first.sequence_name or "").lower(),
        "b_value_max": _max(r.diffusion_b_value for r in records),
        "echo_time_ms_min": _min(r.echo_time_ms for r in records),
        "echo_time_ms_max": _max(r.echo_time_ms for r in records),
        "repetition_time_ms": _min(r.repetition_time_ms for r in records),
        "inversion_time_ms": _min(r.inversion_time_ms for r in records),
        "enhanced": first.is_enhanced,
    }


IMAGE_FEATURES = frozenset(
    {"manufacturer", "image_type", "complex_image_component", "ge_image_part", "series_description"}
)
SERIES_FEATURES = frozenset(
    {
        "manufacturer",
        "parts",
        "n_echoes",
        "scanning_sequence",
        "image_type",
        "series_description",
        "sequence_name",
        "b_value_max",
        "echo_time_ms_min",
        "echo_time_ms_max",
        "repetition_time_ms",
        "inversion_time_ms",
        "enhanced",
    }
)


# --------------------------------------------------------------------------------------------
# Operators (closed vocabulary). None never satisfies a comparison.


def _num(op: Callable[[float, float], bool]) -> Callable[[Any, Any], bool]:
    return lambda a, b: a is not None and op(float(a), float(b))


OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a is not None and a == b,
    "in": lambda a, b: a is not None and a in b,
    "contains": lambda a, b: a is not None and b in a,
    "intersects": lambda a, b: a is not None and bool(set(a) & set(b)),
    "subset_of": lambda a, b: a is not None and set(a) <= set(b),
    "matches": lambda a, b: bool(a) and re.search(b, a) is not None,
    "gt": _num(lambda a, b: a > b),
    "gte": _num(lambda a, b: a >= b),
    "lt": _num(lambda a, b: a < b),
    "lte": _num(lambda a, b: a <= b),
    "is_null": lambda a, _b: a is None,
    "not_null": lambda a, _b: a is not None,
}
_VALUELESS = frozenset({"is_null", "not_null"})


@dataclass(frozen=True, slots=True)
class Condition:
    feature: str
    op: str
    value: Any

    def holds(self, features: Mapping[str, Any]) -> bool:
        return OPERATORS[self.op](features[self.feature], self.value)


@dataclass(frozen=True, slots=True)
class Predicate:
    """``all`` must hold, at least one of ``any`` (if given), and none of ``none``."""

    all: tuple[Condition, ...]
    any: tuple[Condition, ...]
    none: tuple[Condition, ...]

    def holds(self, features: Mapping[str, Any]) -> bool:
        return (
            all(c.holds(features) for c in self.all)
            and (not self.any or any(c.holds(features) for c in self.any))
            and not any(c.holds(features) for c in self.none)
        )


@dataclass(frozen=True, slots=True)
class PartRule:
    id: str
    part: str
    when: Predicate


@dataclass(frozen=True, slots=True)
class SeriesRule:
    id: str
    label: str
    when: Predicate


@dataclass(frozen=True, slots=True)
class OutputName:
    """ORMIR-MIDS name entities of one output file (``acq``/``part`` optional) and the
    folder (``datatype``: ``mr-anat``, or ``mr-dwi`` for diffusion)."""

    suffix: str
    part: str | None = None
    acq: str | None = None
    datatype: str = "mr-anat"


@dataclass(frozen=True, slots=True)
class NotConverted:
    kind: str  # "skipped" | "refused"
    reason: str


@dataclass(frozen=True, slots=True)
class RuleTable:
    """A loaded, validated rule table."""

    name: str
    version: str
    part_rules: tuple[PartRule, ...]
    series_rules: tuple[SeriesRule, ...]
    outputs: Mapping[str, Mapping[str, OutputName]]
    not_converted: Mapping[str, NotConverted]


def _condition(raw: Mapping[str, Any], allowed: frozenset[str], where: str) -> Condition:
    unknown_keys = set(raw) - {"feature", "op", "value"}
    if unknown_keys:
        raise RuleTableError(f"{where}: unknown keys {sorted(unknown_keys)}")
    feature, op = raw.get("feature"), raw.get("op")
    if feature not in allowed:
        raise RuleTableError(f"{where}: unknown feature {feature!r}")
    if op not in OPERATORS:
        raise RuleTableError(f"{where}: unknown operator {op!r}")
    if op not in _VALUELESS and "value" not in raw:
        raise RuleTableError(f"{where}: operator {op!r} needs a value")
    value = raw.get("value")
    if op == "matches":
        if not isinstance(value, str):
            raise RuleTableError(f"{where}: 'matches' needs a string pattern")
        try:
            re.compile(value)
        except (re.error, TypeError) as exc:
            raise RuleTableError(f"{where}: bad regular expression {value!r}: {exc}") from exc
    return Condition(feature, op, value)


def _predicate(raw: Any, allowed: frozenset[str], where: str) -> Predicate:
    if not isinstance(raw, Mapping) or not raw:
        raise RuleTableError(f"{where}: 'when' must be a non-empty object")
    unknown_keys = set(raw) - {"all", "any", "none"}
    if unknown_keys:
        raise RuleTableError(f"{where}: unknown keys {sorted(unknown_keys)}")
    groups = {
        key: tuple(
            _condition(c, allowed, f"{where}.{key}[{i}]") for i, c in enumerate(raw.get(key, []))
        )
        for key in ("all", "any", "none")
    }
    if not groups["all"] and not groups["any"]:
        raise RuleTableError(f"{where}: a rule needs 'all' or 'any' conditions")
    return Predicate(groups["all"], groups["any"], groups["none"])


def parse_rule_table(raw: Mapping[str, Any]) -> RuleTable:
    """Validate a decoded rule table; raise :class:`RuleTableError` on anything unknown."""
    required = {"name", "version", "part_rules", "series_rules", "outputs", "not_converted"}
    missing = required - set(raw)
    if missing:
        raise RuleTableError(f"rule table misses {sorted(missing)}")
    unknown = set(raw) - required - {"comment"}
    if unknown:
        raise RuleTableError(f"rule table has unknown keys {sorted(unknown)}")
    ids: set[str] = set()

    def _id(rule: Mapping[str, Any], where: str) -> str:
        rule_id = rule.get("id")
        if not isinstance(rule_id, str) or not rule_id or rule_id in ids:
            raise RuleTableError(f"{where}: missing or duplicate rule id {rule_id!r}")
        ids.add(rule_id)
        return rule_id

    part_rules = []
    for i, rule in enumerate(raw["part_rules"]):
        where = f"part_rules[{i}]"
        if rule.get("part") not in PARTS - {"unknown"}:
            raise RuleTableError(f"{where}: unknown part {rule.get('part')!r}")
        part_rules.append(
            PartRule(
                _id(rule, where), rule["part"], _predicate(rule.get("when"), IMAGE_FEATURES, where)
            )
        )
    series_rules = []
    for i, rule in enumerate(raw["series_rules"]):
        where = f"series_rules[{i}]"
        if rule.get("label") not in LABELS - {"other"}:
            raise RuleTableError(f"{where}: unknown label {rule.get('label')!r}")
        series_rules.append(
            SeriesRule(
                _id(rule, where),
                rule["label"],
                _predicate(rule.get("when"), SERIES_FEATURES, where),
            )
        )
    outputs: dict[str, dict[str, OutputName]] = {}
    for label, by_part in raw["outputs"].items():
        if label not in LABELS:
            raise RuleTableError(f"outputs: unknown label {label!r}")
        outputs[label] = {}
        for part, entities in by_part.items():
            if part not in PARTS - {"unknown"}:
                raise RuleTableError(f"outputs.{label}: unknown part {part!r}")
            bad = set(entities) - {"suffix", "part", "acq", "datatype"}
            if bad or not re.fullmatch(r"[A-Za-z0-9]+", str(entities.get("suffix", ""))):
                raise RuleTableError(f"outputs.{label}.{part}: bad name entities {entities!r}")
            for key in ("part", "acq"):
                if key in entities and not re.fullmatch(r"[a-z0-9]+", str(entities[key])):
                    raise RuleTableError(f"outputs.{label}.{part}: bad {key} {entities[key]!r}")
            datatype = str(entities.get("datatype", "mr-anat"))
            if not DATATYPE_RE.fullmatch(datatype):
                raise RuleTableError(f"outputs.{label}.{part}: bad datatype {datatype!r}")
            outputs[label][part] = OutputName(
                entities["suffix"], entities.get("part"), entities.get("acq"), datatype
            )
    not_converted: dict[str, NotConverted] = {}
    for label, entry in raw["not_converted"].items():
        if label not in LABELS or label in outputs:
            raise RuleTableError(f"not_converted: bad label {label!r}")
        if entry.get("kind") not in {"skipped", "refused"} or not entry.get("reason"):
            raise RuleTableError(f"not_converted.{label}: needs kind skipped|refused and a reason")
        not_converted[label] = NotConverted(entry["kind"], entry["reason"])
    uncovered = LABELS - set(outputs) - set(not_converted)
    if uncovered:
        raise RuleTableError(f"labels with neither output nor not_converted: {sorted(uncovered)}")
    return RuleTable(
        name=str(raw["name"]),
        version=str(raw["version"]),
        part_rules=tuple(part_rules),
        series_rules=tuple(series_rules),
        outputs=outputs,
        not_converted=not_converted,
    )


def load_rule_table(path: str | Path | None = None) -> RuleTable:
    """Load a rule table from ``path`` (default: the packaged ``classification-v1.json``)."""
    if path is None:
        return _default_table()
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RuleTableError(f"cannot read rule table {path}: {exc}") from exc
    return parse_rule_table(raw)


@lru_cache(maxsize=1)
def _default_table() -> RuleTable:
    text = (RULES_DIR / DEFAULT_RULES).read_text(encoding="utf-8")
    return parse_rule_table(json.loads(text))


# --------------------------------------------------------------------------------------------
# Classification


@dataclass(frozen=True, slots=True)
class Classification:
    """What a series is, which rule said so, and how many images of each part it holds."""

    series_instance_uid: str
    label: str
    rule_id: str | None
    reason: str
    parts: tuple[tuple[str, int], ...]  # (part, number of images), sorted by part
    rules_version: str

    @property
    def part_names(self) -> tuple[str, ...]:
        return tuple(p for p, _ in self.parts)


def image_part(record: InstanceRecord, table: RuleTable | None = None) -> str:
    """The image part of one image (``unknown`` when no part rule matches)."""
    rules = table or _default_table()
    features = image_features(record)
    for rule in rules.part_rules:
        if rule.when.holds(features):
            return rule.part
    return "unknown"


def _describe(features: Mapping[str, Any]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, frozenset):
            return "{" + ",".join(sorted(map(str, value))) + "}"
        return repr(value)

    keys = (
        "manufacturer",
        "parts",
        "n_echoes",
        "scanning_sequence",
        "echo_time_ms_min",
        "repetition_time_ms",
        "inversion_time_ms",
        "image_type",
    )
    return ", ".join(f"{k}={fmt(features[k])}" for k in keys)


def classify_series(series: SeriesRecord, table: RuleTable | None = None) -> Classification:
    """Classify one series with the rule table (first matching series rule wins).

    Returns ``label="other"`` with the observed features as the reason when no rule matches.
    """
    rules = table or _default_table()
    parts = [image_part(r, rules) for r in series.instances]
    counts = tuple(sorted(Counter(parts).items()))
    features = series_features(series.instances, (p for p, _ in counts))
    for rule in rules.series_rules:
        if rule.when.holds(features):
            return Classification(
                series.series_instance_uid,
                rule.label,
                rule.id,
                f"rule {rule.id!r} of {rules.name} v{rules.version}",
                counts,
                rules.version,
            )
    unknown = dict(counts).get("unknown")
    hint = f"{unknown} image(s) with no recognisable image part; " if unknown else ""
    return Classification(
        series.series_instance_uid,
        "other",
        None,
        f"no rule of {rules.name} v{rules.version} matched: {hint}{_describe(features)}",
        counts,
        rules.version,
    )


def split_by_part(
    series: SeriesRecord, table: RuleTable | None = None
) -> dict[str, tuple[InstanceRecord, ...]]:
    """The images of a series grouped by image part (insertion order of first appearance)."""
    rules = table or _default_table()
    groups: dict[str, list[InstanceRecord]] = {}
    for record in series.instances:
        groups.setdefault(image_part(record, rules), []).append(record)
    return {part: tuple(records) for part, records in groups.items()}
