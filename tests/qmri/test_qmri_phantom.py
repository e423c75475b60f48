"""Synthetic thigh phantom: label maps, split, anatomy, tissue, contrasts, make_subject."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qmri.epg import cpmg_echo_train
from qmri.fat_spectrum import fat_signal
from qmri.phantom import make_subject, synthesize
from qmri.phantom.anatomy import (
    TISSUE_CORTICAL_BONE,
    TISSUE_MARROW,
    TISSUE_SEPTUM,
    TISSUE_SKIN,
    TISSUE_SUBCUTANEOUS_FAT,
    AnatomyParameters,
    build_tissues,
    midline_index,
)
from qmri.phantom.contrast import add_rician_noise, gre_magnitude, mese_first_echo
from qmri.phantom.labelmaps import (
    check_anatomy,
    file_label_mapping,
    load_label_map,
    load_split,
    split_files,
    subject_id,
)
from qmri.phantom.shape_model import build_shape_model, load_shape_model, render_labels
from qmri.phantom.tissue import draw_involvement
from qmri.segmentation.errors import PhantomError


def _ring_thighs(nx: int = 120, ny: int = 70, nz: int = 2) -> np.ndarray:
    """Two 'thighs': a muscle ring (labels 6 inner half / 7 outer half) around a femur hole."""
    xx, yy = np.mgrid[0:nx, 0:ny]
    labels = np.zeros((nx, ny, nz), dtype=np.uint8)
    for cx in (30, 90):
        r = np.hypot(xx - cx, yy - 35)
        ring = (r >= 8) & (r <= 22)
        labels[ring & (yy >= 35)] = 6
        labels[ring & (yy < 35)] = 7
    return labels


def test_subject_id_patterns_and_unknown_name() -> None:
    assert subject_id("Training_Fat_THIGH_031_0000.nii.gz") == "THIGH_031"
    assert subject_id("Training_T1_THIGH_031_0002") == "THIGH_031"
    assert subject_id("Helsinki_STIR_THIGH_112_0001.nii.gz") == "Helsinki_112"
    assert subject_id("MyoSegmenTUM_Water_HV003_3_0001.nii.gz") == "TUM_HV003"
    with pytest.raises(PhantomError):
        subject_id("patient_smith.nii.gz")


def test_split_is_by_subject_and_disjoint() -> None:
    split = load_split()
    parts = [set(split[k]) for k in ("train", "val", "test")]
    assert all(parts)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(split["test"]) == 6 and len(split["val"]) == 3


def test_label_mapping_is_a_bijection() -> None:
    table = file_label_mapping()
    assert table[0] == 0
    assert sorted(table[1:].tolist()) == list(range(1, 12))


def test_check_anatomy_rejects_posterior_quadriceps() -> None:
    labels = np.zeros((10, 20, 1), dtype=np.uint8)
    labels[:, 15:, 0] = 7  # vastus lateralis anterior (+y)
    labels[:, :5, 0] = 1  # biceps femoris posterior
    check_anatomy(labels)
    with pytest.raises(PhantomError):
        check_anatomy(labels[:, ::-1])


def test_midline_is_the_gap_between_thighs() -> None:
    labels = _ring_thighs()
    assert 52 <= midline_index(labels > 0) <= 68


def test_build_tissues_adds_femur_fat_skin_and_keeps_muscle() -> None:
    labels = _ring_thighs()
    params = AnatomyParameters(subcutaneous_fat_mm=6.0, skin_mm=2.0, femur_radius_mm=6.0)
    tissues = build_tissues(labels, 1.0, params, np.random.default_rng(0))
    muscle = labels > 0
    # muscles stay muscles, except the one-voxel septum between the two muscles
    changed = muscle & (tissues != labels)
    assert changed.sum() < 0.06 * muscle.sum()
    assert set(np.unique(tissues[changed]).tolist()) <= {TISSUE_SEPTUM}
    # femur (cortex + marrow) sits at each ring centre
    for cx in (30, 90):
        assert tissues[cx, 35, 0] == TISSUE_MARROW
        assert TISSUE_CORTICAL_BONE in tissues[cx - 8 : cx + 9, 35, 0]
    # subcutaneous fat just outside the muscle ring, then skin, then air
    assert tissues[30, 35 + 25, 0] == TISSUE_SUBCUTANEOUS_FAT
    assert tissues[30, 35 + 29, 0] == TISSUE_SKIN
    assert tissues[0, 0, 0] == 0


@pytest.mark.parametrize("severity", ["healthy", "moderate", "severe"])
def test_involvement_ranges(severity: str) -> None:
    inv = draw_involvement(severity, np.random.default_rng(1))
    assert inv.ff.shape == (2, 11)
    assert np.all((inv.ff >= 0) & (inv.ff <= 0.97))
    assert np.all((inv.t2_water_ms >= 25) & (inv.t2_water_ms <= 60))
    if severity == "healthy":
        assert inv.ff.max() < 0.1
    if severity == "severe":
        assert (inv.ff >= 0.7).sum(axis=1).min() >= 1
        assert (inv.ff >= 0.7).sum() >= 4


def test_unknown_severity_fails_closed() -> None:
    with pytest.raises(PhantomError):
        draw_involvement("mild", np.random.default_rng(0))


def test_mese_first_echo_matches_direct_epg() -> None:
    rng = np.random.default_rng(2)
    shape = (4, 3, 2)
    maps = {
        "pd": rng.uniform(0.5, 1.0, shape),
        "ff": rng.uniform(0.0, 1.0, shape),
        "t2_water_ms": rng.uniform(25.0, 60.0, shape),
        "t2_fat_ms": np.full(shape, 140.0),
    }
    b1 = rng.uniform(0.7, 1.1, shape)
    fast = mese_first_echo(maps, b1, echo_spacing_ms=10.0, repetition_time_ms=3000.0)
    naive = np.empty(shape)
    for idx in np.ndindex(shape):
        ew = cpmg_echo_train(maps["t2_water_ms"][idx], b1[idx], echo_spacing_ms=10.0, n_echoes=1)
        ef = cpmg_echo_train(140.0, b1[idx], echo_spacing_ms=10.0, n_echoes=1)
        w = maps["pd"][idx] * (1 - maps["ff"][idx]) * (1 - np.exp(-3000.0 / 1400.0))
        f = maps["pd"][idx] * maps["ff"][idx] * (1 - np.exp(-3000.0 / 365.0))
        naive[idx] = w * ew[0] + f * ef[0]
    np.testing.assert_allclose(fast, naive, rtol=2e-2)  # interpolated look-up table


def test_gre_magnitude_uses_fat_spectrum() -> None:
    maps = {"pd": np.ones(2), "ff": np.array([0.0, 0.5])}
    te = 1.15  # near opposed phase at 3 T
    out = gre_magnitude(
        maps, te_ms=te, field_strength_t=3.0, t2star_water_ms=1e9, t2star_fat_ms=1e9
    )
    expected = abs(0.5 + 0.5 * complex(fat_signal(np.asarray(te), 3.0)))
    assert out[0] == pytest.approx(1.0)
    assert out[1] == pytest.approx(expected)
    assert out[1] < 0.5  # water and fat cancel partly


def test_rician_noise_statistics() -> None:
    rng = np.random.default_rng(3)
    noisy = add_rician_noise(np.zeros(20000), 0.1, rng)
    assert noisy.mean() == pytest.approx(0.1 * np.sqrt(np.pi / 2), rel=0.03)  # Rayleigh mean
    with pytest.raises(PhantomError):
        add_rician_noise(np.zeros(3), -1.0, rng)


def _small_labels() -> tuple[np.ndarray, tuple[float, float, float]]:
    return render_labels(
        np.random.default_rng(5), n_slices=3, slice_mm=10.0, pixel_mm=2.0, size_px=(220, 130)
    )


def test_render_labels_two_mirrored_thighs() -> None:
    labels, spacing = _small_labels()
    assert spacing == (2.0, 2.0, 10.0)
    assert labels.shape == (220, 130, 3)
    mid = labels.shape[0] // 2
    for half in (labels[:mid], labels[mid:]):
        present = set(np.unique(half)) - {0}
        assert len(present) >= 9
    check_anatomy(labels)


def test_synthesize_shapes_ranges_and_seed() -> None:
    labels, spacing = _small_labels()
    kwargs = {
        "severity": "severe",
        "contrasts": ("water", "ff", "mese", "gre"),
        "out_pixel_mm": 4.0,
    }
    a = synthesize(labels, spacing, rng=np.random.default_rng(7), **kwargs)
    b = synthesize(labels, spacing, rng=np.random.default_rng(7), **kwargs)
    c = synthesize(labels, spacing, rng=np.random.default_rng(8), **kwargs)
    for key, img in a.images.items():
        assert img.shape == a.labels.shape
        assert img.dtype == np.float32
        assert np.isfinite(img).all() and img.min() >= 0
        np.testing.assert_array_equal(img, b.images[key])
        assert not np.array_equal(img, c.images[key])
    assert a.images["ff"].max() <= 1.0
    assert a.spacing_mm == (4.0, 4.0, 10.0)
    assert set(np.unique(a.labels)) - {0} == set(np.unique(labels)) - {0}
    muscle = a.labels > 0
    assert a.ff_true[muscle].min() >= 0.0 and a.ff_true[muscle].max() <= 1.0


def test_synthesize_rejects_unknown_contrast() -> None:
    labels, spacing = _small_labels()
    with pytest.raises(PhantomError):
        synthesize(
            labels, spacing, severity="healthy", rng=np.random.default_rng(0), contrasts=("pd",)
        )


def test_make_subject_parametric_without_real_data() -> None:
    subject = make_subject(11, "moderate", contrasts=("water",), pixel_mm=4.0, n_slices=3)
    again = make_subject(11, "moderate", contrasts=("water",), pixel_mm=4.0, n_slices=3)
    np.testing.assert_array_equal(subject["water"], again["water"])
    labels = subject["labels"]
    assert labels.shape == subject["water"].shape
    right = set(np.unique(labels[labels <= 11])) - {0}
    left = set(np.unique(labels[labels > 11]))
    assert len(right) >= 9 and len(left) >= 9
    # right thigh (labels 1..11) lies at larger x on RAS axes
    xs = np.nonzero(labels)[0]
    assert xs[labels[labels > 0] <= 11].mean() > xs[labels[labels > 0] > 11].mean()
    assert subject["affine"].shape == (4, 4)
    json.dumps(subject["involvement"])
    with pytest.raises(PhantomError):
        make_subject(1, "extreme")


def test_shape_model_file_is_consistent() -> None:
    model = load_shape_model()
    assert len(model["stations"]) == 3
    for station in model["stations"]:
        assert len(station["muscles"]) == 11
        for m in station["muscles"]:
            cov = np.asarray(m["cov_mm2"])
            assert np.all(np.linalg.eigvalsh(cov) > 0)


@pytest.mark.realdata
def test_real_label_maps_load_split_and_check(shared_data: Path) -> None:
    labels_dir = shared_data / "labels" / "thigh_11_muscles"
    parts = split_files(labels_dir)
    assert sum(len(v) for v in parts.values()) == 30
    train_subjects = {subject_id(p.name) for p in parts["train"]}
    test_subjects = {subject_id(p.name) for p in parts["test"]}
    assert not train_subjects & test_subjects
    lm = load_label_map(parts["test"][0])
    assert lm.labels.max() == 11
    model = build_shape_model([load_label_map(p) for p in parts["train"][:3]])
    assert len(model["stations"]) == 3
