"""Plan, then convert: scanned series → ORMIR-MIDS NIfTI + JSON sidecars + participant tables.

:func:`plan_conversion` is pure (headers in, plan out): it classifies every series, splits it
into image parts, checks each stack's geometry, names the output files and builds sidecars and
participant/session rows. :func:`convert` then reads pixels and writes files atomically. The
input must be de-identified (enforced by :func:`ingest.scan.scan_folder`); no patient sidecar
(``_patient.json``) is ever written, and sidecars are built from an allow-list of acquisition
attributes only.

Where MyoVault goes beyond the ``ormir-mids`` package's conventions (0.1.11):

* Dixon images: ``_part-water_DIXON``, ``_part-fat_DIXON``, ``_part-inphase_DIXON``,
  ``_part-outphase_DIXON`` (ormir-mids has no Dixon converter).
* Single-echo anatomy: ``_T1w``, ``_T2w`` and ``_acq-stir_T2w`` (ormir-mids has no generic MR
  converter); BIDS suffixes and ``acq`` entity.
* Several series of the same kind in one visit get a BIDS ``run-<n>`` entity (by SeriesNumber).
* ``participants.tsv`` (participant_id, sex) and ``sub-<id>/sub-<id>_sessions.tsv``
  (session_id, age, days_from_first_visit) as in BIDS; ormir-mids writes a per-file
  ``_patient.json`` with identifiers instead, which MyoVault never writes.
* Sidecar key ``MyoVault`` records the classification rule and converter version.
* Diffusion: ``mr-dwi/…_dwi.nii.gz`` with BIDS ``.bval``/``.bvec`` (:mod:`ingest.diffusion`);
  ormir-mids has no diffusion convention.
* Several stacks in one series: one NIfTI per stack with the BIDS ``chunk-<n>`` entity
  (:mod:`ingest.stacks`); ormir-mids has none.
* Phase parts in radians with ``Units`` in the sidecar (:mod:`ingest.phase`); ormir-mids scales
  GE phase as unsigned 12-bit only.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom

from ingest.classify import (
    Classification,
    OutputName,
    RuleTable,
    classify_series,
    load_rule_table,
    split_by_part,
)
from ingest.diffusion import DiffusionTable, diffusion_table, volume_index
from ingest.errors import ConversionError, GeometryError, IngestError
from ingest.nifti import StackGeometry, assemble_volume, stack_geometry
from ingest.phase import PhaseScaling, phase_scaling
from ingest.records import InstanceRecord, SeriesRecord
from ingest.scan import IssueKind, ScanResult
from ingest.stacks import split_stacks

CONVERTER_NAME = "myovault.ingest"
CONVERTER_VERSION = "1"
PULSE_SEQUENCE_TYPE = {
    "mese": "Multi-echo Spin Echo",
    "megre": "Multi-echo Gradient Echo",
    "dixon": "Dixon",
    "t1w": "T1-weighted",
    "t2w": "T2-weighted",
    "stir": "Short-tau inversion recovery",
    "dti": "Diffusion-weighted",
}
NA = "n/a"


@dataclass(frozen=True, slots=True)
class NotConvertedItem:
    """A series or file that produced no output, and why (safe to show: no identifiers)."""

    what: str
    kind: IssueKind
    reason: str
    paths: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """One ORMIR-MIDS NIfTI + JSON pair to write."""

    relative_stem: str  # e.g. "sub-P1/ses-1/mr-anat/sub-P1_ses-1_MEGRE"
    participant_id: str
    session_id: str
    series_instance_uid: str
    series_label: str
    classification: Classification
    part: str
    geometry: StackGeometry
    sidecar: Mapping[str, Any] = field(hash=False)
    diffusion: DiffusionTable | None = None  # DWI: written as .bval/.bvec beside the NIfTI
    phase: PhaseScaling | None = None  # phase part: stored values → radians

    @property
    def n_images(self) -> int:
        return len(self.geometry.records)


@dataclass(frozen=True, slots=True)
class ParticipantRow:
    participant_id: str  # "sub-<label>"
    sex: str  # M / F / O / n/a


@dataclass(frozen=True, slots=True)
class SessionRow:
    participant_id: str
    session_id: str  # "ses-<n>"
    age_years: float | None
    days_from_first_visit: int | None


@dataclass(frozen=True, slots=True)
class ConversionPlan:
    files: tuple[PlannedFile, ...]
    not_converted: tuple[NotConvertedItem, ...]
    participants: tuple[ParticipantRow, ...]
    sessions: tuple[SessionRow, ...]
    rules_version: str


@dataclass(frozen=True, slots=True)
class ConvertedFile:
    nifti_path: Path
    sidecar_path: Path
    participant_id: str
    session_id: str
    series_instance_uid: str
    label: str
    part: str
    shape: tuple[int, ...]
    n_images: int
    sha256: str  # of the NIfTI file as written
    bval_path: Path | None = None
    bvec_path: Path | None = None


@dataclass(frozen=True, slots=True)
class ConversionResult:
    files: tuple[ConvertedFile, ...]
    failed: tuple[NotConvertedItem, ...]  # planned files that could not be written
    participants_tsv: Path | None
    sessions_tsv: tuple[Path, ...]


# --------------------------------------------------------------------------------------------
# Pure helpers


def bids_label(patient_id: str) -> str:
    """The BIDS label (letters and digits only) of a pseudonymous PatientID; '' if none."""
    return re.sub(r"[^A-Za-z0-9]", "", patient_id)


def parse_age_years(age: str | None) -> float | None:
    """DICOM AS (``nnnD|W|M|Y``) → years; None when absent or malformed."""
    if not age:
        return None
    match = re.fullmatch(r"(\d{1,3})([DWMY])", age.strip().upper())
    if not match:
        return None
    value = int(match.group(1))
    return {
        "Y": float(value),
        "M": value / 12.0,
        "W": value * 7 / 365.25,
        "D": value / 365.25,
    }[match.group(2)]


def parse_da(value: str | None) -> date | None:
    """DICOM DA ``YYYYMMDD`` → date; None when absent or malformed."""
    if not value or not re.fullmatch(r"\d{8}", value.strip()):
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None


def output_stem(
    participant: str,
    session: str,
    suffix: str,
    *,
    acq: str | None = None,
    run: int | None = None,
    part: str | None = None,
    chunk: int | None = None,
    datatype: str = "mr-anat",
) -> str:
    """``sub-<p>/ses-<n>/<datatype>/sub-<p>_ses-<n>[_acq-][_run-][_part-][_chunk-]_<SUFFIX>``."""
    name = f"sub-{participant}_ses-{session}"
    if acq:
        name += f"_acq-{acq}"
    if run is not None:
        name += f"_run-{run}"
    if part:
        name += f"_part-{part}"
    if chunk is not None:
        name += f"_chunk-{chunk}"
    return f"sub-{participant}/ses-{session}/{datatype}/{name}_{suffix}"


def _unique(values: Sequence[Any]) -> Any:
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else distinct


def build_sidecar(
    geometry: StackGeometry,
    classification: Classification,
    part: str,
    *,
    phase: PhaseScaling | None = None,
    diffusion: DiffusionTable | None = None,
    chunk: int | None = None,
) -> dict[str, Any]:
    """Acquisition parameters of one output file (allow-list; never any patient attribute)."""
    records = geometry.records
    first = records[0]
    label = classification.label
    times = [t for t in geometry.echo_times_ms if t is not None]
    if diffusion is not None:  # the 4th axis is the diffusion volume, not the echo
        times = sorted({round(t, 4) for t in times})
    sidecar: dict[str, Any] = {}
    if times:
        sidecar["EchoTime"] = [round(t, 4) for t in times] if len(times) > 1 else round(times[0], 4)
    values = {
        "RepetitionTime": _unique([r.repetition_time_ms for r in records]),
        "InversionTime": _unique([r.inversion_time_ms for r in records]),
        "RefocusingFlipAngle" if label == "mese" else "FlipAngle": _unique(
            [r.flip_angle_deg for r in records]
        ),
        "MagneticFieldStrength": first.magnetic_field_strength_t,
        "Manufacturer": first.manufacturer or None,
        "ManufacturersModelName": first.manufacturer_model_name,  # BIDS spelling
        "ImagingFrequency": first.imaging_frequency_mhz,
        "PixelBandwidth": first.pixel_bandwidth_hz,
        "ScanningSequence": "\\".join(first.scanning_sequence) or None,
        "SequenceVariant": "\\".join(first.sequence_variant) or None,
        "ScanOptions": "\\".join(first.scan_options) or None,
        "SequenceName": first.sequence_name,
        "MRAcquisitionType": first.mr_acquisition_type,
        "PulseSequenceType": PULSE_SEQUENCE_TYPE.get(label),
        "ImageType": list(first.image_type) or None,
        "ImagePart": part,
        "SeriesNumber": first.series_number,
        "SeriesDescription": first.series_description,
        "ProtocolName": first.protocol_name,
        "PhaseEncodingDirection": first.phase_encoding_direction,
        "SliceThickness": first.slice_thickness_mm,
        "SpacingBetweenSlices": round(geometry.slice_spacing_mm, 4),
        "PixelSpacing": list(first.pixel_spacing_mm) if first.pixel_spacing_mm else None,
    }
    sidecar.update({k: v for k, v in values.items() if v is not None})
    if part == "phase":
        sidecar["Units"] = "rad" if phase is not None else "arbitrary"
    extra: dict[str, Any] = {}
    if phase is not None:
        extra["PhaseScaling"] = {"Rule": phase.rule, "Offset": phase.offset, "Scale": phase.scale}
    if diffusion is not None:
        extra["DiffusionSource"] = diffusion.source
        extra["DiffusionVolumes"] = len(diffusion.bvals)
    if chunk is not None:
        extra["Chunk"] = chunk
        extra["ChunkNote"] = "one of several stacks of one DICOM series (BIDS chunk entity)"
    sidecar["MyoVault"] = {
        "Classification": label,
        "ClassificationRule": classification.rule_id,
        "ClassificationRulesVersion": classification.rules_version,
        "Converter": CONVERTER_NAME,
        "ConverterVersion": CONVERTER_VERSION,
        "EnhancedMR": first.is_enhanced,
        "NumberOfImages": len(records),
        **extra,
    }
    return sidecar


# --------------------------------------------------------------------------------------------
# Planning


def _sessions(
    series: Sequence[SeriesRecord],
) -> tuple[dict[tuple[str, str], str], list[SessionRow], dict[str, str]]:
    """Number each participant's visits by date; compute age and days from first visit."""
    visits: dict[str, dict[str, InstanceRecord]] = defaultdict(dict)
    for s in series:
        visits[s.patient_id].setdefault(s.session_key, s.first)
    numbering: dict[tuple[str, str], str] = {}
    rows: list[SessionRow] = []
    sex: dict[str, str] = {}
    for patient, by_key in visits.items():
        ordered = sorted(
            by_key.items(),
            key=lambda kv: (kv[1].study_date or "99999999", kv[1].study_time or "", kv[0]),
        )
        dates = [parse_da(r.study_date) for _, r in ordered]
        first_date = min((d for d in dates if d is not None), default=None)
        sexes = [
            (r.patient_sex or "").upper()
            for _, r in ordered
            if (r.patient_sex or "").upper() in {"M", "F", "O"}
        ]
        sex[patient] = sexes[0] if sexes else NA
        for n, ((key, record), day) in enumerate(zip(ordered, dates, strict=True), start=1):
            numbering[(patient, key)] = str(n)
            rows.append(
                SessionRow(
                    participant_id=patient,
                    session_id=str(n),
                    age_years=parse_age_years(record.patient_age),
                    days_from_first_visit=(
                        (day - first_date).days if day is not None and first_date else None
                    ),
                )
            )
    return numbering, rows, sex


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


