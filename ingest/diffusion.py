"""Diffusion-weighted series: b-values and gradient directions from DICOM, bval/bvec tables.

Where the values come from (first found wins, per image):

==========  ==========================================  ===================================
source      b-value                                     gradient direction (frame)
==========  ==========================================  ===================================
standard    (0018,9087) DiffusionBValue (classic, or    (0018,9089) DiffusionGradient-
            enhanced MRDiffusionSequence)               Orientation (patient LPS)
Siemens     (0019,xx0C) "SIEMENS MR HEADER" B_value     (0019,xx0E) DiffusionGradient-
                                                        Direction (patient LPS)
GE          (0043,xx39) "GEMS_PARM_01" first value,     (0019,xxBB/BC/BD) "GEMS_ACQU_01"
            modulo 1e9 (GE adds 1e9 to flag values),    (image frame: row, column, slice)
            only when ScanningSequence has EP (the
            field means other things elsewhere)
Philips     (2001,xx03) "Philips Imaging DD 001"        (2005,xxB0/B1/B2) "Philips MR Imaging
                                                        DD 001" (patient LPS)
==========  ==========================================  ===================================

A b = 0 image has no direction (written as ``0 0 0``). A diffusion-weighted image without a
direction (isotropic trace images) makes the series unconvertible as DWI: that is a derived
image, not an acquisition.

bval/bvec follow BIDS (= FSL): one column per volume; bvecs are unit vectors in the voxel
frame of the written NIfTI, with the first component negated when the affine's determinant is
positive (always the case for MyoVault's RAS affines, whose slice axis points along
``row × column``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ingest.errors import GeometryError

if TYPE_CHECKING:
    from ingest.records import InstanceRecord

PATIENT = "patient"  # LPS patient coordinates
IMAGE = "image"  # (row direction, column direction, slice normal)
B_TOL = 1.0  # s/mm² — b-values closer than this are the same shell
DIR_TOL = 1e-3
GE_FLAG_OFFSET = 1_000_000_000

# (group, private creator, element offset): where each vendor keeps its values
SIEMENS_B = (0x0019, "SIEMENS MR HEADER", 0x0C)
SIEMENS_DIR = (0x0019, "SIEMENS MR HEADER", 0x0E)
GE_B = (0x0043, "GEMS_PARM_01", 0x39)
GE_DIR = tuple((0x0019, "GEMS_ACQU_01", off) for off in (0xBB, 0xBC, 0xBD))
PHILIPS_B = (0x2001, "Philips Imaging DD 001", 0x03)
PHILIPS_DIR = tuple((0x2005, "Philips MR Imaging DD 001", off) for off in (0xB0, 0xB1, 0xB2))


@dataclass(frozen=True, slots=True)
class DiffusionInfo:
    """One image's diffusion encoding (``b_value`` in s/mm², ``direction`` unit or None)."""

    b_value: float | None
    direction: tuple[float, float, float] | None
    frame: str | None  # PATIENT or IMAGE for ``direction``
    source: str  # "standard", "siemens", "ge", "philips" or "" (nothing found)


def _numbers(value: Any, kind: str) -> list[float]:
    """Decode a (possibly raw, implicit-VR) private value into floats."""
    if value is None:
        return []
    if isinstance(value, bytes):
        if kind == "FD":
            n = len(value) // 8
            return [float(v) for v in np.frombuffer(value[: n * 8], dtype="<f8")]
        if kind == "FL":
            n = len(value) // 4
            return [float(v) for v in np.frombuffer(value[: n * 4], dtype="<f4")]
        text = value.decode("ascii", "replace").strip("\x00 ")
        value = [t for t in text.split("\\") if t.strip()]
    if isinstance(value, str):
        value = [t for t in value.split("\\") if t.strip()]
    if not isinstance(value, list | tuple) and not hasattr(value, "__iter__"):
        value = [value]
    out: list[float] = []
    for item in value:
        try:
            out.append(float(item))
        except (TypeError, ValueError):
            return []
    return out


