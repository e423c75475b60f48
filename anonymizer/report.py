"""Per-file results and the per-upload report (JSON-serialisable dataclasses)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from pydicom.dataset import Dataset

STATUS_WRITTEN = "written"
STATUS_QUARANTINED = "quarantined"
STATUS_NOT_DICOM = "not-dicom"


@dataclass
class FileResult:
    """Outcome of de-identifying one file.

    Attributes
    ----------
    source
        Input name as given by the caller (a path inside the quarantine, never copied into
        the output).
    status
        ``written`` (safe: ``dataset`` holds the de-identified object), ``quarantined`` or
        ``not-dicom``.
    reason, detail
        Reason code and explanation when not written (no identifier values).
    findings
        Verifier findings (kind and place only).
    counts
        Number of elements per action.
    subject
        Subject pseudonym.
    output_name
        Relative output path (pseudonym and hashes of new UIDs only).
    series_uid
        New Series Instance UID (groups files for defacing).
    pixel_actions
        Pixel operations applied (``clean:<rule>``, ``deface``).
    dataset
        The de-identified dataset (not serialised).
    encoded
        Its verified Part 10 encoding, exactly what must be written (not serialised).
    """

    source: str
    status: str
    reason: str = ""
    detail: str = ""
    findings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    subject: str = ""
    output_name: str = ""
    series_uid: str = ""
    pixel_actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dataset: Dataset | None = field(default=None, repr=False, compare=False)
    encoded: bytes | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict without the dataset and its encoding."""
        return {k: v for k, v in asdict(self).items() if k not in ("dataset", "encoded")}


def file_ref(source: str) -> str:
    """Stable reference to an input file that does not reveal its name."""
    return "sha256:" + hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


@dataclass
class UploadReport:
    """What de-identification did to one upload (stored with the upload's provenance)."""

    profile_version: str
    profile_edition: str
    options: list[str]
    files_total: int = 0
    files_written: int = 0
    files_quarantined: int = 0
    files_not_dicom: int = 0
    action_counts: dict[str, int] = field(default_factory=dict)
    quarantined: list[dict[str, str]] = field(default_factory=list)
    verifier_passed: bool = True
    verifier_findings: int = 0
    subjects: list[str] = field(default_factory=list)
    pixel_actions: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    quarantined_sources: list[str] = field(default_factory=list, repr=False)

    def add(self, result: FileResult) -> None:
        """Fold one file result into the report."""
        self.files_total += 1
        counts = Counter(self.action_counts)
        counts.update(result.counts)
        self.action_counts = dict(sorted(counts.items()))
        self.verifier_findings += len(result.findings)
        for action in result.pixel_actions:
            self.pixel_actions[action] = self.pixel_actions.get(action, 0) + 1
        for warning in result.warnings:
            if warning not in self.warnings:
                self.warnings.append(warning)
        if result.status == STATUS_WRITTEN:
            self.files_written += 1
            if result.subject and result.subject not in self.subjects:
                self.subjects.append(result.subject)
        elif result.status == STATUS_NOT_DICOM:
            self.files_not_dicom += 1
        else:
            self.files_quarantined += 1
            # input names may carry identifiers (folders named after the patient): the stored
            # report refers to files by a hash of their name; the names stay in memory only
            self.quarantined.append(
                {
                    "file_ref": file_ref(result.source),
                    "reason": result.reason,
                    "detail": result.detail,
                }
            )
            self.quarantined_sources.append(result.source)
            if result.findings:
                self.verifier_passed = False

    @property
    def safe(self) -> bool:
        """True when every DICOM file was written safely."""
        return self.files_quarantined == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (without the input file names)."""
        data = asdict(self)
        data.pop("quarantined_sources")
        data["safe"] = self.safe
        return data

    def to_json(self) -> str:
        """Pretty JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def summary(self) -> str:
        """Short human-readable summary (no identifiers)."""
        lines = [
            f"profile {self.profile_version} (PS3.15 {self.profile_edition} Table E.1-1)",
            f"files: {self.files_total} read, {self.files_written} written, "
            f"{self.files_quarantined} quarantined, {self.files_not_dicom} not DICOM",
            f"subjects: {len(self.subjects)}",
            "verifier: "
            + ("passed" if self.verifier_passed else f"FAILED ({self.verifier_findings} findings)"),
            "actions: " + ", ".join(f"{k}={v}" for k, v in self.action_counts.items()),
        ]
        if self.pixel_actions:
            lines.append("pixels: " + ", ".join(f"{k}={v}" for k, v in self.pixel_actions.items()))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)
