"""Series-level defacing of de-identified DICOM files (classic and enhanced multi-frame).

Workers record each image's geometry (:func:`image_info`); once a whole series is
de-identified, :func:`deface_series` stacks its frames, decides whether the head is in the
field of view (header hint: Body Part Examined; content: :func:`anonymizer.deface.find_head`)
and empties the face box in every image of the series before anything is written. A series
that should be defaced but cannot be (no usable geometry, face not found although the header
says head) is quarantined.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from anonymizer.deface import canonical_axes, face_mask, find_head, from_canonical, to_canonical

HEAD_PARTS: frozenset[str] = frozenset(
    {"HEAD", "BRAIN", "SKULL", "NECK", "HEADNECK", "FACE", "WHOLEBODY", "EAR", "EYE", "JAW"}
)
MIN_SLICES = 8


@dataclass(frozen=True)
class ImageInfo:
    """Geometry of one de-identified image file (picklable, no identifiers).

    Attributes
    ----------
    series_uid
        New Series Instance UID.
    stack_key
        Images sharing a key form one spatial stack (same orientation, size, contrast).
    positions
        ImagePositionPatient of every frame (mm, LPS).
    row, column
        ImageOrientationPatient halves.
    spacing_mm
        Pixel spacing ``(row spacing, column spacing)``.
    head_hint
        Body Part Examined names a head-containing region.
    pixel_bytes
        Length of the stored pixels (frames × rows × columns × bytes).
    value_bytes
        Length of the pixel data value at the end of the encoding (with any padding).
    dtype
        numpy dtype string of the stored pixels.
    shape
        ``(frames, rows, columns)``.
    """

    series_uid: str
    stack_key: tuple[str, ...]
    positions: tuple[tuple[float, float, float], ...]
    row: tuple[float, float, float]
    column: tuple[float, float, float]
    spacing_mm: tuple[float, float]
    head_hint: bool
    pixel_bytes: int
    value_bytes: int
    dtype: str
    shape: tuple[int, int, int]


def _floats(value: object, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _frame_items(ds: Dataset, keyword: str, nested: str) -> list[Dataset | None]:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    out: list[Dataset | None] = []
    for i in range(frames):
        item = None
        if per_frame is not None and i < len(per_frame) and keyword in per_frame[i]:
            item = per_frame[i][keyword][0] if per_frame[i][keyword].value else None
        elif shared is not None and len(shared) and keyword in shared[0]:
            item = shared[0][keyword][0] if shared[0][keyword].value else None
        out.append(item if item is not None and nested in item else None)
    return out


def head_hint(ds: Dataset) -> bool:
    """Whether Body Part Examined names a region that contains the face."""
    part = str(ds.get("BodyPartExamined", "") or "").upper().replace(" ", "")
    return part in HEAD_PARTS


def image_info(ds: Dataset, encoded: bytes) -> ImageInfo | None:
    """Geometry of a de-identified image, or ``None`` if it has no usable geometry."""
    pixel = ds.get("PixelData")
    if not isinstance(pixel, bytes) or not encoded.endswith(pixel):
        return None
    if int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.get("BitsAllocated", 0)) not in (8, 16):
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" in ds:
        pos_items = _frame_items(ds, "PlanePositionSequence", "ImagePositionPatient")
        ori_items = _frame_items(ds, "PlaneOrientationSequence", "ImageOrientationPatient")
        pix_items = _frame_items(ds, "PixelMeasuresSequence", "PixelSpacing")
        if any(i is None for i in pos_items + ori_items[:1] + pix_items[:1]):
            return None
        positions = [_floats(i.ImagePositionPatient, 3) for i in pos_items]  # type: ignore[union-attr]
        orientation = _floats(ori_items[0].ImageOrientationPatient, 6)  # type: ignore[union-attr]
        spacing = _floats(pix_items[0].PixelSpacing, 2)  # type: ignore[union-attr]
    else:
        positions = [_floats(ds.get("ImagePositionPatient"), 3)]
        orientation = _floats(ds.get("ImageOrientationPatient"), 6)
        spacing = _floats(ds.get("PixelSpacing"), 2)
    if orientation is None or spacing is None or any(p is None for p in positions):
        return None
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    bits = int(ds.BitsAllocated)
    dtype = f"{'i' if signed else 'u'}{bits // 8}"
    rows, cols = int(ds.Rows), int(ds.Columns)
    if len(pixel) < rows * cols * frames * bits // 8:
        return None
    image_type = "\\".join(str(v) for v in (ds.get("ImageType") or []))
    private_type = ""
    for tag in list(ds.keys()):  # GE magnitude/phase/real/imaginary flag survives as safe private
        number = int(tag)  # int arithmetic: no BaseTag properties per element
        if number >> 16 == 0x0043 and number & 0xFF == 0x2F and number & 0xFFFF >= 0x1000:
            private_type = str(ds[tag].value)
    key = (
        "mf:" + str(ds.SOPInstanceUID) if frames > 1 else "",
        image_type,
        private_type,
        str(ds.get("EchoTime", "")),
        str(ds.get("EchoNumbers", "")),
        f"{rows}x{cols}",
        ",".join(f"{v:.3f}" for v in orientation),
    )
    return ImageInfo(
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        stack_key=key,
        positions=tuple(positions),  # type: ignore[arg-type]
        row=orientation[:3],  # type: ignore[arg-type]
        column=orientation[3:],  # type: ignore[arg-type]
        spacing_mm=spacing,  # type: ignore[arg-type]
        head_hint=head_hint(ds),
        pixel_bytes=rows * cols * frames * bits // 8,
        value_bytes=len(pixel),
        dtype=dtype,
        shape=(frames, rows, cols),
    )


@dataclass
class _Frame:
    index: int  # file index in the caller's list
    frame: int
    position: np.ndarray


def deface_series(
    infos: dict[int, ImageInfo], encoded: dict[int, bytes]
) -> tuple[dict[int, bytes], dict[int, str]]:
    """Deface one series if its field of view includes the head.

    Parameters
    ----------
    infos
        File index → geometry of every image of the series.
    encoded
        File index → verified encoding of that image.

    Returns
    -------
    tuple
        New encodings of the defaced files, and file index → quarantine reason for files that
        must not be released.
    """
    hint = any(i.head_hint for i in infos.values())
    stacks: dict[tuple[str, ...], list[_Frame]] = defaultdict(list)
    for index, info in infos.items():
        for f, pos in enumerate(info.positions):
            stacks[info.stack_key].append(_Frame(index, f, np.asarray(pos)))
    boxes: dict[tuple[str, ...], tuple[list[_Frame], np.ndarray]] = {}
    geometry_unknown = False
    for key, frames in stacks.items():
        info = infos[frames[0].index]
        normal = np.cross(np.asarray(info.row), np.asarray(info.column))
        frames.sort(key=lambda fr: float(fr.position @ normal))
        heights = [float(fr.position @ normal) for fr in frames]
        if len(frames) < MIN_SLICES or len(set(np.round(heights, 2))) != len(frames):
            geometry_unknown = True
            continue
        stack = np.stack([_pixels(infos[fr.index], encoded[fr.index])[fr.frame] for fr in frames])
        perm, flips = canonical_axes(np.asarray(info.row), np.asarray(info.column))
        gap = float(np.median(np.diff(heights)))
        stack_spacing = (gap, info.spacing_mm[0], info.spacing_mm[1])
        canonical = to_canonical(stack, perm, flips)
        spacing = tuple(stack_spacing[p] for p in perm)
        head = find_head(canonical, spacing)  # type: ignore[arg-type]
        if head is not None:
            mask = from_canonical(face_mask(canonical.shape, head), perm, flips)
            boxes[key] = (frames, mask)
    if not boxes:
        if hint:
            reason = "head in field of view (Body Part Examined) but the face could not be located"
            return {}, dict.fromkeys(infos, reason)
        return {}, {}
    if geometry_unknown or len(boxes) != len(stacks):
        # some stacks of a head series could not be defaced on their own: borrow the mask of a
        # stack with identical geometry, else quarantine them
        for key, frames in stacks.items():
            if key in boxes:
                continue
            twin = next(
                (b for b in boxes.values() if _same_geometry(b[0], frames)),
                None,
            )
            if twin is None:
                reason = "head in field of view but this image's face region could not be located"
                return {}, dict.fromkeys(infos, reason)
            order = {tuple(np.round(f.position, 2)): z for z, f in enumerate(twin[0])}
            frames.sort(key=lambda fr: order[tuple(np.round(fr.position, 2))])
            boxes[key] = (frames, twin[1])
    changed: dict[int, np.ndarray] = {}
    for frames, mask in boxes.values():
        for z, fr in enumerate(frames):
            if not mask[z].any():
                continue
            info = infos[fr.index]
            if fr.index not in changed:
                changed[fr.index] = _pixels(info, encoded[fr.index]).copy()
            image = changed[fr.index][fr.frame]
            image[mask[z]] = image.min()
    return {i: _reencode(infos[i], encoded[i], arr) for i, arr in changed.items()}, {}


def _same_geometry(a: list[_Frame], b: list[_Frame]) -> bool:
    pa = sorted(tuple(np.round(f.position, 2)) for f in a)
    pb = sorted(tuple(np.round(f.position, 2)) for f in b)
    return len(pa) == len(pb) and pa == pb


def _pixels(info: ImageInfo, encoded: bytes) -> np.ndarray:
    start = len(encoded) - info.value_bytes
    data = np.frombuffer(
        encoded,
        dtype=np.dtype("<" + info.dtype),
        count=info.pixel_bytes // int(info.dtype[1]),
        offset=start,
    )
    return data.reshape(info.shape)


def _reencode(info: ImageInfo, encoded: bytes, pixels: np.ndarray) -> bytes:
    ds = dcmread(io.BytesIO(encoded))
    raw = pixels.astype("<" + info.dtype).tobytes()
    ds.PixelData = raw + (b"\x00" if len(raw) % 2 else b"")
    ds.RecognizableVisualFeatures = "NO"
    method = list(ds.get("DeidentificationMethod") or [])
    if isinstance(ds.get("DeidentificationMethod"), str):
        method = [str(ds.DeidentificationMethod)]
    ds.DeidentificationMethod = [*method, "defaced: face box emptied"]
    codes = ds.get("DeidentificationMethodCodeSequence") or Sequence()
    item = Dataset()
    item.CodeValue = "113102"
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = "Clean Recognizable Visual Features Option"
    codes.append(item)
    ds.DeidentificationMethodCodeSequence = codes
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
