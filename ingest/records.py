"""Immutable typed records of DICOM MR images, read from headers only.

One :class:`InstanceRecord` describes one 2D image: a classic single-frame MR instance, or one
frame of an enhanced (multi-frame) MR instance, whose per-frame functional groups
(``PerFrameFunctionalGroupsSequence``) override the shared ones
(``SharedFunctionalGroupsSequence``). A :class:`SeriesRecord` groups the records of one
``SeriesInstanceUID``.

Units follow the DICOM attributes they come from and are carried in the field names: times in
ms, angles in degrees, lengths in mm (LPS patient coordinates), field strength in T.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from ingest.diffusion import DiffusionInfo, diffusion_from_dataset
from ingest.errors import CorruptDicomError

#: GE private tag (0043,102F) "image type": 0 magnitude, 1 phase, 2 real, 3 imaginary.
GE_IMAGE_PART_TAG = Tag(0x0043, 0x102F)
GE_PRIVATE_CREATOR = "GEMS_PARM_01"

ENHANCED_MR_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image Storage
    }
)


@dataclass(frozen=True, slots=True)
class PixelLocation:
    """Where a file's native (uncompressed, little-endian) pixel data start, and the file's
    size and modification time when scanned (to detect a file changed before conversion)."""

    offset: int | None  # byte offset of the pixel data value; None: decode with pydicom
    file_size: int
    file_mtime_ns: int


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """Header facts about one 2D MR image (a classic instance or one enhanced frame)."""

    path: Path
    frame_index: int | None  # 0-based frame of a multi-frame file; None for single-frame
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str  # pseudonymous after de-identification
    patient_identity_removed: str | None
    patient_sex: str | None
    patient_age: str | None  # DICOM AS, e.g. "036Y"
    study_date: str | None  # DICOM DA (shifted by de-identification)
    study_time: str | None
    modality: str | None
    series_number: int | None
    instance_number: int | None
    rows: int
    columns: int
    samples_per_pixel: int
    number_of_frames: int
    image_position_patient_mm: tuple[float, float, float] | None
    image_orientation_patient: tuple[float, float, float, float, float, float] | None
    pixel_spacing_mm: tuple[float, float] | None  # (between rows, between columns)
    slice_thickness_mm: float | None
    spacing_between_slices_mm: float | None
    echo_time_ms: float | None
    echo_number: int | None
    repetition_time_ms: float | None
    inversion_time_ms: float | None
    flip_angle_deg: float | None
    magnetic_field_strength_t: float | None
    imaging_frequency_mhz: float | None
    pixel_bandwidth_hz: float | None
    manufacturer: str
    manufacturer_model_name: str | None
    sequence_name: str | None
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    mr_acquisition_type: str | None
    echo_pulse_sequence: str | None  # enhanced MR: SPIN / GRADIENT / BOTH
    image_type: tuple[str, ...]
    complex_image_component: str | None
    ge_image_part: int | None
    series_description: str | None
    protocol_name: str | None
    phase_encoding_direction: str | None
    rescale_slope: float
    rescale_intercept: float
    diffusion_b_value: float | None  # s/mm² (standard or vendor private tag)
    diffusion_gradient: tuple[float, float, float] | None  # unit vector, see ..._frame
    diffusion_gradient_frame: str | None  # "patient" (LPS) or "image" (row, column, normal)
    diffusion_source: str  # where the diffusion values came from ("" when none)
    bits_allocated: int
    bits_stored: int
    pixel_representation: int  # 0 unsigned, 1 signed
    pixel_location: PixelLocation | None

    @property
    def session_key(self) -> str:
        """Which visit this image belongs to.

        ``StudyDate`` + ``StudyTime`` when the date is present, else ``StudyInstanceUID``. Dates
        rather than UIDs because some de-identifiers give every file a new StudyInstanceUID
        (the real Siemens MESE sample does); a visit is one date and start time per patient.
        """
        if self.study_date:
            return f"{self.study_date}T{self.study_time or ''}"
        return f"uid:{self.study_instance_uid}"

    @property
    def is_enhanced(self) -> bool:
        """True for a frame of an enhanced (multi-frame) MR instance."""
        return self.frame_index is not None


@dataclass(frozen=True, slots=True)
class SeriesRecord:
    """All image records sharing one ``SeriesInstanceUID``, in a stable order."""

    series_instance_uid: str
    instances: tuple[InstanceRecord, ...]

    @property
    def first(self) -> InstanceRecord:
        return self.instances[0]

    @property
    def patient_id(self) -> str:
        return self.first.patient_id

    @property
    def study_instance_uid(self) -> str:
        return self.first.study_instance_uid

    @property
    def session_key(self) -> str:
        return self.first.session_key

    @property
    def series_number(self) -> int | None:
        return self.first.series_number

    @property
    def label(self) -> str:
        """A short human-readable name for messages (number and description, no identifiers)."""
        number = self.series_number if self.series_number is not None else "?"
        desc = self.first.series_description or "no description"
        return f"series {number} ({desc}) [{self.series_instance_uid}]"

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(r.path for r in self.instances))


# --------------------------------------------------------------------------------------------
# Header parsing helpers


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def _tokens(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(t.strip().upper() for t in value.split("\\") if t.strip())
    return tuple(str(t).strip().upper() for t in value if str(t).strip())


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == n else None


def _ge_image_part(ds: Dataset) -> int | None:
    """GE (0043,102F) when the private block really is GEMS_PARM_01."""
    element = ds.get(GE_IMAGE_PART_TAG)
    if element is None:
        return None
    creator = ds.get((0x0043, 0x0010))
    if creator is None or str(creator.value).strip() != GE_PRIVATE_CREATOR:
        return None
    value = element.value
    if isinstance(value, bytes):  # implicit VR: raw little-endian SS
        value = int.from_bytes(value[:2], "little", signed=True)
    return _int(value)


class _Groups:
    """Look up an attribute in a frame's functional groups, per-frame first, then shared."""

    def __init__(self, per_frame: Dataset | None, shared: Dataset | None) -> None:
        self._items = [g for g in (per_frame, shared) if g is not None]

    def get(self, sequence: str, keyword: str) -> Any:
        for group in self._items:
            seq = group.get(sequence)
            if seq:
                value = seq[0].get(keyword)
                if value is not None:
                    return value
        return None