def _private(ds: Any, where: tuple[int, str, int], kind: str) -> list[float]:
    group, creator, offset = where
    try:
        block = ds.private_block(group, creator)
    except (KeyError, ValueError):
        return []
    if offset not in block:
        return []
    return _numbers(block[offset].value, kind)


def _unit(vector: Sequence[float]) -> tuple[float, float, float] | None:
    v = np.asarray(vector, dtype=np.float64)
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        return None
    norm = float(np.linalg.norm(v))
    if norm < 1e-6:
        return None
    return (float(v[0] / norm), float(v[1] / norm), float(v[2] / norm))


def _standard_direction(item: Any) -> tuple[float, float, float] | None:
    value = item.get("DiffusionGradientOrientation") if item is not None else None
    numbers = _numbers(value, "FD") if value is not None else []
    return _unit(numbers) if len(numbers) == 3 else None


def _is_epi(ds: Any) -> bool:
    value = ds.get("ScanningSequence")
    tokens = [value] if isinstance(value, str) else list(value or [])
    return any(str(t).strip().upper() == "EP" for t in tokens)


def diffusion_from_dataset(ds: Any, frame_groups: Any = None) -> DiffusionInfo:
    """The diffusion encoding of one classic image, or of one enhanced frame.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The header (classic) or the whole enhanced dataset.
    frame_groups : object, optional
        For an enhanced frame: a lookup ``get(sequence, keyword)`` over its functional groups
        (per-frame first, then shared); see :mod:`ingest.records`.
    """
    if frame_groups is not None:
        b = _numbers(frame_groups.get("MRDiffusionSequence", "DiffusionBValue"), "FD")
        seq = frame_groups.get("MRDiffusionSequence", "DiffusionGradientDirectionSequence")
        direction = _standard_direction(seq[0]) if seq else None
        if b:
            return DiffusionInfo(b[0], direction, PATIENT if direction else None, "standard")
        return DiffusionInfo(None, None, None, "")
    b = _numbers(ds.get("DiffusionBValue"), "FD")
    if b:
        direction = _standard_direction(ds)
        if direction is None:
            seq = ds.get("DiffusionGradientDirectionSequence")
            direction = _standard_direction(seq[0]) if seq else None
        if direction is not None or b[0] < B_TOL:
            return DiffusionInfo(b[0], direction, PATIENT if direction else None, "standard")
    b = _private(ds, SIEMENS_B, "IS")
    if b:
        d = _private(ds, SIEMENS_DIR, "FD")
        direction = _unit(d) if len(d) == 3 else None
        return DiffusionInfo(b[0], direction, PATIENT if direction else None, "siemens")
    # GE's (0043,xx39) is a general-purpose field: a b-value only in an echo-planar series
    b = _private(ds, GE_B, "IS") if _is_epi(ds) else []
    if b:
        comps = [_private(ds, where, "DS") for where in GE_DIR]
        direction = _unit([c[0] for c in comps]) if all(comps) else None
        return DiffusionInfo(b[0] % GE_FLAG_OFFSET, direction, IMAGE if direction else None, "ge")
    b = _private(ds, PHILIPS_B, "FL")
    if b:
        comps = [_private(ds, where, "FL") for where in PHILIPS_DIR]
        direction = _unit([c[0] for c in comps]) if all(comps) else None
        return DiffusionInfo(b[0], direction, PATIENT if direction else None, "philips")
    return DiffusionInfo(None, None, None, "")


# --------------------------------------------------------------------------------------------
# Volumes and tables


@dataclass(frozen=True, slots=True)
class DiffusionTable:
    """bval/bvec of a DWI NIfTI: one entry per volume (4th axis), in volume order."""

    bvals: tuple[float, ...]
    bvecs: tuple[tuple[float, float, float], ...]  # voxel frame, FSL/BIDS convention
    source: str

    def bval_text(self) -> str:
        return " ".join(_fmt(b) for b in self.bvals) + "\n"

    def bvec_text(self) -> str:
        rows = zip(*self.bvecs, strict=True) if self.bvecs else ((), (), ())
        return "".join(" ".join(_fmt(v) for v in row) + "\n" for row in rows)


