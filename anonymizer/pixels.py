"""Burned-in annotation: header risk, a pixel text detector, and rule-based cleaning.

Policy (never pass through unchanged): an image whose header says it may carry burned-in text
(``BurnedInAnnotation=YES``, a secondary-capture SOP class, a ``SCREEN SAVE``, ``SCREENSHOT``
or ``CSA REPORT`` image type, or a ``DERIVED\\SECONDARY`` image such as a screen-saved reformat) or whose pixels look like text is cleaned by a matching rule from
``pixel_rules.json`` (rectangles blanked in every frame, then checked again) or quarantined.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID
from scipy import ndimage

from anonymizer.errors import ProfileError, UnsafeFileError

RULES_PATH = Path(__file__).resolve().parent / "data" / "pixel_rules.json"

SECONDARY_CAPTURE_CLASSES: frozenset[str] = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
    }
)
_RISKY_IMAGE_TYPES = frozenset({"SCREEN SAVE", "SCREENSHOT", "CSA REPORT"})
_MATCH_KEYS = frozenset({"Manufacturer", "ManufacturerModelName", "Rows", "Columns", "Modality"})


def header_risk(ds: Dataset) -> str | None:
    """Why the header says the image may carry burned-in text, or ``None``."""
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        return "BurnedInAnnotation=YES"
    if str(ds.get("SOPClassUID", "")) in SECONDARY_CAPTURE_CLASSES:
        return "secondary capture SOP class"
    image_type = ds.get("ImageType")
    values = [str(v).strip().upper() for v in (image_type or [])]
    if isinstance(image_type, str):
        values = [image_type.strip().upper()]
    risky = _RISKY_IMAGE_TYPES.intersection(values)
    if risky:
        return f"image type {sorted(risky)[0]}"
    if values[:2] == ["DERIVED", "SECONDARY"]:
        return "image type DERIVED\\SECONDARY"
    return None


def native_frames(ds: Dataset) -> np.ndarray | None:
    """Pixel data of an uncompressed single-sample image as ``(frames, rows, columns)``.

    Returns ``None`` when there is no pixel data; raises :class:`UnsafeFileError` when the
    pixel data cannot be read without a codec (compressed transfer syntax, colour images).
    """
    if "PixelData" not in ds:
        return None
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if syntax.is_compressed or not syntax.is_little_endian:
        raise UnsafeFileError("pixel-check-impossible", f"transfer syntax {syntax} not checked")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise UnsafeFileError("pixel-check-impossible", "multi-sample (colour) image")
    bits = int(ds.BitsAllocated)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    dtype = {8: np.int8 if signed else np.uint8, 16: np.int16 if signed else np.uint16}.get(bits)
    if dtype is None:
        raise UnsafeFileError("pixel-check-impossible", f"{bits} bits allocated")
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    raw = ds.PixelData
    count = rows * cols * frames
    data = np.frombuffer(raw, dtype=dtype, count=count)
    return data.reshape(frames, rows, cols)


def detect_text(image: np.ndarray, border_fraction: float = 0.2) -> bool:
    """Heuristic burned-in text detector on one 2-D image.

    Text on MR is rendered as thin, bright, glyph-sized strokes on the dark background near the
    edges. Within the outer ``border_fraction`` of rows and columns, pixels at or above 75 % of
    the image range are labelled (if less than 30 % of the border is dark, below 15 % of the
    range, there is no background to read text on and the detector abstains); text is declared when one band of rows holds at least five
    glyph-sized components (2–40 px tall, 1–40 px wide, 3–400 px) that share a baseline and
    sit on dark background (at least 80 % of the other pixels within 3 pixels of each are below
    15 % of the range: glyphs, not fragments of bright tissue or noise).

    Parameters
    ----------
    image
        ``(rows, columns)`` stored pixel values.
    border_fraction
        Fraction of each side searched.

    Returns
    -------
    bool
        ``True`` if the image looks like it carries text.
    """
    if not _may_hold_text(np.asarray(image), border_fraction):
        return False
    img = np.asarray(image, dtype=np.float32)
    peak = float(img.max())
    if peak <= float(img.min()):
        return False
    bright = img >= img.min() + 0.75 * (peak - float(img.min()))
    rows, cols = bright.shape
    band_r = max(1, int(rows * border_fraction))
    band_c = max(1, int(cols * border_fraction))
    border = np.zeros_like(bright)
    border[:band_r, :] = True
    border[-band_r:, :] = True
    border[:, :band_c] = True
    border[:, -band_c:] = True
    low, scale = float(img.min()), peak - float(img.min())

    def norm(region: np.ndarray) -> np.ndarray:  # normalised values, computed where needed
        return (region - low) / scale

    if float(np.mean(norm(img[border]) < 0.15)) < 0.3:
        # No dark background (phase, real or imaginary images are noise over the full range):
        # glyphs cannot be told from noise by this detector.
        return False
    labels, count = ndimage.label(bright & border)
    if count < 5:
        return False
    slices = ndimage.find_objects(labels)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    baselines: dict[int, int] = {}
    for index, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        height = sl[0].stop - sl[0].start
        width = sl[1].stop - sl[1].start
        if 2 <= height <= 40 and 1 <= width <= 40 and 3 <= sizes[index] <= 400:
            if not _on_dark_background(img, norm, bright, sl):
                continue
            key = sl[0].stop // 6
            for k in (key - 1, key, key + 1):
                baselines[k] = baselines.get(k, 0) + 1
    return bool(baselines) and max(baselines.values()) >= 5


def _may_hold_text(image: np.ndarray, border_fraction: float) -> bool:
    """Cheap necessary condition of :func:`detect_text`: at least 15 bright border pixels.

    Five glyph components of at least 3 pixels each are needed to declare text, so an image
    with fewer bright pixels in its border bands cannot be declared text; the threshold is
    computed exactly as in :func:`detect_text` (float32), only on the border bands.
    """
    if image.ndim != 2 or image.size == 0:
        return True  # let the full detector decide (and fail) as before
    low, high = np.float32(image.min()), np.float32(image.max())
    if high <= low:
        return False
    threshold = low + 0.75 * (float(high) - float(low))
    rows, cols = image.shape
    band_r = max(1, int(rows * border_fraction))
    band_c = max(1, int(cols * border_fraction))
    if 2 * band_r >= rows or 2 * band_c >= cols:
        return True  # bands overlap: no shortcut
    strips = (
        image[:band_r, :],
        image[rows - band_r :, :],
        image[band_r : rows - band_r, :band_c],
        image[band_r : rows - band_r, cols - band_c :],
    )
    count = sum(int(np.count_nonzero(strip.astype(np.float32) >= threshold)) for strip in strips)
    return count >= 15


def _on_dark_background(
    img: np.ndarray,
    norm: Callable[[np.ndarray], np.ndarray],
    bright: np.ndarray,
    sl: tuple[slice, slice],
) -> bool:
    """Whether the non-bright pixels around a component are dark background (glyph), not
    tissue or noise."""
    r0, r1 = max(sl[0].start - 3, 0), sl[0].stop + 3
    c0, c1 = max(sl[1].start - 3, 0), sl[1].stop + 3
    ring = norm(img[r0:r1, c0:c1][~bright[r0:r1, c0:c1]])
    return ring.size > 0 and float(np.mean(ring < 0.15)) >= 0.8


@dataclass(frozen=True)
class PixelRule:
    """A vetted cleaning rule: where a device burns text, as rectangles to blank.

    Attributes
    ----------
    name
        Rule name (shown in reports).
    match
        Attribute keyword → required value (``Manufacturer``, ``ManufacturerModelName``,
        ``Modality``: case-insensitive substring; ``Rows``/``Columns``: equality).
    rectangles
        ``(x0, y0, x1, y1)`` in pixels, end-exclusive, blanked in every frame.
    """

    name: str
    match: dict[str, str | int]
    rectangles: tuple[tuple[int, int, int, int], ...]

    def applies(self, ds: Dataset) -> bool:
        """Whether every match condition holds for the dataset."""
        for key, wanted in self.match.items():
            actual = ds.get(key)
            if actual is None:
                return False
            if isinstance(wanted, int):
                if int(actual) != wanted:
                    return False
            elif str(wanted).lower() not in str(actual).lower():
                return False
        return True


def load_pixel_rules(path: Path | None = None) -> tuple[PixelRule, ...]:
    """Load rules from JSON (default: the shipped, reviewed ``pixel_rules.json``)."""
    try:
        data = json.loads((path or RULES_PATH).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProfileError(f"cannot read pixel rules: {exc}") from exc
    rules = []
    for entry in data.get("rules", []):
        match = entry.get("match", {})
        unknown = set(match) - _MATCH_KEYS
        if unknown or not match:
            raise ProfileError(f"pixel rule {entry.get('name')!r}: bad match keys {unknown}")
        rects = tuple(tuple(int(v) for v in r) for r in entry.get("rectangles", []))
        if not rects or any(len(r) != 4 or r[0] >= r[2] or r[1] >= r[3] for r in rects):
            raise ProfileError(f"pixel rule {entry.get('name')!r}: bad rectangles")
        rules.append(PixelRule(str(entry["name"]), dict(match), rects))  # type: ignore[arg-type]
    return tuple(rules)


def clean_pixels(ds: Dataset, rules: tuple[PixelRule, ...], risk: str) -> str:
    """Blank the rectangles of the first matching rule in every frame, then re-check.

    Returns
    -------
    str
        Name of the rule applied.

    Raises
    ------
    UnsafeFileError
        No rule matches, or text is still detected after cleaning.
    """
    rule = next((r for r in rules if r.applies(ds)), None)
    if rule is None:
        raise UnsafeFileError("burned-in-text", f"{risk}; no cleaning rule for this device")
    frames = native_frames(ds)
    if frames is None:
        return rule.name
    cleaned = frames.copy()
    background = cleaned.min()
    for x0, y0, x1, y1 in rule.rectangles:
        cleaned[:, y0:y1, x0:x1] = background
    if any(detect_text(frame) for frame in cleaned):
        raise UnsafeFileError("burned-in-text", f"{risk}; text remains after rule {rule.name}")
    raw = cleaned.tobytes()
    ds.PixelData = raw + (b"\x00" if len(raw) % 2 else b"")
    ds.BurnedInAnnotation = "NO"
    return rule.name
