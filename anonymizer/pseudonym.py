"""Keyed pseudonyms, UID remapping and per-subject date offsets.

Everything is derived from HMAC-SHA256 under a per-project secret, so re-uploads of the same
participant link up without any lookup table of real identifiers, and nobody without the secret
can recompute or reverse the mapping.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from anonymizer.errors import SecretError

MIN_SECRET_BYTES = 16
#: Subjects' dates move back by 365 … 4014 days (1 to 11 years); never zero.
DATE_SHIFT_MIN_DAYS = 365
DATE_SHIFT_SPAN_DAYS = 3650
_UID_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _field(value: str) -> bytes:
    data = value.encode("utf-8")
    return len(data).to_bytes(4, "big") + data


def random_secret() -> bytes:
    """A fresh 32-byte secret (used when no project secret is configured; never stored)."""
    return secrets.token_bytes(32)


@dataclass(frozen=True)
class Pseudonymizer:
    """Keyed derivations for one project.

    Parameters
    ----------
    secret
        Per-project secret, at least 16 bytes.
    project
        Project identifier; part of every HMAC message.
    site
        Site identifier; part of the subject key (the same patient id at two sites is two
        subjects).
    uid_root
        ``None`` for UUID-derived ``2.25.<int>`` UIDs, else an organisation root (at most 32
        characters) under which ``<root>.<int>`` UIDs are made.
    """

    secret: bytes
    project: str
    site: str = ""
    uid_root: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < MIN_SECRET_BYTES:
            raise SecretError(f"project secret must be at least {MIN_SECRET_BYTES} bytes")
        if not self.project:
            raise SecretError("project identifier must not be empty")
        if self.uid_root is not None and (
            not _UID_ROOT_RE.match(self.uid_root) or len(self.uid_root) > 32
        ):
            raise SecretError(f"invalid UID root {self.uid_root!r}")

    def _mac(self, domain: str, *parts: str) -> bytes:
        message = _field(domain) + b"".join(_field(p) for p in parts)
        return hmac.new(self.secret, message, hashlib.sha256).digest()

    def subject_pseudonym(self, patient_id: str) -> str:
        """Pseudonym of a participant: ``MV`` + 16 base32 characters (80 bits)."""
        digest = self._mac("subject", self.project, self.site, patient_id)
        return "MV" + base64.b32encode(digest[:10]).decode("ascii")

    def date_shift_days(self, patient_id: str) -> int:
        """Per-subject date offset in days (negative, never zero), the same for every study."""
        digest = self._mac("date-shift", self.project, self.site, patient_id)
        return -(DATE_SHIFT_MIN_DAYS + int.from_bytes(digest[:8], "big") % DATE_SHIFT_SPAN_DAYS)

    def remap_uid(self, uid: str) -> str:
        """Deterministic replacement of a UID within the project (not per subject).

        ``2.25.<int>`` from a version-8 (custom) UUID made of the HMAC, or ``<root>.<int>``.
        """
        digest = self._mac("uid", self.project, uid.strip().rstrip("\x00"))
        if self.uid_root is None:
            value = bytearray(digest[:16])
            value[6] = (value[6] & 0x0F) | 0x80  # version 8
            value[8] = (value[8] & 0x3F) | 0x80  # RFC 9562 variant
            return "2.25." + str(int.from_bytes(bytes(value), "big"))
        room = 64 - len(self.uid_root) - 1
        number = int.from_bytes(digest, "big") % (10 ** min(room, 38))
        return f"{self.uid_root}.{number}"

    def owns_uid(self, uid: str) -> bool:
        """Whether a UID has the form this pseudonymizer produces."""
        if self.uid_root is None:
            return uid.startswith("2.25.")
        return uid.startswith(self.uid_root + ".")