def _patient_and_series(ds: Dataset, location: PixelLocation | None) -> dict[str, Any]:
    return {
        "pixel_location": location,
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "patient_id": str(ds.get("PatientID", "") or "").strip(),
        "patient_identity_removed": _text(ds.get("PatientIdentityRemoved")),
        "patient_sex": _text(ds.get("PatientSex")),
        "patient_age": _text(ds.get("PatientAge")),
        "study_date": _text(ds.get("StudyDate")),
        "study_time": _text(ds.get("StudyTime")),
        "modality": _text(ds.get("Modality")),
        "series_number": _int(ds.get("SeriesNumber")),
        "instance_number": _int(ds.get("InstanceNumber")),
        "rows": int(ds.get("Rows", 0) or 0),
        "columns": int(ds.get("Columns", 0) or 0),
        "samples_per_pixel": int(ds.get("SamplesPerPixel", 1) or 1),
        "number_of_frames": _int(ds.get("NumberOfFrames")) or 1,
        "magnetic_field_strength_t": _float(ds.get("MagneticFieldStrength")),
        "manufacturer": str(ds.get("Manufacturer", "") or "").strip(),
        "manufacturer_model_name": _text(ds.get("ManufacturerModelName")),
        "series_description": _text(ds.get("SeriesDescription")),
        "protocol_name": _text(ds.get("ProtocolName")),
        "mr_acquisition_type": _text(ds.get("MRAcquisitionType")),
        "ge_image_part": _ge_image_part(ds),
        "bits_allocated": int(ds.get("BitsAllocated", 0) or 0),
        "bits_stored": int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or 0),
        "pixel_representation": int(ds.get("PixelRepresentation", 0) or 0),
    }


def _diffusion(info: DiffusionInfo) -> dict[str, Any]:
    return {
        "diffusion_b_value": info.b_value,
        "diffusion_gradient": info.direction,
        "diffusion_gradient_frame": info.frame,
        "diffusion_source": info.source,
    }


def _classic_record(ds: Dataset, path: Path, location: PixelLocation | None) -> InstanceRecord:
    base = _patient_and_series(ds, location)
    position = _floats(ds.get("ImagePositionPatient"), 3)
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    slope = _float(ds.get("RescaleSlope"))
    intercept = _float(ds.get("RescaleIntercept"))
    return InstanceRecord(
        path=path,
        frame_index=None,
        image_position_patient_mm=position,  # type: ignore[arg-type]
        image_orientation_patient=orientation,  # type: ignore[arg-type]
        pixel_spacing_mm=spacing,  # type: ignore[arg-type]
        slice_thickness_mm=_float(ds.get("SliceThickness")),
        spacing_between_slices_mm=_float(ds.get("SpacingBetweenSlices")),
        echo_time_ms=_float(ds.get("EchoTime")),
        echo_number=_int(ds.get("EchoNumbers")),
        repetition_time_ms=_float(ds.get("RepetitionTime")),
        inversion_time_ms=_float(ds.get("InversionTime")),
        flip_angle_deg=_float(ds.get("FlipAngle")),
        imaging_frequency_mhz=_float(ds.get("ImagingFrequency")),
        pixel_bandwidth_hz=_float(ds.get("PixelBandwidth")),
        sequence_name=_text(ds.get("SequenceName")),
        scanning_sequence=_tokens(ds.get("ScanningSequence")),
        sequence_variant=_tokens(ds.get("SequenceVariant")),
        scan_options=_tokens(ds.get("ScanOptions")),
        echo_pulse_sequence=_text(ds.get("EchoPulseSequence")),
        image_type=_tokens(ds.get("ImageType")),
        complex_image_component=_text(ds.get("ComplexImageComponent")),
        phase_encoding_direction=_text(ds.get("InPlanePhaseEncodingDirection")),
        rescale_slope=1.0 if slope is None else slope,
        rescale_intercept=0.0 if intercept is None else intercept,
        **_diffusion(diffusion_from_dataset(ds)),
        **base,
    )


