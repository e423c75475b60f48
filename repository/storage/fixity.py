"""Fixity checking: re-read and re-hash stored objects against their recorded sha256."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from .errors import (
    IntegrityError,
    KeyDestroyed,
    KeyNotFound,
    MasterKeyError,
    ObjectNotFound,
)
from .store import EncryptedObjectStore


class FixityStatus(StrEnum):
    """Outcome for one object."""

    OK = "ok"
    #: Authentic object whose plaintext sha256 differs from the record.
    MISMATCH = "mismatch"
    #: No object under the key.
    MISSING = "missing"
    #: The stored bytes fail authentication (bit rot, truncation, tampering, swapped object).
    CORRUPT = "corrupt"
    #: The data key was destroyed (crypto-shredded subject); expected after erasure.
    SHREDDED = "shredded"
    #: The data key is unknown or cannot be unwrapped with the loaded master key.
    KEY_ERROR = "key_error"


@dataclass(frozen=True)
class FixityProblem:
    """One object that did not pass."""

    key: str
    status: FixityStatus
    detail: str
    expected_sha256: str
    actual_sha256: str | None = None


@dataclass
class FixityReport:
    """Result of :func:`check_fixity`; ``ok`` is true only if every object passed.

    Shredded objects are listed in ``problems`` but do not make the report fail when
    ``shredded_ok`` was requested (the expected state after an erasure).
    """

    checked: int = 0
    passed: int = 0
    bytes_read: int = 0
    problems: list[FixityProblem] = field(default_factory=list)
    shredded_ok: bool = False

    def by_status(self, status: FixityStatus) -> list[FixityProblem]:
        return [p for p in self.problems if p.status is status]

    @property
    def ok(self) -> bool:
        allowed = {FixityStatus.SHREDDED} if self.shredded_ok else set()
        return all(p.status in allowed for p in self.problems)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for problem in self.problems:
            counts[problem.status.value] = counts.get(problem.status.value, 0) + 1
        detail = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        return f"{self.checked} checked, {self.passed} ok" + (f", {detail}" if detail else "")


def check_fixity(
    store: EncryptedObjectStore,
    records: Iterable[tuple[str, str]],
    *,
    shredded_ok: bool = False,
) -> FixityReport:
    """Re-read, authenticate and re-hash every ``(key, sha256)`` record.

    Objects are streamed (memory independent of size). A backend outage
    (``StorageUnavailable``) aborts the whole check with that exception rather than
    reporting every object as missing.
    """
    report = FixityReport(shredded_ok=shredded_ok)
    for key, expected in records:
        report.checked += 1
        expected = expected.lower()
        digest = hashlib.sha256()
        status: FixityStatus | None = None
        detail = ""
        try:
            for chunk in store.open(key):
                digest.update(chunk)
                report.bytes_read += len(chunk)
        except ObjectNotFound as exc:
            status, detail = FixityStatus.MISSING, str(exc)
        except IntegrityError as exc:
            status, detail = FixityStatus.CORRUPT, str(exc)
        except KeyDestroyed as exc:
            status, detail = FixityStatus.SHREDDED, str(exc)
        except (KeyNotFound, MasterKeyError) as exc:
            status, detail = FixityStatus.KEY_ERROR, str(exc)
        if status is None:
            actual = digest.hexdigest()
            if hmac.compare_digest(actual, expected):
                report.passed += 1
                continue
            report.problems.append(
                FixityProblem(
                    key,
                    FixityStatus.MISMATCH,
                    f"sha256 {actual} differs from the recorded {expected}",
                    expected,
                    actual,
                )
            )
        else:
            report.problems.append(FixityProblem(key, status, detail, expected))
    return report