Stack = tuple[StackGeometry, DiffusionTable | None, int | None]


@dataclass(frozen=True, slots=True)
class _Candidate:
    series: SeriesRecord
    classification: Classification
    part: str
    stack: Stack
    session: str
    name: OutputName


def stack_plans(label: str, records: Sequence[InstanceRecord]) -> list[Stack]:
    """The grids one series part becomes: ``(geometry, diffusion table, chunk)`` each.

    * ``dti``: one 4D grid whose 4th axis is the diffusion volume, with its bval/bvec table;
    * otherwise one grid (echoes on the 4th axis); when the images do not fit one grid, the
      part is split into stacks (:func:`ingest.stacks.split_stacks`) numbered as chunks 1..n.

    Raises
    ------
    GeometryError
        When the images (or one of the stacks) cannot be placed on a regular grid.
    """
    if label == "dti":
        volumes, representatives = volume_index(records)
        geometry = stack_geometry(records, volumes=volumes)
        table = diffusion_table([records[n] for n in representatives], geometry.affine)
        return [(geometry, table, None)]
    try:
        return [(stack_geometry(records), None, None)]
    except GeometryError as first_error:
        stacks = split_stacks(records)
        if len(stacks) < 2:
            raise
        out: list[Stack] = []
        for n, stack in enumerate(stacks, start=1):
            try:
                out.append((stack_geometry(stack), None, n))
            except GeometryError as exc:
                raise GeometryError(
                    f"{first_error}; split into {len(stacks)} stacks, stack {n} still fails: {exc}"
                ) from exc
        return out


