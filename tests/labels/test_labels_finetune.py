"""Fine-tuning collection: corrected cases exported by the CLI and read by the training code."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import select

from qmri.segmentation.corrections import correction_slices, load_corrections_dir
from qmri.segmentation.model import UNetConfig
from qmri.segmentation.train import TrainConfig, train_model
from repository.cli import main
from repository.models import AuditEvent, User
from repository.services import labels
from repository.services.context import Actor
from tests.app_fixtures import World
from tests.labels.labels_helpers import (
    AFFINE,
    SHAPE,
    add_consent,
    base_labels,
    make_segmented_visit,
    nifti_bytes,
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


def _edited() -> np.ndarray:
    out = base_labels()
    out[6:10, 0:5, 0] = 1
    return out


def _correct(app: Flask, world: World) -> int:
    ext = app.extensions["myovault"]
    seg = make_segmented_visit(app)
    with ext.db.transaction() as s:
        user = s.scalar(select(User).where(User.email == world.emails["investigator"]))
        saved = labels.save_label_version(
            s,
            Actor(user=user),
            seg.labels_id,
            nifti_bytes(_edited()),
            store=ext.store,
            dispatch=lambda _id: None,
        )
        return saved.case.id


def _cli(app: Flask, monkeypatch: pytest.MonkeyPatch, *args: str):
    monkeypatch.setenv("MYOVAULT_HOME", app.config["HOME"])
    monkeypatch.setenv("MYOVAULT_DATABASE_URL", app.config["DATABASE_URL"])
    monkeypatch.setenv("MYOVAULT_SECRET_KEY", "test-secret-key-not-for-production")
    return CliRunner().invoke(main, list(args))


def test_export_writes_image_labels_and_provenance(
    app: Flask, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case_id = _correct(app, world)
    out = tmp_path / "corrections"
    # without a current consent the case stays in the vault
    result = _cli(app, monkeypatch, "segment-corrections", "export", str(out))
    assert result.exit_code == 0, result.output
    assert "exported 0 corrected case(s)" in result.output
    add_consent(app)
    result = _cli(app, monkeypatch, "segment-corrections", "list")
    assert result.exit_code == 0 and f"case {case_id}: labels v2" in result.output
    result = _cli(app, monkeypatch, "segment-corrections", "export", str(out), "--project", "alpha")
    assert result.exit_code == 0, result.output
    assert "exported 1 corrected case(s)" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "myovault-corrections/1" and len(manifest["cases"]) == 1
    folder = out / manifest["cases"][0]["folder"]
    image = nib.load(folder / "image.nii.gz")
    assert image.shape == SHAPE and np.allclose(image.affine, AFFINE)  # first echo only
    lab = nib.load(folder / "labels.nii.gz")
    assert np.array_equal(np.asanyarray(lab.dataobj), _edited())
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["case_id"] == case_id
    assert (provenance["labels_version"], provenance["previous_version"]) == (2, 1)
    assert provenance["base_model_version"] == "thigh-unet-v1@1.0.0"
    assert provenance["corrected_by_user_id"] is not None and provenance["corrected_at"]
    assert provenance["labels"]["1"] == "right_biceps_femoris_long_head"
    with app.extensions["myovault"].db.transaction() as s:
        events = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "labels.export_corrections")
        ).all()
        assert [e.details["cases"] for e in events] == [[], [case_id]]
    result = _cli(app, monkeypatch, "segment-corrections", "export", str(out), "--project", "nope")
    assert result.exit_code != 0 and "no project" in result.output


def test_exported_cases_feed_a_tiny_training_run(
    app: Flask, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _correct(app, world)
    add_consent(app)
    out = tmp_path / "corrections"
    assert _cli(app, monkeypatch, "segment-corrections", "export", str(out)).exit_code == 0
    cases = load_corrections_dir(out)
    assert len(cases) == 1 and cases[0].image.shape == SHAPE
    images, muscles = correction_slices(cases[0], pixel_mm=4.0)
    assert images.shape == muscles.shape == (4, 6, 5)  # 4 slices of 12x10 at 2 mm -> 4 mm
    assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 2
    assert set(np.unique(muscles)) == {0, 1, 3}  # left labels 12 folded onto muscle 1
    from qmri.phantom.shape_model import render_labels
    from qmri.segmentation.train import LabelSource

    lab, spacing = render_labels(
        np.random.default_rng(0), n_slices=2, slice_mm=10.0, pixel_mm=2.0, size_px=(220, 130)
    )
    sources = [LabelSource(name="shape0", labels=lab, spacing_mm=spacing)]
    _, plain = train_model(sources, [], TINY, log=lambda _: None)
    _, tuned = train_model(sources, [], TINY, log=lambda _: None, extra_slices=[(images, muscles)])
    assert tuned[0]["pool_slices"] == plain[0]["pool_slices"] + 4
    assert np.isfinite(tuned[0]["train_loss"])
