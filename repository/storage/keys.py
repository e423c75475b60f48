"""Object-key rules shared by every backend and the encrypted store.

Object keys are opaque, identifier-free paths such as ``objects/3f/3fa2...c1.nii.gz``:

* only ``A-Z a-z 0-9 / _ . -``;
* ``/``-separated segments, none empty, each starting with a letter, digit or ``_`` (so no
  ``.``/``..`` segments, no hidden files, no leading or doubled ``/``, no absolute paths);
* at most :data:`MAX_KEY_LENGTH` characters.

The rules are checked before any backend is touched; a bad key raises
:class:`~repository.storage.errors.InvalidObjectKey`.
"""

from __future__ import annotations

import re

from .errors import InvalidObjectKey

MAX_KEY_LENGTH = 512
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_PREFIX_CHARS = re.compile(r"[A-Za-z0-9/_.\-]*")


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a valid object key, else raise ``InvalidObjectKey``."""
    if not isinstance(key, str) or not key:
        raise InvalidObjectKey("object key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidObjectKey(f"object key longer than {MAX_KEY_LENGTH} characters")
    if key.startswith("/"):
        raise InvalidObjectKey(f"object key {key!r} must be relative (no leading '/')")
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment):
            raise InvalidObjectKey(
                f"object key {key!r} has an invalid segment {segment!r}: segments are "
                "non-empty, use only A-Z a-z 0-9 _ . - and start with a letter, digit or _"
            )
    return key


def validate_prefix(prefix: str) -> str:
    """Validate a listing prefix (``""`` or a key prefix, possibly ending in ``/``)."""
    if prefix == "":
        return prefix
    if not _PREFIX_CHARS.fullmatch(prefix) or len(prefix) > MAX_KEY_LENGTH:
        raise InvalidObjectKey(f"listing prefix {prefix!r} has characters outside A-Za-z0-9/_.-")
    stem = prefix[:-1] if prefix.endswith("/") else prefix
    if stem:
        # Every complete segment must be valid; the last one may be partial but not '.'/'..'.
        validate_key(stem if not stem.endswith(".") else stem + "_")
    return prefix
