"""The shipped thigh U-Net on synthetic subjects (Dice sanity; the full table is in bench/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qmri.phantom import load_label_map, make_subject, split_files
from qmri.segmentation import load_model, segment_volume
from qmri.segmentation.registry import ModelRegistry
from qmri.segmentation.train import dice_per_label

#: Sanity floors (the measured values are in bench/RESULTS.md): parametric
#: ellipse shapes are further from the training anatomy than held-out real anatomy.
MIN_PARAMETRIC_DICE = 0.85  # measured 0.94 (seed 21, moderate, water; v2.0.0)
MIN_REAL_ANATOMY_DICE = 0.8  # measured 0.87 (test map 3, severe, MESE; v2.0.0)


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_model()


def test_shipped_model_is_registered_small_and_documented() -> None:
    info = ModelRegistry().info(anatomy="thigh")
    assert info.name == "thigh-unet-v1"
    assert info.weights_path.stat().st_size < 20e6
    assert (info.directory / "MODEL_CARD.md").is_file()
    training = info.manifest["training"]
    assert not set(training["data"]["train_files"]) & set(training["data"]["test_files"])


def test_shipped_model_on_parametric_subject(model) -> None:  # type: ignore[no-untyped-def]
    subject = make_subject(21, "moderate", contrasts=("water",), pixel_mm=2.0, n_slices=4)
    result = segment_volume(subject["water"], subject["spacing_mm"], model)
    dice = dice_per_label(result.labels, subject["labels"], range(1, 23))
    assert result.sides.mode == "midline"
    assert np.nanmean(list(dice.values())) > MIN_PARAMETRIC_DICE


@pytest.mark.realdata
def test_shipped_model_on_held_out_real_anatomy(shared_data: Path, model) -> None:  # type: ignore[no-untyped-def]
    path = split_files(shared_data / "labels/thigh_11_muscles")["test"][2]
    lm = load_label_map(path)
    zs = np.nonzero(lm.labels.any(axis=(0, 1)))[0]
    lm = type(lm)(lm.name, lm.subject, lm.labels[:, :, zs[:: max(len(zs) // 4, 1)]], lm.spacing_mm)
    subject = make_subject(5, "severe", lm, contrasts=("mese",), pixel_mm=2.0)
    result = segment_volume(subject["mese"], subject["spacing_mm"], model)
    dice = dice_per_label(result.labels, subject["labels"], range(1, 23))
    assert np.nanmean(list(dice.values())) > MIN_REAL_ANATOMY_DICE
