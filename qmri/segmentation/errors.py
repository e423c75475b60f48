"""Domain exceptions of :mod:`qmri.segmentation` and :mod:`qmri.phantom`."""

from __future__ import annotations

from qmri.errors import QmriError

__all__ = [
    "SegmentationError",
    "PhantomError",
    "ModelRegistryError",
    "UnknownModelError",
    "ModelFormatError",
    "SegmentationInputError",
]


class SegmentationError(QmriError):
    """Base class of segmentation, phantom and model-registry errors."""


class PhantomError(SegmentationError, ValueError):
    """Synthetic-phantom input (label map, severity, shape model) is invalid."""


class ModelRegistryError(SegmentationError):
    """A model directory or manifest is missing, malformed or inconsistent."""


class UnknownModelError(ModelRegistryError, KeyError):
    """No model with the requested name, or no default for the requested anatomy."""


class ModelFormatError(ModelRegistryError):
    """The manifest names a weight format this installation cannot load."""


class SegmentationInputError(SegmentationError, ValueError):
    """The image to segment cannot be used as given (dimensions, spacing, values)."""
