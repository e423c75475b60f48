"""Automatic segmentation of the 11 thigh muscles, left and right (issue 6).

Public API
----------
load_model(name=None, *, anatomy="thigh", extra_roots=()) -> SegmentationModel
    A model from the file-based registry (:mod:`qmri.segmentation.registry`); ``None`` loads
    the default for the anatomy (shipped: ``thigh-unet-v1``). Nothing is downloaded.
segment_volume(image, spacing_mm, model) -> SegmentationResult
    ``image`` is one ``(x, y, z)`` contrast on RAS axes (axial slices along axis 2); the result
    holds ``labels`` (uint8, 0..22 on the input grid), ``confidence`` per label, the side split
    and the model name and version.
label_names() -> {label: name}
    Output numbering: 1..11 = the subject's right biceps femoris long head, biceps femoris
    short head, semitendinosus, semimembranosus, adductor magnus, vastus intermedius, vastus
    lateralis, vastus medialis, rectus femoris, gracilis, sartorius; 12..22 = the same muscles
    on the left (``muscle + 11``); 0 = background.
segment_nifti(path_or_image, model) -> (labels NIfTI, SegmentationResult)
    Reorients any NIfTI to RAS, segments, returns labels on the input's own grid and axes.
"""

from __future__ import annotations

from qmri.segmentation.errors import (
    ModelFormatError,
    ModelRegistryError,
    PhantomError,
    SegmentationError,
    SegmentationInputError,
    UnknownModelError,
)
from qmri.segmentation.infer import SegmentationResult, segment_volume
from qmri.segmentation.labels import label_names, muscle_and_side, output_label
from qmri.segmentation.nifti import segment_nifti
from qmri.segmentation.registry import ModelRegistry, SegmentationModel, load_model

__all__ = [
    "ModelFormatError",
    "ModelRegistry",
    "ModelRegistryError",
    "PhantomError",
    "SegmentationError",
    "SegmentationInputError",
    "SegmentationModel",
    "SegmentationResult",
    "UnknownModelError",
    "label_names",
    "load_model",
    "muscle_and_side",
    "output_label",
    "segment_nifti",
    "segment_volume",
]
