"""Domain exceptions of the :mod:`qmri` package.

Every error a caller may want to map (CLI exit code, HTTP 422, job failure reason) derives from
:class:`QmriError`; messages state what was wrong and, where useful, what was expected.
"""

from __future__ import annotations

__all__ = [
    "QmriError",
    "ModelParameterError",
    "InputDataError",
    "MissingSidecarError",
    "TooFewEchoesError",
    "ShapeMismatchError",
]


class QmriError(Exception):
    """Base class of every qMRI error."""


class ModelParameterError(QmriError, ValueError):
    """A model or fit parameter is out of its valid range (e.g. negative T2, empty grid)."""


class InputDataError(QmriError, ValueError):
    """Input images or their metadata cannot be fitted as given."""


class MissingSidecarError(InputDataError):
    """The JSON sidecar (or a required field in it) beside a NIfTI file is missing."""


class TooFewEchoesError(InputDataError):
    """The acquisition has fewer echoes than the requested model needs."""


class ShapeMismatchError(InputDataError):
    """Arrays that must share a grid (echoes, parts, masks) have different shapes."""
