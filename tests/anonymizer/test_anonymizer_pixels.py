"""Burned-in text: detector, header risk, quarantine by default, cleaning by rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from anon_factory import SECRET, mr_dataset
from PIL import Image, ImageDraw

from anonymizer import Deidentifier, ProfileError
from anonymizer.pixels import detect_text, header_risk, load_pixel_rules


def _anatomy(seed: int = 0) -> np.ndarray:
    """Two bright thigh-like discs with fat rims on a dark noisy background, 192 x 256."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:192, 0:256]
    img = rng.normal(20, 6, (192, 256))
    for cx in (70, 186):
        r = np.hypot(x - cx, y - 96)
        img = np.where(r < 62, 700 + rng.normal(0, 40, img.shape), img)
        img = np.where((r >= 55) & (r < 62), 1400 + rng.normal(0, 60, img.shape), img)
    return np.clip(img, 0, None).astype(np.uint16)


def _with_text(img: np.ndarray, text: str = "DOE^JANE 1980-01-01 ID 123456") -> np.ndarray:
    canvas = Image.new("L", (img.shape[1], img.shape[0]), 0)
    ImageDraw.Draw(canvas).text((4, 4), text, fill=255)
    mask = np.asarray(canvas) > 128
    out = img.copy()
    out[mask] = img.max()
    return out


def test_detector_finds_text_and_ignores_anatomy_and_noise() -> None:
    anatomy = _anatomy()
    assert not detect_text(anatomy)
    assert detect_text(_with_text(anatomy))
    assert not detect_text(np.zeros((64, 64), dtype=np.uint16))
    rng = np.random.default_rng(1)
    assert not detect_text(rng.integers(0, 4096, (128, 128)).astype(np.uint16))  # phase-like


def test_header_risk() -> None:
    ds = mr_dataset()
    assert header_risk(ds) is None
    ds.BurnedInAnnotation = "YES"
    assert header_risk(ds) == "BurnedInAnnotation=YES"
    ds = mr_dataset()
    ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    assert header_risk(ds) is not None
    ds = mr_dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    assert header_risk(ds) == "secondary capture SOP class"


@pytest.mark.parametrize("how", ["header", "pixels"])
def test_burned_in_is_quarantined_without_a_rule(how: str) -> None:
    pixels = _with_text(_anatomy()) if how == "pixels" else _anatomy()
    ds = mr_dataset(pixels=pixels)
    if how == "header":
        ds.BurnedInAnnotation = "YES"
    result = Deidentifier(SECRET, "P1").deidentify_dataset(ds)
    assert result.status == "quarantined" and result.reason == "burned-in-text"
    assert result.encoded is None


def _rules(tmp_path: Path, rect: list[int]) -> Path:
    path = tmp_path / "rules.json"
    rule = {
        "name": "skyra-top-banner",
        "match": {"ManufacturerModelName": "Skyra", "Rows": 192},
        "rectangles": [rect],
    }
    path.write_text(json.dumps({"version": 1, "rules": [rule]}))
    return path


def test_rule_cleans_text_and_marks_the_file(tmp_path: Path) -> None:
    original = _with_text(_anatomy())
    ds = mr_dataset(pixels=original)
    ds.BurnedInAnnotation = "YES"
    rules = load_pixel_rules(_rules(tmp_path, [0, 0, 256, 16]))
    result = Deidentifier(SECRET, "P1", pixel_rules=rules).deidentify_dataset(ds)
    assert result.status == "written", (result.reason, result.detail)
    out = result.dataset
    assert out is not None
    cleaned = np.frombuffer(out.PixelData, dtype="<u2").reshape(192, 256)
    assert (cleaned[:16] == original.min()).all()
    assert np.array_equal(cleaned[16:], original[16:])  # the rest is unchanged
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert result.pixel_actions == ["clean:skyra-top-banner"]


def test_rule_that_misses_the_text_still_quarantines(tmp_path: Path) -> None:
    ds = mr_dataset(pixels=_with_text(_anatomy()))
    rules = load_pixel_rules(_rules(tmp_path, [0, 150, 256, 192]))
    result = Deidentifier(SECRET, "P1", pixel_rules=rules).deidentify_dataset(ds)
    assert result.status == "quarantined" and "text remains" in result.detail


def test_shipped_rules_load_and_bad_rules_fail(tmp_path: Path) -> None:
    assert load_pixel_rules() == ()
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {"rules": [{"name": "x", "match": {"Colour": "red"}, "rectangles": [[0, 0, 1, 1]]}]}
        )
    )
    with pytest.raises(ProfileError):
        load_pixel_rules(bad)
    bad.write_text(
        json.dumps({"rules": [{"name": "x", "match": {"Rows": 1}, "rectangles": [[5, 0, 1, 1]]}]})
    )
    with pytest.raises(ProfileError):
        load_pixel_rules(bad)