def _frame_records(
    ds: Dataset, path: Path, location: PixelLocation | None
) -> Iterator[InstanceRecord]:
    base = _patient_and_series(ds, location)
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    n_frames = base["number_of_frames"]
    if per_frame is None or len(per_frame) != n_frames:
        got = 0 if per_frame is None else len(per_frame)
        raise CorruptDicomError(
            f"{path.name}: enhanced MR with NumberOfFrames={n_frames} but "
            f"{got} PerFrameFunctionalGroupsSequence items"
        )
    for index, frame in enumerate(per_frame):
        groups = _Groups(frame, shared)
        frame_type = groups.get("MRImageFrameTypeSequence", "FrameType")
        complex_part = groups.get("MRImageFrameTypeSequence", "ComplexImageComponent")
        slope = _float(groups.get("PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _float(groups.get("PixelValueTransformationSequence", "RescaleIntercept"))
        inversion = groups.get("MRModifierSequence", "InversionTimes")
        inversion_recovery = _text(groups.get("MRModifierSequence", "InversionRecovery"))
        echo_pulse = _text(ds.get("EchoPulseSequence"))
        scanning = {"SPIN": ("SE",), "GRADIENT": ("GR",), "BOTH": ("SE", "GR")}.get(
            (echo_pulse or "").upper(), ()
        )
        if inversion_recovery == "YES":
            scanning = (*scanning, "IR")
        if _text(ds.get("EchoPlanarPulseSequence")) == "YES":
            scanning = (*scanning, "EP")
        yield InstanceRecord(
            path=path,
            frame_index=index,
            image_position_patient_mm=_floats(  # type: ignore[arg-type]
                groups.get("PlanePositionSequence", "ImagePositionPatient"), 3
            ),
            image_orientation_patient=_floats(  # type: ignore[arg-type]
                groups.get("PlaneOrientationSequence", "ImageOrientationPatient"), 6
            ),
            pixel_spacing_mm=_floats(  # type: ignore[arg-type]
                groups.get("PixelMeasuresSequence", "PixelSpacing"), 2
            ),
            slice_thickness_mm=_float(groups.get("PixelMeasuresSequence", "SliceThickness")),
            spacing_between_slices_mm=_float(
                groups.get("PixelMeasuresSequence", "SpacingBetweenSlices")
                or ds.get("SpacingBetweenSlices")
            ),
            echo_time_ms=_float(groups.get("MREchoSequence", "EffectiveEchoTime")),
            echo_number=_int(groups.get("MREchoSequence", "EchoNumbers")),
            repetition_time_ms=_float(
                groups.get("MRTimingAndRelatedParametersSequence", "RepetitionTime")
            ),
            inversion_time_ms=_float(inversion),
            flip_angle_deg=_float(groups.get("MRTimingAndRelatedParametersSequence", "FlipAngle")),
            imaging_frequency_mhz=_float(
                groups.get("MRImagingModifierSequence", "TransmitterFrequency")
            ),
            pixel_bandwidth_hz=_float(groups.get("MRImagingModifierSequence", "PixelBandwidth")),
            sequence_name=_text(ds.get("PulseSequenceName")),
            scanning_sequence=scanning,
            sequence_variant=(),
            scan_options=(),
            echo_pulse_sequence=echo_pulse,
            image_type=_tokens(frame_type) or _tokens(ds.get("ImageType")),
            complex_image_component=_text(complex_part) or _text(ds.get("ComplexImageComponent")),
            phase_encoding_direction=_text(
                groups.get("MRFOVGeometrySequence", "InPlanePhaseEncodingDirection")
            ),
            rescale_slope=1.0 if slope is None else slope,
            rescale_intercept=0.0 if intercept is None else intercept,
            **_diffusion(diffusion_from_dataset(ds, groups)),
            **base,
        )


def records_from_dataset(
    ds: Dataset, path: Path, location: PixelLocation | None = None
) -> tuple[InstanceRecord, ...]:
    """Build the records of one DICOM header.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A header read with ``stop_before_pixels=True`` (pixel data are not needed).
    path : pathlib.Path
        Where the file lives; kept so the converter can read the pixels later.
    location : PixelLocation, optional
        Pixel data offset and file stat from the scan (``None``: decode with pydicom).

    Returns
    -------
    tuple of InstanceRecord
        One record for a classic instance; one per frame for an enhanced MR instance.

    Raises
    ------
    CorruptDicomError
        When an enhanced instance's functional groups do not match ``NumberOfFrames``.
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in ENHANCED_MR_SOP_CLASSES or "PerFrameFunctionalGroupsSequence" in ds:
        return tuple(_frame_records(ds, path, location))
    return (_classic_record(ds, path, location),)