def plan_conversion(scan: ScanResult, *, table: RuleTable | None = None) -> ConversionPlan:
    """Decide which series become which ORMIR-MIDS files (no pixels read, nothing written).

    Every input ends up either in ``files`` or in ``not_converted`` with a reason: scan issues,
    localizers (skipped), unclassified or unsupported series, geometry errors, participants
    whose PatientID cannot be a BIDS label.
    """
    rules = table or load_rule_table()
    not_converted: list[NotConvertedItem] = [
        NotConvertedItem(
            _relative(i.path, scan.root),
            i.kind,
            i.reason.removeprefix(f"{i.path.name}: "),
            (i.path,),
        )
        for i in scan.issues
    ]
    labels: dict[str, str] = {}
    by_label: dict[str, set[str]] = defaultdict(set)
    for patient in scan.patient_ids:
        by_label[bids_label(patient)].add(patient)
    for label, patients in by_label.items():
        for patient in patients:
            if label and len(patients) == 1:
                labels[patient] = label
    numbering, session_rows, sex = _sessions(scan.series)

    candidates: list[_Candidate] = []
    for series in scan.series:
        what = series.label
        if series.patient_id not in labels:
            not_converted.append(
                NotConvertedItem(
                    what,
                    IssueKind.REFUSED,
                    "PatientID cannot be turned into a unique BIDS participant label "
                    "(letters and digits only)",
                    series.paths,
                )
            )
            continue
        classification = classify_series(series, rules)
        if classification.label in rules.not_converted:
            entry = rules.not_converted[classification.label]
            reason = entry.reason
            if classification.label == "other":
                reason = f"{entry.reason}: {classification.reason}"
            not_converted.append(
                NotConvertedItem(what, IssueKind(entry.kind), reason, series.paths)
            )
            continue
        outputs = rules.outputs[classification.label]
        for part, records in split_by_part(series, rules).items():
            name = outputs.get(part)
            if name is None:
                not_converted.append(
                    NotConvertedItem(
                        f"{what} part {part}",
                        IssueKind.REFUSED,
                        f"no ORMIR-MIDS name for {classification.label} part {part}",
                        tuple(dict.fromkeys(r.path for r in records)),
                    )
                )
                continue
            try:
                stacks = stack_plans(classification.label, records)
            except GeometryError as exc:
                not_converted.append(
                    NotConvertedItem(
                        f"{what} part {part}",
                        IssueKind.REFUSED,
                        f"geometry: {exc}",
                        tuple(dict.fromkeys(r.path for r in records)),
                    )
                )
                continue
            session = numbering[(series.patient_id, series.session_key)]
            for stack in stacks:
                candidates.append(_Candidate(series, classification, part, stack, session, name))

    # run-<n> when one visit holds several series giving the same name (acq, part, suffix);
    # runs are numbered by SeriesNumber, so separate magnitude and phase series of one
    # acquisition stay unnumbered, and two acquisitions pair up run by run.
    groups: dict[tuple[str, str, OutputName], dict[str, SeriesRecord]] = defaultdict(dict)
    for c in candidates:
        groups[(c.series.patient_id, c.session, c.name)].setdefault(
            c.series.series_instance_uid, c.series
        )
    runs: dict[tuple[str, str, OutputName], int | None] = {}
    for (_patient, session, name), by_uid in groups.items():
        members = sorted(
            by_uid.values(),
            key=lambda s: (
                s.series_number if s.series_number is not None else -1,
                s.series_instance_uid,
            ),
        )
        for n, s in enumerate(members, start=1):
            runs[(s.series_instance_uid, session, name)] = n if len(members) > 1 else None

    files: list[PlannedFile] = []
    for c in candidates:
        participant = labels[c.series.patient_id]
        geometry, diffusion, chunk = c.stack
        stem = output_stem(
            participant,
            c.session,
            c.name.suffix,
            acq=c.name.acq,
            run=runs[(c.series.series_instance_uid, c.session, c.name)],
            part=c.name.part,
            chunk=chunk,
            datatype=c.name.datatype,
        )
        phase = phase_scaling(geometry.records) if c.part == "phase" else None
        files.append(
            PlannedFile(
                relative_stem=stem,
                participant_id=f"sub-{participant}",
                session_id=f"ses-{c.session}",
                series_instance_uid=c.series.series_instance_uid,
                series_label=c.series.label,
                classification=c.classification,
                part=c.part,
                geometry=geometry,
                sidecar=build_sidecar(
                    geometry,
                    c.classification,
                    c.part,
                    phase=phase,
                    diffusion=diffusion,
                    chunk=chunk,
                ),
                diffusion=diffusion,
                phase=phase,
            )
        )
    used = {(f.participant_id, f.session_id) for f in files}
    participants = tuple(
        ParticipantRow(f"sub-{labels[p]}", sex[p])
        for p in sorted(labels)
        if any(f.participant_id == f"sub-{labels[p]}" for f in files)
    )
    sessions = tuple(
        SessionRow(
            f"sub-{labels[r.participant_id]}",
            f"ses-{r.session_id}",
            r.age_years,
            r.days_from_first_visit,
        )
        for r in session_rows
        if r.participant_id in labels
        and (f"sub-{labels[r.participant_id]}", f"ses-{r.session_id}") in used
    )
    return ConversionPlan(
        files=tuple(files),
        not_converted=tuple(not_converted),
        participants=participants,
        sessions=sessions,
        rules_version=rules.version,
    )


