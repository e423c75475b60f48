"""Defacing: synthetic whole-body volume with a face-like surface, and limb-only series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from anon_factory import SECRET, mr_dataset, write
from anon_phantoms import SPACING_MM, single_calf_with_foot, thighs, whole_body
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedMRImageStorage, RLELossless

from anonymizer import JobConfig, anonymize_directory
from anonymizer.deface import (
    canonical_axes,
    deface,
    find_head,
    from_canonical,
    to_canonical,
)


def test_face_is_emptied_and_the_rest_unchanged() -> None:
    volume, features = whole_body()
    head = find_head(volume, SPACING_MM)
    assert head is not None
    out, mask = deface(volume, SPACING_MM)
    assert mask is not None
    assert (out[features] == 0).all()  # nose and chin gone
    assert np.array_equal(out[~mask], volume[~mask])  # nothing else touched
    assert mask.sum() < 0.02 * mask.size  # a box around the face, not the body
    z, y, _ = np.nonzero(mask)
    assert z.min() * SPACING_MM[0] >= 1500  # above the shoulders
    assert y.min() > volume.shape[1] // 2  # anterior half only


@pytest.mark.parametrize("make", [thighs, single_calf_with_foot])
def test_limb_only_volumes_are_untouched(make: object) -> None:
    volume = make()  # type: ignore[operator]
    out, mask = deface(volume, SPACING_MM)
    assert mask is None and out is volume


def test_head_only_volume_is_found() -> None:
    volume, features = whole_body()
    head_only = volume[150:]
    out, mask = deface(head_only, SPACING_MM)
    assert mask is not None and (out[features[150:]] == 0).all()


@pytest.mark.parametrize(
    ("row", "col"),
    [
        ((1, 0, 0), (0, 1, 0)),
        ((0, 1, 0), (0, 0, -1)),
        ((1, 0, 0), (0, 0, -1)),
        ((-1, 0, 0), (0, -1, 0)),
    ],
)
def test_canonical_round_trip(row: tuple[int, ...], col: tuple[int, ...]) -> None:
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 100, (4, 5, 6))
    perm, flips = canonical_axes(np.array(row), np.array(col))
    assert np.array_equal(from_canonical(to_canonical(stack, perm, flips), perm, flips), stack)


def test_canonical_axes_of_axial_and_coronal() -> None:
    # axial: slices along +S, rows along +P (posterior), columns along +L
    perm, flips = canonical_axes(np.array([1, 0, 0]), np.array([0, 1, 0]))
    assert perm == (0, 1, 2) and flips == (False, True, False)
    # coronal: rows run foot-wards (-S), slices along the normal row x col = +P (posterior)
    perm, flips = canonical_axes(np.array([1, 0, 0]), np.array([0, 0, -1]))
    assert perm == (1, 0, 2) and flips == (True, True, False)


def _write_series(volume: np.ndarray, folder: Path, body_part: str) -> None:
    dz, dy, dx = SPACING_MM
    for z in range(volume.shape[0]):
        image = volume[z, ::-1, :]  # canonical y (anterior) runs against image rows (+P)
        ds = mr_dataset(
            sop_uid=f"1.2.826.0.1.3680043.99.5.{z + 1}",
            series_uid="1.2.826.0.1.3680043.99.5",
            position=(0.0, 0.0, z * dz),
            pixels=np.ascontiguousarray(image),
            body_part=body_part,
        )
        ds.PixelSpacing = [str(dy), str(dx)]
        ds.SliceThickness = str(dz)
        ds.InstanceNumber = str(z + 1)
        write(ds, folder / f"IM{z:04d}.dcm")


def _read_volume(folder: Path) -> tuple[np.ndarray, list]:
    files = sorted(folder.rglob("*.dcm"))
    datasets = sorted((dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    images = [np.frombuffer(d.PixelData, "<u2").reshape(d.Rows, d.Columns) for d in datasets]
    return np.stack([im[::-1, :] for im in images]), datasets


@pytest.mark.slow
def test_whole_body_series_is_defaced_before_release(tmp_path: Path) -> None:
    volume, features = whole_body()
    _write_series(volume, tmp_path / "in", body_part="WHOLEBODY")
    report = anonymize_directory(tmp_path / "in", tmp_path / "out", JobConfig(SECRET, "P1"), 2)
    expected, mask = deface(volume, SPACING_MM)
    assert mask is not None
    touched = int(mask.any(axis=(1, 2)).sum())
    assert report.safe and report.pixel_actions == {"deface": touched}
    out, datasets = _read_volume(tmp_path / "out")
    assert np.array_equal(out, expected)
    assert (out[features] == 0).all()
    defaced = [d for d, z in zip(datasets, range(len(datasets)), strict=True) if mask[z].any()]
    assert all(d.RecognizableVisualFeatures == "NO" for d in defaced)
    assert all(
        "113102" in [c.CodeValue for c in d.DeidentificationMethodCodeSequence] for d in defaced
    )


def test_limb_series_pixels_unchanged(tmp_path: Path) -> None:
    volume = thighs()
    _write_series(volume, tmp_path / "in", body_part="THIGH")
    report = anonymize_directory(tmp_path / "in", tmp_path / "out", JobConfig(SECRET, "P1"), 1)
    assert report.safe and not report.pixel_actions
    out, _ = _read_volume(tmp_path / "out")
    assert np.array_equal(out, volume)


def test_head_series_whose_face_cannot_be_found_is_quarantined(tmp_path: Path) -> None:
    _write_series(thighs(), tmp_path / "in", body_part="HEAD")  # header says head, image not
    report = anonymize_directory(tmp_path / "in", tmp_path / "out", JobConfig(SECRET, "P1"), 1)
    assert not report.safe and report.files_written == 0
    assert {q["reason"] for q in report.quarantined} == {"deface-impossible"}
    assert not list((tmp_path / "out").rglob("*.dcm"))


def _enhanced(volume: np.ndarray) -> Dataset:
    """One enhanced (multi-frame) MR object holding the canonical volume as axial frames."""
    dz, dy, dx = SPACING_MM
    ds = mr_dataset(pixels=np.ascontiguousarray(volume[:, ::-1, :]), body_part="WHOLEBODY")
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.NumberOfFrames = volume.shape[0]
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [str(dy), str(dx)]
    measures.SliceThickness = str(dz)
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for z in range(volume.shape[0]):
        position = Dataset()
        position.ImagePositionPatient = [0.0, 0.0, z * dz]
        item = Dataset()
        item.PlanePositionSequence = Sequence([position])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    return ds


@pytest.mark.slow
def test_enhanced_multiframe_volume_is_defaced(tmp_path: Path) -> None:
    volume, features = whole_body()
    write(_enhanced(volume), tmp_path / "in" / "enhanced.dcm")
    report = anonymize_directory(tmp_path / "in", tmp_path / "out", JobConfig(SECRET, "P1"), 1)
    assert report.safe and report.pixel_actions == {"deface": 1}
    (path,) = list((tmp_path / "out").rglob("*.dcm"))
    out = dcmread(path)
    frames = np.frombuffer(out.PixelData, "<u2").reshape(volume.shape[0], *volume.shape[1:])
    expected, mask = deface(volume, SPACING_MM)
    assert mask is not None and np.array_equal(frames[:, ::-1, :], expected)
    assert out.RecognizableVisualFeatures == "NO"


def test_compressed_pixel_data_cannot_be_checked_and_is_quarantined(tmp_path: Path) -> None:
    ds = mr_dataset()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([b"\x00" * 64])
    write(ds, tmp_path / "in" / "rle.dcm")
    report = anonymize_directory(tmp_path / "in", tmp_path / "out", JobConfig(SECRET, "P1"), 1)
    assert not report.safe
    assert report.quarantined[0]["reason"] == "pixel-check-impossible"
