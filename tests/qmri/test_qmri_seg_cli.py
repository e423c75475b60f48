"""``myovault segment`` and ``myovault train-segmentation`` through click's CliRunner."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from qmri.phantom.shape_model import render_labels
from repository.cli.segment import segment, train_segmentation
from tests.qmri.seg_oracle import write_oracle_model


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return write_oracle_model(tmp_path / "models")


@pytest.fixture
def image_path(tmp_path: Path) -> Path:
    labels, spacing = render_labels(
        np.random.default_rng(4), n_slices=3, slice_mm=8.0, pixel_mm=2.0, size_px=(220, 130)
    )
    path = tmp_path / "sub-01_water.nii.gz"
    nib.save(nib.Nifti1Image(labels.astype(np.float32), np.diag([*spacing, 1.0])), str(path))
    ff = np.where(labels > 0, 5.0 + labels, np.nan).astype(np.float32)
    nib.save(nib.Nifti1Image(ff, np.diag([*spacing, 1.0])), str(tmp_path / "ff.nii.gz"))
    t2 = np.full(labels.shape, 33.0, dtype=np.float32)
    nib.save(nib.Nifti1Image(t2, np.diag([*spacing, 1.0])), str(tmp_path / "t2.nii.gz"))
    return path


def test_segment_writes_labels_sidecar_and_metrics(
    models_dir: Path, image_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "deriv" / "sub-01_dseg.nii.gz"
    result = CliRunner().invoke(
        segment,
        [
            str(image_path),
            "-o",
            str(out),
            "--model",
            "oracle",
            "--models-dir",
            str(models_dir),
            "--ff",
            str(tmp_path / "ff.nii.gz"),
            "--t2",
            str(tmp_path / "t2.nii.gz"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "oracle@0.0.1" in result.output
    labels = nib.load(str(out))
    assert labels.shape == nib.load(str(image_path)).shape
    assert labels.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(labels.dataobj))) >= {1, 11, 12, 22}
    sidecar = json.loads((tmp_path / "deriv" / "sub-01_dseg.json").read_text("utf-8"))
    assert sidecar["Labels"]["1"] == "right_biceps_femoris_long_head"
    assert sidecar["Model"]["Name"] == "oracle" and sidecar["Model"]["Version"] == "0.0.1"
    assert len(sidecar["Model"]["WeightsSha256"]) == 64
    assert sidecar["Input"]["Sha256"] == hashlib.sha256(image_path.read_bytes()).hexdigest()
    assert isinstance(sidecar["QualityControl"], list)
    tsv = tmp_path / "deriv" / sidecar["Metrics"]
    with tsv.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    by_label = {int(r["label"]): r for r in rows}
    assert float(by_label[7]["ff_mean_pct"]) == pytest.approx(12.0)
    assert float(by_label[18]["t2_water_mean_ms"]) == pytest.approx(33.0)
    assert by_label[7]["model_version"] == "oracle@0.0.1"


def test_segment_errors(models_dir: Path, image_path: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    bad_suffix = runner.invoke(segment, [str(image_path), "-o", str(tmp_path / "x.png")])
    assert bad_suffix.exit_code == 2
    unknown = runner.invoke(
        segment,
        [str(image_path), "-o", str(tmp_path / "x.nii.gz"), "--model", "nope"],
    )
    assert unknown.exit_code == 1
    assert "unknown segmentation model" in unknown.output


def test_train_segmentation_checks_out_dir_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        train_segmentation, ["--labels-dir", str(tmp_path), "--out", str(tmp_path / "wrong")]
    )
    assert result.exit_code == 2
    assert "--name" in result.output


@pytest.mark.realdata
@pytest.mark.slow
def test_train_segmentation_runs_from_real_label_maps(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "thigh-unet-v1"
    result = CliRunner().invoke(
        train_segmentation,
        [
            "--labels-dir",
            str(shared_data / "labels/thigh_11_muscles"),
            "--out",
            str(out),
            "--rounds",
            "1",
            "--steps-per-round",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text("utf-8"))
    assert manifest["training"]["config"]["rounds"] == 1
    assert len(manifest["training"]["data"]["train_files"]) == 21
    assert not set(manifest["training"]["data"]["train_files"]) & set(
        manifest["training"]["data"]["test_files"]
    )
