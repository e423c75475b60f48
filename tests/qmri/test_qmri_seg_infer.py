"""Model registry, network shapes, inference plumbing (with an oracle TorchScript model)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from qmri.phantom.shape_model import render_labels
from qmri.segmentation import (
    ModelFormatError,
    ModelRegistry,
    ModelRegistryError,
    SegmentationModel,
    UnknownModelError,
    load_model,
    segment_nifti,
    segment_volume,
)
from qmri.segmentation.model import UNetConfig, build_model
from qmri.segmentation.registry import validate_manifest
from qmri.segmentation.train import dice_per_label
from tests.qmri.seg_oracle import oracle_manifest, write_oracle_model


@pytest.fixture
def oracle_root(tmp_path: Path) -> Path:
    return write_oracle_model(tmp_path / "models")


@pytest.fixture
def phantom_labels() -> tuple[np.ndarray, tuple[float, float, float]]:
    labels, spacing = render_labels(
        np.random.default_rng(2), n_slices=3, slice_mm=8.0, pixel_mm=1.0, size_px=(440, 260)
    )
    return labels, spacing


def test_unet_forward_shapes_and_size() -> None:
    net = build_model(UNetConfig())
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params * 4 < 20e6  # weights well under 20 MB as float32
    net.eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 1, 64, 48))
    assert out.shape == (2, 12, 64, 48)
    assert UNetConfig.from_dict(UNetConfig().to_dict()) == UNetConfig()
    with pytest.raises(ValueError):
        UNetConfig.from_dict({"width": 3})


def test_registry_lists_shipped_default() -> None:
    registry = ModelRegistry()
    assert registry.defaults()["thigh"] == "thigh-unet-v1"
    info = registry.info(anatomy="thigh")
    assert info.format == "state_dict" and info.pixel_mm == 3.0
    assert info.weights_path.stat().st_size < 20e6
    with pytest.raises(UnknownModelError):
        registry.info("no-such-model")
    with pytest.raises(UnknownModelError):
        registry.info(anatomy="calf")


def test_admin_root_overrides_default(oracle_root: Path) -> None:
    registry = ModelRegistry([oracle_root])
    assert "oracle" in registry.models()
    assert registry.info().name == "thigh-unet-v1"
    registry.set_default("thigh", "oracle", oracle_root)
    assert ModelRegistry([oracle_root]).info().name == "oracle"
    with pytest.raises(ModelRegistryError):
        registry.set_default("thigh", "oracle", Path("/elsewhere"))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"format": "pickle"}, ModelFormatError),
        ({"colour": "red"}, ModelRegistryError),
        ({"network_labels": {"0": "background", "1": "biceps"}}, ModelRegistryError),
        ({"network_labels": {"0": "background", "2": "gracilis"}}, ModelRegistryError),
        ({"input": {"pixel_mm": -1}}, ModelRegistryError),
        ({"weights": "../model.pt"}, ModelRegistryError),
        ({"name": "other"}, ModelRegistryError),
        ({"format": "state_dict"}, ModelFormatError),  # no architecture
    ],
)
def test_manifest_fails_closed(oracle_root: Path, change: dict, error: type) -> None:
    manifest = oracle_manifest("oracle") | change
    with pytest.raises(error):
        validate_manifest(manifest, oracle_root / "oracle")


def test_segment_volume_is_exact_on_the_model_grid(
    oracle_root: Path, phantom_labels: tuple[np.ndarray, tuple[float, float, float]]
) -> None:
    labels, _ = phantom_labels
    labels = labels[::2, ::2]  # 2 mm pixels = the model's grid: no resampling
    model = load_model("oracle", extra_roots=[oracle_root])
    result = segment_volume(labels.astype(np.float32), (2.0, 2.0, 8.0), model)
    assert result.labels.shape == labels.shape
    assert result.sides.mode == "midline"
    truth_right = (np.arange(labels.shape[0]) >= result.sides.midline_index)[:, None, None]
    truth = np.where(truth_right, labels, labels + 11) * (labels > 0)
    truth = truth.astype(np.uint8)
    from qmri.segmentation.postprocess import largest_components

    np.testing.assert_array_equal(result.labels, largest_components(truth))
    assert len(result.confidence) >= 20
    assert all(c > 0.99 for c in result.confidence.values())  # the oracle is certain
    assert result.model_name == "oracle"
    sidecar = result.sidecar()
    assert sidecar["Labels"]["22"] == "left_sartorius"
    assert sidecar["Model"] == {"Name": "oracle", "Version": "0.0.1"}


def test_segment_volume_resamples_to_and_from_the_model_grid(oracle_root: Path) -> None:
    xx, yy = np.mgrid[0:300, 0:200] * 0.8  # 0.8 mm pixels
    disk_right = np.hypot(xx - 170, yy - 80) < 40
    disk_left = np.hypot(xx - 60, yy - 80) < 40
    labels = np.zeros((300, 200, 2), dtype=np.uint8)
    labels[disk_right] = 11
    labels[disk_left] = 11
    model = load_model("oracle", extra_roots=[oracle_root])
    result = segment_volume(labels.astype(np.float32), (0.8, 0.8, 5.0), model)
    dice = dice_per_label(
        result.labels, np.where(labels > 0, np.where(xx[..., None] > 115, 11, 22), 0), [11, 22]
    )
    assert min(dice.values()) > 0.97


def test_mirror_averaging_averages_the_mirrored_prediction(oracle_root: Path) -> None:
    """A network that sees class 1 only in the left half of its input and class 2 weakly
    everywhere: alone it labels the halves 1 and 2; averaged with its mirror image, class 1's
    probability halves everywhere and class 2 wins on both sides."""
    info = load_model("oracle", extra_roots=[oracle_root]).info
    seen: list[np.ndarray] = []

    def one_sided(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.copy())
        logits = np.zeros((batch.shape[0], 12, *batch.shape[2:]), dtype=np.float32)
        logits[:, 1, : batch.shape[2] // 2] = 10.0
        logits[:, 2] = 6.0
        return logits

    model = SegmentationModel(info, one_sided)
    image = np.ones((64, 32, 1), dtype=np.float32)
    plain = segment_volume(image, (2.0, 2.0, 5.0), model, flip_average=False)
    assert len(seen) == 1
    assert {int(v) % 11 for v in np.unique(plain.labels)} == {1, 2}
    averaged = segment_volume(image, (2.0, 2.0, 5.0), model)
    np.testing.assert_array_equal(seen[2], seen[1][:, :, ::-1])  # the mirror image was asked
    assert {int(v) % 11 for v in np.unique(averaged.labels)} == {2}
    assert averaged.sidecar()["MirrorAveraged"] is True
    assert plain.sidecar()["MirrorAveraged"] is False


def test_segment_nifti_is_orientation_independent(
    oracle_root: Path,
    phantom_labels: tuple[np.ndarray, tuple[float, float, float]],
) -> None:
    labels, spacing = phantom_labels
    model = load_model("oracle", extra_roots=[oracle_root])
    ras_affine = np.diag([*spacing, 1.0])
    ras = nib.Nifti1Image(labels.astype(np.float32), ras_affine)
    ras_labels, _ = segment_nifti(ras, model)
    # the same image stored LPS with axes 0 and 1 swapped (y, x, z order)
    stored = np.transpose(labels[::-1, ::-1, :], (1, 0, 2)).astype(np.float32)
    affine = np.zeros((4, 4))
    affine[0, 1] = -spacing[0]
    affine[1, 0] = -spacing[1]
    affine[2, 2] = spacing[2]
    affine[3, 3] = 1.0
    lps_img = nib.Nifti1Image(stored, affine)
    lps_labels, _ = segment_nifti(lps_img, model)
    assert lps_labels.shape == stored.shape
    np.testing.assert_allclose(lps_labels.affine, affine)
    back = np.transpose(np.asarray(lps_labels.dataobj), (1, 0, 2))[::-1, ::-1, :]
    np.testing.assert_array_equal(back, np.asarray(ras_labels.dataobj))


def test_segment_volume_rejects_bad_input(oracle_root: Path) -> None:
    from qmri.segmentation import SegmentationInputError

    model = load_model("oracle", extra_roots=[oracle_root])
    with pytest.raises(SegmentationInputError):
        segment_volume(np.zeros((4, 4, 4, 4)), (1.0, 1.0, 1.0), model)
    with pytest.raises(SegmentationInputError):
        segment_volume(np.zeros((4, 4, 2)), (0.0, 1.0, 1.0), model)
