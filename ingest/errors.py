"""Domain exceptions of the ingest package.

Every exception carries a human-readable message that is safe to show to the uploader: it names
files, series and DICOM attributes, never a patient identifier.
"""

from __future__ import annotations


class IngestError(Exception):
    """Base class of every ingest error."""


class NotDicomError(IngestError):
    """The file is not a DICOM Part 10 file (no ``DICM`` preamble)."""


class CorruptDicomError(IngestError):
    """The file claims to be DICOM but its header or pixel data are truncated or unreadable."""


class NotDeidentifiedError(IngestError):
    """The file is not marked de-identified (``PatientIdentityRemoved`` is not ``YES``)."""


class MixedPatientsError(IngestError):
    """Files of more than one patient where only one is allowed."""


class RuleTableError(IngestError):
    """A classification or naming rule table is malformed or uses an unknown feature/operator."""


class GeometryError(IngestError):
    """The slices of a stack cannot be placed on one regular grid (gaps, tilt, duplicates...)."""


class ConversionError(IngestError):
    """A planned ORMIR-MIDS file could not be written."""
