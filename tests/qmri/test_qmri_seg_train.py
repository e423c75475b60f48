"""Tiny, seconds-long training runs: the loop works, is deterministic and saves a loadable model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qmri.phantom.shape_model import render_labels
from qmri.segmentation import load_model, segment_volume
from qmri.segmentation.model import UNetConfig
from qmri.segmentation.train import (
    LabelSource,
    TrainConfig,
    dice_per_label,
    make_training_slices,
    save_model,
    train_model,
)

TINY = TrainConfig(
    seed=3,
    rounds=1,
    steps_per_round=2,
    batch_size=2,
    crop_px=32,
    pixel_mm=4.0,
    canvas_px=(112, 64),
    max_slices_per_volume=2,
    warmup_steps=1,
    unet=UNetConfig(base_channels=4, depth=2),
)


def _sources(n: int) -> list[LabelSource]:
    out = []
    for i in range(n):
        labels, spacing = render_labels(
            np.random.default_rng(i), n_slices=2, slice_mm=10.0, pixel_mm=2.0, size_px=(220, 130)
        )
        out.append(LabelSource(name=f"shape{i}", labels=labels, spacing_mm=spacing))
    return out


def test_make_training_slices_shapes() -> None:
    images, labels, meta = make_training_slices(_sources(1)[0], np.random.default_rng(0), TINY)
    assert images.shape == labels.shape == (2, 112, 64)
    assert images.dtype == np.float32 and images.min() >= 0.0 and images.max() <= 2.0
    assert meta["severity"] in {"healthy", "moderate", "severe"}
    assert labels.max() <= 11 and labels.any()


def test_dice_per_label() -> None:
    a = np.array([0, 1, 1, 2, 2, 2])
    b = np.array([0, 1, 2, 2, 2, 0])
    d = dice_per_label(a, b, [1, 2, 3])
    assert d[1] == pytest.approx(2 / 3)
    assert d[2] == pytest.approx(2 * 2 / 6)
    assert np.isnan(d[3])


def test_tiny_training_is_deterministic_and_saves_a_model(tmp_path: Path) -> None:
    sources = _sources(2)
    model_a, history = train_model(sources, sources[:1], TINY, log=lambda _: None)
    model_b, _ = train_model(sources, sources[:1], TINY, log=lambda _: None)
    for (key, a), b in zip(
        model_a.state_dict().items(), model_b.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), key
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    assert set(history[0]["val_dice"]) == {"healthy", "moderate", "severe"}
    root = tmp_path / "models"
    out = save_model(
        model_a, root / "tiny", name="tiny", version="0.1", config=TINY, history=history, data={}
    )
    manifest = json.loads((out / "manifest.json").read_text("utf-8"))
    assert manifest["format"] == "state_dict"
    assert manifest["architecture_config"] == {
        "in_channels": 1,
        "n_classes": 12,
        "base_channels": 4,
        "depth": 2,
    }
    loaded = load_model("tiny", extra_roots=[root])
    result = segment_volume(np.ones((40, 30, 2), np.float32), (4.0, 4.0, 10.0), loaded)
    assert result.labels.shape == (40, 30, 2)
    assert result.model_version == "0.1"