# --------------------------------------------------------------------------------------------
# Writing


_NATIVE_DTYPES: dict[tuple[int, int], np.dtype] = {
    (8, 0): np.dtype("u1"),
    (8, 1): np.dtype("i1"),
    (16, 0): np.dtype("<u2"),
    (16, 1): np.dtype("<i2"),
    (32, 0): np.dtype("<u4"),
    (32, 1): np.dtype("<i4"),
}


def native_dtype(record: InstanceRecord) -> np.dtype | None:
    """The numpy dtype to read stored pixels directly, or None when pydicom must decode them
    (compressed/big-endian data, colour, or signed values narrower than their container,
    which need sign extension)."""
    location = record.pixel_location
    if location is None or location.offset is None or record.samples_per_pixel != 1:
        return None
    if record.pixel_representation == 1 and record.bits_stored != record.bits_allocated:
        return None
    return _NATIVE_DTYPES.get((record.bits_allocated, record.pixel_representation))


class PixelReader:
    """Reads one image's stored pixels (before rescale), shape ``(rows, columns)``.

    Native little-endian data are read straight from the offset found by the scan (no second
    header parse); anything else is decoded with pydicom, keeping the last decoded file (the
    frames of one file are adjacent in a stack). A file whose size or modification time changed
    since the scan is refused.
    """

    def __init__(self) -> None:
        self._path: Path | None = None
        self._pixels: npt.NDArray[np.generic] | None = None
        self._sop: str = ""

    def __call__(self, record: InstanceRecord) -> npt.NDArray[np.generic]:
        location = record.pixel_location
        if location is not None:
            stat = record.path.stat()
            if (stat.st_size, stat.st_mtime_ns) != (location.file_size, location.file_mtime_ns):
                raise ConversionError(f"{record.path.name} changed since it was scanned")
        dtype = native_dtype(record)
        if dtype is not None and location is not None and location.offset is not None:
            count = record.rows * record.columns
            offset = location.offset + (record.frame_index or 0) * count * dtype.itemsize
            pixels = np.fromfile(record.path, dtype=dtype, count=count, offset=offset)
            if pixels.size != count:
                raise ConversionError(f"{record.path.name}: pixel data shorter than expected")
            return pixels.reshape(record.rows, record.columns)
        return self._decoded(record)

    def _decoded(self, record: InstanceRecord) -> npt.NDArray[np.generic]:
        if record.path != self._path or self._pixels is None:
            ds = pydicom.dcmread(record.path)
            self._sop = str(ds.get("SOPInstanceUID", ""))
            self._pixels = ds.pixel_array
            self._path = record.path
        if self._sop != record.sop_instance_uid:
            raise ConversionError(f"{record.path.name} changed since it was scanned")
        pixels = self._pixels
        if record.frame_index is None or (pixels.ndim == 2 and record.frame_index == 0):
            return pixels
        return pixels[record.frame_index]


