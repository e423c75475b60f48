"""Segmenting NIfTI images in any stored orientation."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

from qmri.segmentation.errors import SegmentationInputError
from qmri.segmentation.infer import SegmentationResult, segment_volume
from qmri.segmentation.registry import SegmentationModel

__all__ = ["segment_nifti"]


def segment_nifti(
    source: str | Path | nib.Nifti1Image, model: SegmentationModel, *, volume_index: int = 0
) -> tuple[nib.Nifti1Image, SegmentationResult]:
    """Segment a NIfTI image; return a label image on the input's grid and the result.

    The image is reoriented to the closest RAS axes for the network (axial slices along the
    superior axis), then the labels are put back into the stored orientation so that the label
    file has exactly the input's shape and affine. A 4D input (e.g. a multi-echo series) is
    segmented on volume ``volume_index`` (0 = first echo).
    """
    image = nib.load(str(source)) if isinstance(source, str | Path) else source
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise SegmentationInputError(f"not a NIfTI image: {type(image).__name__}")
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4:
        if not 0 <= volume_index < data.shape[3]:
            raise SegmentationInputError(
                f"volume index {volume_index} outside 0..{data.shape[3] - 1}"
            )
        data = data[..., volume_index]
    elif data.ndim == 2:
        data = data[:, :, None]
    elif data.ndim != 3:
        raise SegmentationInputError(f"expected a 3D or 4D NIfTI, got {data.ndim}D")
    stored = orientations.io_orientation(image.affine)
    ras = orientations.axcodes2ornt(("R", "A", "S"))
    to_ras = orientations.ornt_transform(stored, ras)
    data_ras = orientations.apply_orientation(np.asarray(data, dtype=np.float32), to_ras)
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)
    spacing_ras = tuple(float(zooms[int(i)]) for i in to_ras[:, 0].argsort())
    result = segment_volume(data_ras, spacing_ras, model)  # type: ignore[arg-type]
    back = orientations.ornt_transform(ras, stored)
    labels = orientations.apply_orientation(result.labels, back).astype(np.uint8)
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    out = nib.Nifti1Image(labels, image.affine, header)
    out.header.set_intent("label")
    out.header["scl_slope"] = 1
    out.header["scl_inter"] = 0
    return out, result
