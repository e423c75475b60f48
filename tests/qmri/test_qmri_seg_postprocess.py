"""Output label numbering, left/right split and largest-component filtering."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from qmri.segmentation.labels import (
    MUSCLE_NAMES,
    label_names,
    muscle_and_side,
    output_label,
    to_side_labels,
)
from qmri.segmentation.postprocess import largest_components, split_sides


def test_label_numbering_round_trip() -> None:
    names = label_names()
    assert len(names) == 22
    assert names[1] == "right_biceps_femoris_long_head"
    assert names[22] == "left_sartorius"
    for label in range(1, 23):
        muscle, side = muscle_and_side(label)
        assert output_label(muscle, side) == label
        assert names[label] == f"{side}_{MUSCLE_NAMES[muscle - 1]}"
    with pytest.raises(ValueError):
        output_label(12, "right")
    with pytest.raises(ValueError):
        muscle_and_side(23)


def test_to_side_labels() -> None:
    lab = np.array([[[0], [3]], [[5], [11]]], dtype=np.uint8)
    right = np.array([True, False])[:, None, None]
    assert to_side_labels(lab, right).ravel().tolist() == [0, 3, 16, 22]


def _thigh(labels: np.ndarray, cx: int, lateral_sign: int) -> None:
    """Paint a crude thigh: vastus lateralis on the lateral side, gracilis medially."""
    labels[cx - 10 : cx + 10, 5:25, :] = 6
    labels[cx + lateral_sign * 12 - 2 : cx + lateral_sign * 12 + 3, 5:25, :] = 7
    labels[cx - lateral_sign * 12 - 2 : cx - lateral_sign * 12 + 3, 5:25, :] = 10


def test_split_two_thighs_at_the_gap() -> None:
    labels = np.zeros((100, 30, 3), dtype=np.uint8)
    _thigh(labels, 25, -1)  # left thigh: lateral is -x on RAS axes
    _thigh(labels, 75, +1)  # right thigh
    out, split = split_sides(labels)
    assert split.mode == "midline"
    assert 40 <= split.midline_index <= 60
    assert set(np.unique(out[:45])) == {0, 17, 18, 21}  # left: 6+11, 7+11, 10+11
    assert set(np.unique(out[55:])) == {0, 6, 7, 10}


@pytest.mark.parametrize(("lateral_sign", "mode"), [(1, "single_right"), (-1, "single_left")])
def test_split_single_thigh_by_anatomy(lateral_sign: int, mode: str) -> None:
    labels = np.zeros((60, 30, 2), dtype=np.uint8)
    _thigh(labels, 30, lateral_sign)
    out, split = split_sides(labels)
    assert split.mode == mode
    offset = 0 if mode == "single_right" else 11
    assert set(np.unique(out)) == {0, 6 + offset, 7 + offset, 10 + offset}


def test_split_empty() -> None:
    out, split = split_sides(np.zeros((4, 4, 1), dtype=np.uint8))
    assert split.mode == "empty" and not out.any()


def _naive_largest(labels: np.ndarray) -> np.ndarray:
    out = np.zeros_like(labels)
    for k in np.unique(labels):
        if k == 0:
            continue
        comp, n = ndimage.label(labels == k, structure=np.ones((3, 3, 3)))
        sizes = [(comp == i).sum() for i in range(1, n + 1)]
        out[comp == (int(np.argmax(sizes)) + 1)] = k
    return out


def test_largest_components_matches_naive() -> None:
    rng = np.random.default_rng(4)
    labels = (rng.uniform(size=(20, 18, 6)) < 0.3) * rng.integers(1, 23, size=(20, 18, 6))
    labels = labels.astype(np.uint8)
    labels[2:9, 2:9, 1:4] = 5  # one big blob
    np.testing.assert_array_equal(largest_components(labels), _naive_largest(labels))