def _tmp_name(path: Path) -> Path:
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    stem = path.name[: -len(suffix)]
    return path.with_name(f".{stem}.partial-{os.getpid()}{suffix}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        for chunk in iter(lambda: fp.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def nifti_image(volume: npt.NDArray[np.generic], geometry: StackGeometry) -> nib.Nifti1Image:
    """A NIfTI-1 image with scanner-space sform (and qform when the grid is not sheared)."""
    affine = geometry.affine
    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_sform(affine, code="scanner")
    if geometry.is_orthogonal:
        image.set_qform(affine, code="scanner")
    else:
        image.set_qform(None, code="unknown")
    return image


def _write_tsv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]], key: int) -> None:
    """Write (merging with an existing file on column ``key``) atomically."""
    merged: dict[str, Sequence[str]] = {}
    if path.exists():
        with path.open(newline="", encoding="utf-8") as fp:
            reader = csv.reader(fp, delimiter="\t")
            existing_header = next(reader, None)
            if existing_header is not None and list(existing_header) != list(header):
                raise ConversionError(f"{path.name} exists with different columns")
            for row in reader:
                if row:
                    merged[row[key]] = row
    for new_row in rows:
        merged[new_row[key]] = list(new_row)
    tmp = _tmp_name(path)
    with tmp.open("w", newline="", encoding="utf-8") as fp:
        writer = csv.writer(fp, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        for k in sorted(merged):
            writer.writerow(merged[k])
    os.replace(tmp, path)


def _fmt(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return NA
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")


def write_tables(plan: ConversionPlan, dst_root: Path) -> tuple[Path | None, tuple[Path, ...]]:
    """``participants.tsv`` at the root and ``sub-*/sub-*_sessions.tsv`` (merged if present)."""
    if not plan.participants:
        return None, ()
    participants = dst_root / "participants.tsv"
    _write_tsv(
        participants,
        ("participant_id", "sex"),
        [(p.participant_id, p.sex) for p in plan.participants],
        key=0,
    )
    written: list[Path] = []
    by_subject: dict[str, list[SessionRow]] = defaultdict(list)
    for row in plan.sessions:
        by_subject[row.participant_id].append(row)
    for subject, rows in sorted(by_subject.items()):
        path = dst_root / subject / f"{subject}_sessions.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_tsv(
            path,
            ("session_id", "age", "days_from_first_visit"),
            [(r.session_id, _fmt(r.age_years), _fmt(r.days_from_first_visit)) for r in rows],
            key=0,
        )
        written.append(path)
    return participants, tuple(written)


def convert_file(
    planned: PlannedFile, dst_root: Path, *, overwrite: bool = False, reader: Any = None
) -> ConvertedFile:
    """Write one planned NIfTI + JSON pair atomically (temp files, sidecar renamed first)."""
    nifti_path = dst_root / f"{planned.relative_stem}.nii.gz"
    sidecar_path = dst_root / f"{planned.relative_stem}.json"
    if not overwrite and (nifti_path.exists() or sidecar_path.exists()):
        raise ConversionError(f"{nifti_path.relative_to(dst_root)} already exists")
    volume = assemble_volume(planned.geometry, reader or PixelReader())
    if planned.phase is not None:
        volume = to_radians(volume, planned.phase)
    nifti_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_nifti, tmp_json = _tmp_name(nifti_path), _tmp_name(sidecar_path)
    tables: list[tuple[Path, Path, str]] = []
    if planned.diffusion is not None:
        for ext, text in (
            (".bval", planned.diffusion.bval_text()),
            (".bvec", planned.diffusion.bvec_text()),
        ):
            final = dst_root / f"{planned.relative_stem}{ext}"
            tables.append((_tmp_name(final), final, text))
    try:
        nib.save(nifti_image(volume, planned.geometry), tmp_nifti)
        tmp_json.write_text(json.dumps(planned.sidecar, indent=2) + "\n", encoding="utf-8")
        for tmp, _final, text in tables:
            tmp.write_text(text, encoding="utf-8")
        digest = _sha256(tmp_nifti)
        for tmp, final, _text in tables:
            os.replace(tmp, final)
        os.replace(tmp_json, sidecar_path)
        os.replace(tmp_nifti, nifti_path)
    finally:
        for tmp in (tmp_nifti, tmp_json, *(t[0] for t in tables)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return ConvertedFile(
        nifti_path=nifti_path,
        sidecar_path=sidecar_path,
        participant_id=planned.participant_id,
        session_id=planned.session_id,
        series_instance_uid=planned.series_instance_uid,
        label=planned.classification.label,
        part=planned.part,
        shape=tuple(volume.shape),
        n_images=planned.n_images,
        sha256=digest,
        bval_path=tables[0][1] if tables else None,
        bvec_path=tables[1][1] if tables else None,
    )


def to_radians(volume: npt.NDArray[np.generic], scaling: PhaseScaling) -> npt.NDArray[np.float32]:
    """Phase values (after rescale) → radians, float32 (see :mod:`ingest.phase`)."""
    return (
        (volume.astype(np.float32) + np.float32(scaling.offset)) * np.float32(scaling.scale)
    ).astype(np.float32, copy=False)


def convert(
    plan: ConversionPlan, dst_root: str | os.PathLike[str], *, overwrite: bool = False
) -> ConversionResult:
    """Execute a plan: write every planned file; a failing file does not stop the others.

    Returns
    -------
    ConversionResult
        Written files (with sha256), planned files that failed (with the reason), and the
        participant/session tables written.
    """
    root = Path(dst_root)
    root.mkdir(parents=True, exist_ok=True)
    stems = Counter(f.relative_stem for f in plan.files)
    clashes = [s for s, n in stems.items() if n > 1]
    if clashes:
        raise ConversionError(f"plan names the same output twice: {clashes[:3]}")
    reader = PixelReader()
    written: list[ConvertedFile] = []
    failed: list[NotConvertedItem] = []
    for planned in plan.files:
        try:
            written.append(convert_file(planned, root, overwrite=overwrite, reader=reader))
        except (
            Exception
        ) as exc:  # one failing file (codec, disk, changed input) must not stop the rest
            detail = str(exc) if isinstance(exc, IngestError) else f"{type(exc).__name__}: {exc}"
            failed.append(
                NotConvertedItem(
                    f"{planned.series_label} part {planned.part}",
                    IssueKind.REFUSED,
                    f"conversion failed: {detail}",
                    tuple(dict.fromkeys(r.path for r in planned.geometry.records)),
                )
            )
    participants, sessions = write_tables(plan, root) if written else (None, ())
    return ConversionResult(tuple(written), tuple(failed), participants, sessions)
