"""Load a generated deid recipe and compile it into a per-tag action table.

The recipe (``anonymizer/data/*.deid``) is parsed by a strict reader over a closed vocabulary:
an unknown action, function, tag form or a recipe without the final ``REMOVE ALL`` raises
:class:`~anonymizer.errors.ProfileError`. Compilation happens once per process; applying the
profile is then a dictionary lookup per element.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pydicom.datadict import tag_for_keyword

from anonymizer.edition import PROFILE_VERSION, RECIPE_PATH
from anonymizer.errors import ProfileError


class Action(enum.Enum):
    """Closed vocabulary of compiled actions."""

    REMOVE = "remove"
    BLANK = "blank"
    KEEP = "keep"
    DUMMY = "dummy"
    PSEUDONYM = "pseudonym"
    REMAP_UID = "remap_uid"
    DATE_SHIFT = "date_shift"
    CLEAN_TEXT = "clean_text"
    CLEAN_SEQUENCE = "clean_sequence"
    KEEP_PRIVATE = "keep_private"


_FUNCS = {
    ("REPLACE", "func:dummy"): Action.DUMMY,
    ("REPLACE", "func:pseudonym"): Action.PSEUDONYM,
    ("REPLACE", "func:remap_uid"): Action.REMAP_UID,
    ("REPLACE", "func:clean_text"): Action.CLEAN_TEXT,
    ("REPLACE", "func:clean_sequence"): Action.CLEAN_SEQUENCE,
    ("JITTER", "func:date_shift"): Action.DATE_SHIFT,
    ("REMOVE", ""): Action.REMOVE,
    ("BLANK", ""): Action.BLANK,
    ("KEEP", ""): Action.KEEP,
}

_EXACT = re.compile(r"^[0-9A-F]{8}$")
_MASK = re.compile(r"^[0-9A-FX]{8}$")
_PRIVATE = re.compile(r'^\(([0-9A-F]{4}),"([^"]+)",([0-9A-F]{2})\)$')


@dataclass(frozen=True)
class Profile:
    """A compiled de-identification profile.

    Attributes
    ----------
    version
        Profile identifier, e.g. ``myovault-ps315-2026c-v1``.
    edition
        Edition of PS3.15 Table E.1-1 the recipe was generated from.
    actions
        Exact public tag (int) → action.
    masks
        ``(mask, value, action)``: the action applies when ``tag & mask == value``.
    safe_private
        ``(group, creator, element offset)`` → name of a kept private attribute.
    options
        ``(code value, code meaning)`` of the CID 7050 options claimed.
    adds
        Keyword → value of attributes set on every output.
    meta
        All ``# @key: value`` metadata of the recipe.
    """

    version: str
    edition: str
    actions: dict[int, Action]
    masks: tuple[tuple[int, int, Action], ...]
    safe_private: dict[tuple[int, str, int], str]
    options: tuple[tuple[str, str], ...]
    adds: dict[str, str]
    meta: dict[str, str] = field(default_factory=dict)

    def action_for(self, tag: int) -> Action:
        """Action for a public tag; everything not listed is removed (fail closed)."""
        action = self.actions.get(tag)
        if action is not None:
            return action
        for mask, value, masked_action in self.masks:
            if tag & mask == value:
                return masked_action
        return Action.REMOVE


def parse_recipe(text: str) -> Profile:
    """Compile recipe text into a :class:`Profile`.

    Raises
    ------
    ProfileError
        On any line outside the closed vocabulary, a duplicate tag or a missing ``REMOVE ALL``.
    """
    meta: dict[str, str] = {}
    options: list[tuple[str, str]] = []
    actions: dict[int, Action] = {}
    masks: list[tuple[int, int, Action]] = []
    safe_private: dict[tuple[int, str, int], str] = {}
    adds: dict[str, str] = {}
    fail_closed = False
    section = ""
    last_comment = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("# @"):
            key, _, value = line[3:].partition(":")
            if key == "option":
                code, _, meaning = value.strip().partition(" ")
                options.append((code, meaning))
            else:
                meta[key] = value.strip()
            continue
        if line.startswith("#"):
            last_comment = line[1:].split("|")[0].strip()
            continue
        if line == "FORMAT dicom" or line == "%header":
            section = line
            continue
        if section != "%header":
            raise ProfileError(f"line {number}: action outside %header: {line!r}")
        if fail_closed:
            raise ProfileError(f"line {number}: action after REMOVE ALL")
        parts = line.split(" ", 2)
        verb = parts[0]
        if verb == "ADD":
            if len(parts) != 3 or tag_for_keyword(parts[1]) is None:
                raise ProfileError(f"line {number}: bad ADD {line!r}")
            adds[parts[1]] = parts[2]
            continue
        if len(parts) < 2:
            raise ProfileError(f"line {number}: missing field in {line!r}")
        target = parts[1]
        value = parts[2] if len(parts) == 3 else ""
        if target.startswith("("):
            target, value = line[len(verb) :].strip(), ""
        if verb == "REMOVE" and target == "ALL" and not value:
            fail_closed = True
            continue
        private = _PRIVATE.match(target) if target.startswith("(") else None
        if private:
            if verb != "KEEP" or value:
                raise ProfileError(f"line {number}: private attributes can only be kept")
            private_key = (int(private[1], 16), str(private[2]), int(private[3], 16))
            safe_private[private_key] = last_comment
            continue
        action = _FUNCS.get((verb, value))
        if action is None:
            raise ProfileError(f"line {number}: unknown action {verb} {value!r}")
        if _EXACT.match(target):
            tag = int(target, 16)
            if tag in actions:
                raise ProfileError(f"line {number}: {target} listed twice")
            actions[tag] = action
        elif _MASK.match(target):
            mask = int("".join("0" if c == "X" else "F" for c in target), 16)
            masks.append((mask, int(target.replace("X", "0"), 16), action))
        else:
            raise ProfileError(f"line {number}: unknown field form {target!r}")
    if not fail_closed:
        raise ProfileError("recipe does not end with REMOVE ALL (not fail-closed)")
    for key in ("profile", "edition"):
        if key not in meta:
            raise ProfileError(f"recipe metadata lacks @{key}")
    if not options or options[0][0] != "113100":
        raise ProfileError("recipe does not claim the Basic Application Confidentiality Profile")
    return Profile(
        version=meta["profile"],
        edition=meta["edition"],
        actions=actions,
        masks=tuple(masks),
        safe_private=safe_private,
        options=tuple(options),
        adds=adds,
        meta=meta,
    )


@lru_cache(maxsize=4)
def _load_cached(path: str) -> Profile:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"cannot read recipe {path}: {exc}") from exc
    return parse_recipe(text)


def load_profile(path: str | Path | None = None) -> Profile:
    """Load and compile a recipe (default: the shipped ``myovault-ps315-2026c-v1``).

    Compiled profiles are cached per path, so repeated calls cost nothing.
    """
    profile = _load_cached(str(path or RECIPE_PATH))
    if path is None and profile.version != PROFILE_VERSION:
        raise ProfileError(f"shipped recipe is {profile.version}, expected {PROFILE_VERSION}")
    return profile
