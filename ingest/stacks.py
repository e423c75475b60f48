"""Split a series part that holds several stacks into one regular grid each (pure).

Scanners put several stacks in one SeriesInstanceUID: three orthogonal planes, or slabs of one
orientation with a gap between them (e.g. thigh and calf in one acquisition), or stacks with a
different field of view or matrix. ORMIR-MIDS has no convention for this; MyoVault writes one
NIfTI per stack with the BIDS ``chunk-<index>`` entity (BIDS ≥ 1.9 allows it for MRI:
"different regions of the same acquisition"), numbered 1..n by (orientation, position along
the slice normal).

Stacks are told apart by, in order: orientation, matrix (rows × columns), pixel spacing, then
gaps along the slice normal (a gap larger than 1.5 × the typical slice step starts a new slab).
Images at the same position with the same echo (repeats, interleaved acquisitions) are not
guessed apart: the part stays refused with the geometry error.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ingest.errors import GeometryError

if TYPE_CHECKING:
    from ingest.records import InstanceRecord

GAP_FACTOR = 1.5
POSITION_TOL_MM = 0.05


def _plane_key(r: InstanceRecord) -> tuple[object, ...]:
    orientation = tuple(round(v, 3) for v in (r.image_orientation_patient or ()))
    spacing = tuple(round(v, 4) for v in (r.pixel_spacing_mm or ()))
    return (orientation, r.rows, r.columns, spacing)


def _normal(r: InstanceRecord) -> np.ndarray:
    o = np.asarray(r.image_orientation_patient, dtype=np.float64)
    return np.cross(o[:3], o[3:])


def _slabs(records: Sequence[InstanceRecord]) -> list[list[InstanceRecord]]:
    """Split one plane group into slabs at gaps along the slice normal."""
    normal = _normal(records[0])
    distance = np.array([np.dot(r.image_position_patient_mm, normal) for r in records])
    levels = np.unique(np.round(distance / POSITION_TOL_MM) * POSITION_TOL_MM)
    if len(levels) < 3:
        return [list(records)]
    gaps = np.diff(levels)
    step = float(np.median(gaps))
    cuts = levels[1:][gaps > GAP_FACTOR * step]
    if len(cuts) == 0:
        return [list(records)]
    slab_of = np.searchsorted(cuts, distance + POSITION_TOL_MM / 2, side="right")
    groups: dict[int, list[InstanceRecord]] = defaultdict(list)
    for r, s in zip(records, slab_of, strict=True):
        groups[int(s)].append(r)
    return [groups[k] for k in sorted(groups)]


def split_stacks(records: Sequence[InstanceRecord]) -> list[tuple[InstanceRecord, ...]]:
    """The stacks of one series part, in a stable order; one stack when nothing splits it.

    Raises
    ------
    GeometryError
        When an image has no geometry (nothing can be split then).
    """
    for r in records:
        if r.image_orientation_patient is None or r.image_position_patient_mm is None:
            raise GeometryError(f"{r.path.name}: missing ImageOrientationPatient/Position")
    planes: dict[tuple[object, ...], list[InstanceRecord]] = defaultdict(list)
    for r in records:
        planes[_plane_key(r)].append(r)
    stacks: list[tuple[InstanceRecord, ...]] = []
    for key in sorted(planes, key=repr):
        for slab in _slabs(planes[key]):
            stacks.append(tuple(slab))
    return stacks
