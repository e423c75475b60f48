"""Object-key rules."""

from __future__ import annotations

import pytest

from repository.storage import InvalidObjectKey, validate_key
from repository.storage.keys import MAX_KEY_LENGTH, validate_prefix


@pytest.mark.parametrize(
    "key",
    ["a", "objects/ab/abcdef.nii.gz", "sub_x/ses-1/anat/T2.json", "_a/b-c.d", "A9/z"],
)
def test_storage_valid_keys_accepted(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../x",
        "a/../b",
        "a/./b",
        "a//b",
        "a/",
        ".hidden",
        "a/.partial/x",
        "a b",
        "Müller/scan.nii",
        "patient:smith",
        "a\\b",
        "a\x00b",
        "x" * (MAX_KEY_LENGTH + 1),
    ],
)
def test_storage_invalid_keys_rejected(key: str) -> None:
    with pytest.raises(InvalidObjectKey):
        validate_key(key)


def test_storage_invalid_key_is_value_error() -> None:
    with pytest.raises(ValueError, match="invalid segment"):
        validate_key("a/../b")


@pytest.mark.parametrize("prefix", ["", "objects/", "objects/ab", "a.", "a/b_"])
def test_storage_valid_prefixes(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["../", "/abs", "a/../", "a b", "a/."])
def test_storage_invalid_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidObjectKey):
        validate_prefix(prefix)
