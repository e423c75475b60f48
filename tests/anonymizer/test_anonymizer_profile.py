"""The recipe is generated data: up to date, complete, fail-closed, readable by deid."""

from __future__ import annotations

import logging

import pytest
from deid.config import DeidRecipe

from anonymizer import Action, ProfileError, load_profile
from anonymizer.profile import parse_recipe
from anonymizer.profile_build import (
    RECIPE_PATH,
    TABLE_2024B,
    TABLE_2026C,
    generate,
    load_options_2024b,
    parse_dicomfields,
)


def test_committed_recipe_equals_fresh_generation() -> None:
    assert RECIPE_PATH.read_text(encoding="utf-8") == generate()


def test_every_table_attribute_has_an_explicit_action() -> None:
    profile = load_profile()
    table = parse_dicomfields(TABLE_2026C)
    exact = [int(k, 16) for k in table if "X" not in k]
    assert len(table) == 655 and len(exact) == 652
    assert all(tag in profile.actions for tag in exact)
    assert profile.edition == "2026c" and profile.version == "myovault-ps315-2026c-v1"


def test_2024b_option_source_agrees_with_2026c_basic_actions() -> None:
    table = parse_dicomfields(TABLE_2026C)
    options, private = load_options_2024b(TABLE_2024B)
    assert private == "X"
    assert all(table[k][0] == row["basicProfile"] for k, row in options.items())
    assert len(set(table) - set(options)) == 35  # attributes new since 2024b


@pytest.mark.parametrize(
    ("keyword_tag", "expected"),
    [
        (0x00100010, Action.PSEUDONYM),  # Patient's Name
        (0x00100030, Action.BLANK),  # Patient's Birth Date (Z)
        (0x00080020, Action.DATE_SHIFT),  # Study Date, modified dates option
        (0x00080030, Action.KEEP),  # Study Time: whole-day shift keeps times
        (0x00101010, Action.KEEP),  # Patient's Age: retain patient characteristics
        (0x00080080, Action.DUMMY),  # Institution Name (X/Z/D -> D)
        (0x00081030, Action.REMOVE),  # Study Description: free text, not retained
        (0x0008103E, Action.CLEAN_TEXT),  # Series Description: cleaned descriptor
        (0x00080018, Action.REMAP_UID),  # SOP Instance UID (U)
        (0x00081140, Action.CLEAN_SEQUENCE),  # Referenced Image Sequence (X/Z/U*)
        (0x00180081, Action.KEEP),  # Echo Time: research keep-list
        (0x00180080, Action.KEEP),  # Repetition Time
        (0x60003000, Action.REMOVE),  # Overlay Data (60xx,3000)
        (0x50020000, Action.REMOVE),  # Curve data (50xx,xxxx)
        (0x00400275, Action.REMOVE),  # Request Attributes Sequence: free text, basic X
        (0x00191234, Action.REMOVE),  # unknown public attribute: fail closed
    ],
)
def test_resolved_actions(keyword_tag: int, expected: Action) -> None:
    assert load_profile().action_for(keyword_tag) is expected


def test_safe_private_list_has_reasons() -> None:
    profile = load_profile()
    assert (0x0043, "GEMS_PARM_01", 0x2F) in profile.safe_private
    assert all(name for name in profile.safe_private.values())


def _minimal(extra: str, *, fail_closed: bool = True) -> str:
    lines = [
        "FORMAT dicom",
        "# @profile: test",
        "# @edition: 2026c",
        "# @option: 113100 Basic Application Confidentiality Profile",
        "%header",
        extra,
    ]
    if fail_closed:
        lines.append("REMOVE ALL")
    return "\n".join(lines)


def test_parser_accepts_minimal_recipe() -> None:
    profile = parse_recipe(_minimal("KEEP 00180081"))
    assert profile.action_for(0x00180081) is Action.KEEP
    assert profile.action_for(0x00100010) is Action.REMOVE


@pytest.mark.parametrize(
    "text",
    [
        _minimal("JITTER 00080020 var:days"),  # unknown function
        _minimal("LABEL 00080020"),  # action outside the closed vocabulary
        _minimal("KEEP 00180081", fail_closed=False),  # not fail-closed
        _minimal("KEEP 00180081\nREMOVE 00180081"),  # duplicate
        _minimal("KEEP PatientName"),  # keywords are not accepted: tags only
        _minimal('REMOVE (0043,"GEMS_PARM_01",2F)'),  # private rows can only be kept
        _minimal("REMOVE ALL\nKEEP 00180081", fail_closed=False),  # action after REMOVE ALL
    ],
)
def test_parser_fails_closed(text: str) -> None:
    with pytest.raises(ProfileError):
        parse_recipe(text)


def test_deid_can_parse_the_recipe(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        recipe = DeidRecipe(str(RECIPE_PATH), base=False)
    actions = recipe.get_actions()
    assert actions[-1] == {"action": "REMOVE", "field": "ALL"}
    assert len(actions) > 900
