"""Domain errors of the de-identification library.

Every failure the anonymizer can report is one of these; callers (CLI, services) map them to exit
codes or HTTP statuses in one place.
"""

from __future__ import annotations


class AnonymizerError(Exception):
    """Base class of every error raised by :mod:`anonymizer`."""


class ProfileError(AnonymizerError):
    """A recipe or data file is malformed, uses an unknown action, or is out of date."""


class SecretError(AnonymizerError):
    """The per-project secret is missing, too short or unreadable."""


class NotDicomError(AnonymizerError):
    """The input file is not a DICOM Part 10 file."""


class UnsafeFileError(AnonymizerError):
    """A file cannot be made safe and must stay in quarantine.

    Parameters
    ----------
    reason
        Short machine-friendly reason code (e.g. ``"burned-in-text"``).
    detail
        Human-readable explanation without any identifier.
    findings
        Verifier findings (kind and place only, never the value).
    """

    def __init__(self, reason: str, detail: str = "", findings: list[str] | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.findings = list(findings or [])