def _fmt(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def volume_index(records: Sequence[InstanceRecord]) -> tuple[tuple[int, ...], list[int]]:
    """Which DWI volume each image belongs to.

    Images with the same position are told apart by their encoding (b-value, direction); the
    same encoding repeated at one position (e.g. several b = 0 images) is the n-th repeat,
    counted in acquisition order (InstanceNumber, then frame). Volumes are numbered in the
    order they were acquired (their first image's InstanceNumber/frame).

    Returns
    -------
    (volume of each record, index of one representative record per volume)
    """
    if any(r.diffusion_b_value is None for r in records):
        raise GeometryError("diffusion series with images that carry no b-value")
    normal = _normal(records[0])
    order = sorted(
        range(len(records)),
        key=lambda n: (records[n].instance_number or 0, records[n].frame_index or 0, n),
    )
    seen: dict[tuple[Any, ...], int] = defaultdict(int)
    keys: list[tuple[Any, ...]] = [()] * len(records)
    for n in order:
        r = records[n]
        position = round(float(np.dot(r.image_position_patient_mm or (0, 0, 0), normal)), 2)
        encoding = _encoding_key(r)
        repeat = seen[(position, encoding)]
        seen[(position, encoding)] += 1
        keys[n] = (encoding, repeat)
    first: dict[tuple[Any, ...], int] = {}
    for rank, n in enumerate(order):
        first.setdefault(keys[n], rank)
    ranked = sorted(first, key=lambda k: first[k])
    number = {k: i for i, k in enumerate(ranked)}
    representative: dict[int, int] = {}
    for n in order:
        representative.setdefault(number[keys[n]], n)
    return tuple(number[k] for k in keys), [representative[v] for v in range(len(ranked))]


def _encoding_key(r: InstanceRecord) -> tuple[Any, ...]:
    b = float(r.diffusion_b_value or 0.0)
    if b < B_TOL:
        return (0.0,)
    if r.diffusion_gradient is None:
        raise GeometryError(
            f"{r.path.name}: b = {b:g} s/mm² image without a gradient direction (a trace or "
            "derived image?): cannot write bvec"
        )
    return (round(b, 0), *(round(c, 3) for c in r.diffusion_gradient))


def _normal(r: InstanceRecord) -> Any:
    o = np.asarray(r.image_orientation_patient or (1, 0, 0, 0, 1, 0), dtype=np.float64)
    return np.cross(o[:3], o[3:])


def diffusion_table(representatives: Sequence[InstanceRecord], affine_ras: Any) -> DiffusionTable:
    """bval/bvec for volumes represented by one record each (volume order).

    Directions given in the patient frame are projected on the image axes (row direction,
    column direction, slice normal = the NIfTI i, j, k axes); the first component is negated
    when the affine's determinant is positive (FSL convention, required by BIDS).
    """
    affine = np.asarray(affine_ras, dtype=np.float64)
    flip_x = np.linalg.det(affine[:3, :3]) > 0
    bvals: list[float] = []
    bvecs: list[tuple[float, float, float]] = []
    sources = sorted({r.diffusion_source for r in representatives if r.diffusion_source})
    for r in representatives:
        b = float(r.diffusion_b_value or 0.0)
        if b < B_TOL or r.diffusion_gradient is None:
            bvals.append(0.0 if b < B_TOL else b)
            bvecs.append((0.0, 0.0, 0.0))
            continue
        g = np.asarray(r.diffusion_gradient, dtype=np.float64)
        if r.diffusion_gradient_frame == PATIENT:
            o = np.asarray(r.image_orientation_patient, dtype=np.float64)
            row, col = o[:3], o[3:]
            v = np.array([g @ row, g @ col, g @ np.cross(row, col)])
        elif r.diffusion_gradient_frame == IMAGE:
            v = g.copy()
        else:
            raise GeometryError(f"{r.path.name}: gradient direction in an unknown frame")
        if flip_x:
            v[0] = -v[0]
        v = v / np.linalg.norm(v)
        v[np.abs(v) < 1e-9] = 0.0
        bvals.append(b)
        bvecs.append((float(v[0]), float(v[1]), float(v[2])))
    return DiffusionTable(tuple(bvals), tuple(bvecs), "+".join(sources))
