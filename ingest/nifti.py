"""Stack geometry: DICOM images (LPS) → one regular NIfTI grid (RAS), and volume assembly.

Conventions
-----------
* DICOM pixel ``(r, c)`` of an image with ``ImagePositionPatient`` ``P``,
  ``ImageOrientationPatient`` ``(X, Y)`` (row and column direction cosines) and ``PixelSpacing``
  ``(Δr, Δc)`` sits at ``P + c·Δc·X + r·Δr·Y`` in LPS millimetres (PS3.3 C.7.6.2.1.1).
* NIfTI voxel ``(i, j, k, e)``: ``i`` = DICOM column, ``j`` = DICOM row, ``k`` = slice in
  ascending order along the slice normal ``X × Y``, ``e`` = echo in ascending echo time.
  The array stored in NIfTI is therefore the DICOM pixel array transposed, per slice.
* The affine maps ``(i, j, k)`` to RAS millimetres: ``diag(-1, -1, 1) @`` the LPS affine.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ingest.errors import GeometryError
from ingest.records import InstanceRecord

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
ORIENTATION_TOL = 1e-4
POSITION_TOL_MM = 0.05
SPACING_REL_TOL = 0.01


@dataclass(frozen=True, slots=True)
class StackGeometry:
    """Where every image of a stack goes in the output array, and the grid's affine.

    Attributes
    ----------
    shape : tuple of int
        ``(n_columns, n_rows, n_slices, n_echoes)``.
    echo_times_ms : tuple
        Echo time of each echo index (ascending); ``(None,)`` when the images carry none.
        For a stack built with explicit ``volumes``: the echo time of each volume.
    slots : tuple of (int, int)
        ``(slice k, echo e)`` for each record of ``records``, same order.
    affine_ras : tuple of tuple of float
        4×4 voxel ``(i, j, k)`` → RAS mm.
    slice_spacing_mm : float
        Distance between slice centres along the slice normal.
    """

    records: tuple[InstanceRecord, ...]
    shape: tuple[int, int, int, int]
    echo_times_ms: tuple[float | None, ...]
    slots: tuple[tuple[int, int], ...]
    affine_ras: tuple[tuple[float, ...], ...]
    slice_spacing_mm: float

    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """The 4×4 RAS affine as a new array."""
        return np.array(self.affine_ras, dtype=np.float64)

    @property
    def is_orthogonal(self) -> bool:
        """True when the slice axis is perpendicular to the image plane (no shear)."""
        m = self.affine[:3, :3]
        unit = m / np.linalg.norm(m, axis=0)
        return bool(np.allclose(unit.T @ unit, np.eye(3), atol=1e-4))


def _require(records: Sequence[InstanceRecord]) -> None:
    for r in records:
        missing = [
            name
            for name, value in (
                ("ImagePositionPatient", r.image_position_patient_mm),
                ("ImageOrientationPatient", r.image_orientation_patient),
                ("PixelSpacing", r.pixel_spacing_mm),
            )
            if value is None
        ]
        if missing:
            frame = "" if r.frame_index is None else f" frame {r.frame_index + 1}"
            where = r.path.name + frame
            raise GeometryError(f"{where}: missing {', '.join(missing)}")
        if r.samples_per_pixel != 1:
            raise GeometryError(f"{r.path.name}: {r.samples_per_pixel} samples per pixel (colour)")


def _cluster(values: npt.NDArray[np.float64], tol: float) -> npt.NDArray[np.intp]:
    """Index of the cluster of each value; clusters are runs of sorted values closer than tol."""
    order = np.argsort(values, kind="stable")
    labels = np.empty(len(values), dtype=np.intp)
    current: int = 0
    previous = values[order[0]]
    for idx in order:
        if values[idx] - previous > tol:
            current += 1
        labels[idx] = current
        previous = values[idx]
    return labels


def stack_geometry(
    records: Sequence[InstanceRecord], *, volumes: Sequence[int] | None = None
) -> StackGeometry:
    """Place a stack of 2D images (one series part) on one regular 4D grid.

    Parameters
    ----------
    records : sequence of InstanceRecord
        All images of one output file (any order).
    volumes : sequence of int, optional
        The 4th-axis index of each record (e.g. the DWI volume, see
        :func:`ingest.diffusion.volume_index`); by default the 4th axis is the echo, in
        ascending echo time.

    Returns
    -------
    StackGeometry

    Raises
    ------
    GeometryError
        Missing geometry, differing orientation/size/spacing, duplicate or missing
        (slice, echo) images, non-collinear or unevenly spaced slices.
    """
    if not records:
        raise GeometryError("no images")
    _require(records)
    first = records[0]
    orientation = np.array(first.image_orientation_patient, dtype=np.float64)
    spacing = np.array(first.pixel_spacing_mm, dtype=np.float64)
    for r in records:
        r_orientation = np.array(r.image_orientation_patient, dtype=np.float64)
        r_spacing = np.array(r.pixel_spacing_mm, dtype=np.float64)
        if (r.rows, r.columns) != (first.rows, first.columns):
            raise GeometryError(
                f"image size differs within the stack: {r.rows}×{r.columns} vs "
                f"{first.rows}×{first.columns}"
            )
        if not np.allclose(r_orientation, orientation, atol=ORIENTATION_TOL):
            raise GeometryError("ImageOrientationPatient differs within the stack")
        if not np.allclose(r_spacing, spacing, rtol=1e-4, atol=1e-5):
            raise GeometryError("PixelSpacing differs within the stack")
    row_dir, col_dir = orientation[:3], orientation[3:]
    if not (
        abs(np.linalg.norm(row_dir) - 1) < 1e-3
        and abs(np.linalg.norm(col_dir) - 1) < 1e-3
        and abs(row_dir @ col_dir) < 1e-3
    ):
        raise GeometryError("ImageOrientationPatient is not two orthonormal vectors")
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)

    times = [r.echo_time_ms for r in records]
    if any(t is None for t in times) and not all(t is None for t in times):
        raise GeometryError("EchoTime present on some images and missing on others")
    echo_values: list[float | None]
    if volumes is not None:
        if len(volumes) != len(records):
            raise GeometryError("one volume index per image is needed")
        echo_index = np.asarray(volumes, dtype=np.intp)
        n_volumes = int(echo_index.max()) + 1
        by_volume: dict[int, float | None] = {}
        for n, v in enumerate(echo_index):
            by_volume.setdefault(int(v), records[n].echo_time_ms)
        if sorted(by_volume) != list(range(n_volumes)):
            raise GeometryError("volume indices are not contiguous")
        echo_values = [by_volume[v] for v in range(n_volumes)]
    elif times[0] is None:
        echo_index = np.zeros(len(records), dtype=np.intp)
        echo_values = [None]
    else:
        te = np.array(times, dtype=np.float64)
        echo_index = _cluster(te, 1e-3)
        echo_values = [float(te[echo_index == e].mean()) for e in range(echo_index.max() + 1)]

    positions = np.array([r.image_position_patient_mm for r in records], dtype=np.float64)
    distance = positions @ normal
    slice_index = _cluster(distance, POSITION_TOL_MM)
    n_slices = int(slice_index.max()) + 1
    n_echoes = len(echo_values)

    occupancy: dict[tuple[int, int], list[int]] = defaultdict(list)
    for n, (k_n, e_n) in enumerate(zip(slice_index, echo_index, strict=True)):
        occupancy[(int(k_n), int(e_n))].append(n)
    for (k, e), members in occupancy.items():
        if len(members) > 1:
            names = ", ".join(sorted({records[m].path.name for m in members})[:3])
            raise GeometryError(
                f"{len(members)} images at slice {k + 1} (position {distance[members[0]]:.2f} mm) "
                f"echo {e + 1} (TE {echo_values[e]} ms): {names} — repeated acquisitions or "
                "mixed stacks in one series"
            )
    if len(occupancy) != n_slices * n_echoes:
        missing = [
            (k + 1, e + 1)
            for k in range(n_slices)
            for e in range(n_echoes)
            if (k, e) not in occupancy
        ]
        raise GeometryError(
            f"incomplete stack: {n_slices} slices × {n_echoes} echoes but "
            f"{len(occupancy)} images; missing (slice, echo) {missing[:5]}"
        )

    slice_origin = np.empty((n_slices, 3))
    for k in range(n_slices):
        members = [occupancy[(k, e)][0] for e in range(n_echoes)]
        pts = positions[members]
        if np.abs(pts - pts[0]).max() > POSITION_TOL_MM:
            raise GeometryError(f"slice {k + 1}: echoes disagree on ImagePositionPatient")
        slice_origin[k] = pts[0]

    if n_slices > 1:
        step = (slice_origin[-1] - slice_origin[0]) / (n_slices - 1)
        step_mm = float(step @ normal)
        expected = slice_origin[0] + np.outer(np.arange(n_slices), step)
        deviation = float(np.linalg.norm(slice_origin - expected, axis=1).max())
        if deviation > POSITION_TOL_MM + SPACING_REL_TOL * step_mm:
            gaps = np.diff(slice_origin @ normal)
            raise GeometryError(
                f"slices are not evenly spaced on one line (deviation {deviation:.3f} mm; "
                f"gaps {np.round(gaps, 3).tolist()[:8]} mm); cannot be one NIfTI grid"
            )
    else:
        thickness = first.spacing_between_slices_mm or first.slice_thickness_mm
        if not thickness:
            raise GeometryError("single slice without SliceThickness/SpacingBetweenSlices")
        step_mm = float(thickness)
        step = normal * step_mm

    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing[1]
    lps[:3, 1] = col_dir * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = slice_origin[0]
    ras = LPS_TO_RAS @ lps
    return StackGeometry(
        records=tuple(records),
        shape=(first.columns, first.rows, n_slices, n_echoes),
        echo_times_ms=tuple(echo_values),
        slots=tuple((int(k), int(e)) for k, e in zip(slice_index, echo_index, strict=True)),
        affine_ras=tuple(tuple(float(v) for v in row) for row in ras),
        slice_spacing_mm=step_mm,
    )


def output_dtype(records: Sequence[InstanceRecord], stored: np.dtype) -> np.dtype:
    """Keep the stored integer type when no rescale applies; float32 otherwise."""
    identity = all(r.rescale_slope == 1.0 and r.rescale_intercept == 0.0 for r in records)
    return np.dtype(stored) if identity else np.dtype(np.float32)


def assemble_volume(
    geometry: StackGeometry,
    read_pixels: Callable[[InstanceRecord], npt.NDArray[np.generic]],
) -> npt.NDArray[np.generic]:
    """Fill the output array image by image.

    Parameters
    ----------
    geometry : StackGeometry
    read_pixels : callable
        Returns the stored pixel array of one record, shape ``(rows, columns)``, before
        rescale.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_columns, n_rows, n_slices)`` for one echo, else
        ``(n_columns, n_rows, n_slices, n_echoes)``; rescale slope/intercept applied.
    """
    volume: npt.NDArray[np.generic] | None = None
    for record, (k, e) in zip(geometry.records, geometry.slots, strict=True):
        pixels = read_pixels(record)
        if pixels.shape != (record.rows, record.columns):
            raise GeometryError(
                f"{record.path.name}: pixel array {pixels.shape} does not match Rows/Columns "
                f"({record.rows}, {record.columns})"
            )
        if volume is None:
            # Fortran order: each DICOM image (C order) transposed is one contiguous block,
            # and NIfTI stores Fortran order, so nibabel writes without reordering.
            volume = np.zeros(
                geometry.shape, dtype=output_dtype(geometry.records, pixels.dtype), order="F"
            )
        elif volume.dtype != np.float32 and pixels.dtype != volume.dtype:
            # e.g. signed and unsigned images in one stack: widen, never wrap around
            volume = volume.astype(np.result_type(volume.dtype, pixels.dtype), order="F")
        if volume.dtype == np.float32:
            volume[:, :, k, e] = (
                pixels.astype(np.float32) * np.float32(record.rescale_slope)
                + np.float32(record.rescale_intercept)
            ).T
        else:
            volume[:, :, k, e] = pixels.T
    if volume is None:
        raise GeometryError("no images")
    return volume[..., 0] if geometry.shape[3] == 1 else volume
