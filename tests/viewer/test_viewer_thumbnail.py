"""Thumbnails: the mid axial slice, radiological orientation, label colours blended in."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from repository.services.viewer import (
    LABEL_PALETTE,
    profile_points,
    render_thumbnail,
    thumbnail_slice,
)


def _volume() -> tuple[np.ndarray, np.ndarray]:
    """(x, y, z) = (8, 6, 3) RAS: intensity rises with x; label 4 at the subject's right
    anterior corner (high x, high y) of the middle slice only."""
    image = np.repeat(np.linspace(0, 100, 8)[:, None, None], 6, axis=1).repeat(3, axis=2)
    labels = np.zeros((8, 6, 3), dtype=np.int64)
    labels[6:, 4:, 1] = 4
    labels[0, 0, 0] = 9  # another slice: must not show
    return image, labels


def test_slice_is_the_middle_one_in_radiological_orientation() -> None:
    image, labels = _volume()
    shown_image, shown_labels = thumbnail_slice(image, labels)
    assert shown_image.shape == (6, 8)  # rows = y (anterior first), columns = x
    # subject's right (high x) on the viewer's left, anterior (high y) at the top
    assert shown_labels[0, 0] == 4 and shown_labels[1, 1] == 4 and shown_labels[2, 2] == 0
    assert 9 not in shown_labels
    assert shown_image[0, 0] == 100 and shown_image[0, -1] == 0


def test_png_blends_label_colours_and_scales_by_whole_factors() -> None:
    image, labels = _volume()
    png = render_thumbnail(image, labels, size_px=64, alpha=0.5)
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)
    assert rgb.shape == (6 * 8, 8 * 8, 3)  # factor 64 // 8 = 8
    corner = rgb[0, 0]  # label 4 over the brightest grey (255)
    expected = 0.5 * 255 + 0.5 * np.asarray(LABEL_PALETTE[4])
    assert np.all(np.abs(corner - expected) <= 1)
    unlabelled = rgb[-1, -1]  # darkest grey, no label
    assert unlabelled[0] == unlabelled[1] == unlabelled[2] and unlabelled[0] < 10


def test_mismatched_grids_are_refused() -> None:
    image, labels = _volume()
    with pytest.raises(ValueError, match="differ"):
        render_thumbnail(image, labels[:-1])


def test_profile_points_span_the_plot_and_skip_gaps() -> None:
    points = profile_points([0.0, None, 100.0], width=100, height=20)
    assert points == "0.0,20.0 100.0,0.0"
    assert profile_points([None, None]) == ""
