"""Test helpers for the ingest tests: mark real samples de-identified, build synthetic series.

``mark_deidentified`` is a stand-in for the real de-identifier (``anonymizer/``, another
package): it only sets the flag and blanks the direct identifiers so the converter accepts the
copy. It is NOT a de-identifier.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def mark_deidentified(src: Path, dst: Path, *, patient_id: str = "PSEUDO01") -> Path:
    """Copy every DICOM file of ``src`` to ``dst`` with PatientIdentityRemoved=YES."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if not path.is_file():
            continue
        ds = pydicom.dcmread(path)
        ds.PatientIdentityRemoved = "YES"
        ds.PatientName = ""
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.save_as(dst / path.name, enforce_file_format=True)
    return dst


MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _common(
    ds: Dataset, *, patient_id: str, series_uid: str, study_uid: str, **extra: object
) -> None:
    ds.PatientID = patient_id
    ds.PatientName = ""
    ds.PatientIdentityRemoved = "YES"
    ds.PatientSex = extra.pop("PatientSex", "F")
    ds.PatientAge = extra.pop("PatientAge", "041Y")
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = extra.pop("StudyDate", "20240101")
    ds.StudyTime = extra.pop("StudyTime", "120000")
    ds.Modality = "MR"
    ds.Manufacturer = extra.pop("Manufacturer", "SIEMENS")
    ds.ManufacturerModelName = "TestModel"
    ds.MagneticFieldStrength = 3
    ds.SeriesNumber = extra.pop("SeriesNumber", 1)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    for key, value in extra.items():
        setattr(ds, key, value)


def classic_image(
    pixels: np.ndarray,
    *,
    position: tuple[float, float, float],
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    spacing: tuple[float, float] = (1.0, 1.0),
    echo_time_ms: float | None = 10.0,
    patient_id: str = "PSEUDO01",
    series_uid: str,
    study_uid: str,
    **extra: object,
) -> Dataset:
    """A classic MR Image Storage dataset, pixels shaped (rows, columns), uint16."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(MR_IMAGE, sop_uid)
    ds.SOPClassUID = MR_IMAGE
    ds.SOPInstanceUID = sop_uid
    _common(ds, patient_id=patient_id, series_uid=series_uid, study_uid=study_uid, **extra)
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    ds.PixelSpacing = [f"{v:.6f}" for v in spacing]
    if echo_time_ms is not None:
        ds.EchoTime = f"{echo_time_ms:g}"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    return ds


def enhanced_image(
    frames: np.ndarray,
    *,
    positions: list[tuple[float, float, float]],
    echo_times_ms: list[float],
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    spacing: tuple[float, float] = (1.0, 1.0),
    patient_id: str = "PSEUDO01",
    series_uid: str,
    study_uid: str,
    complex_component: str = "MAGNITUDE",
    frame_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "NONE"),
    **extra: object,
) -> Dataset:
    """An Enhanced MR dataset, frames shaped (n_frames, rows, columns), uint16."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(ENHANCED_MR, sop_uid)
    ds.SOPClassUID = ENHANCED_MR
    ds.SOPInstanceUID = sop_uid
    _common(ds, patient_id=patient_id, series_uid=series_uid, study_uid=study_uid, **extra)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.EchoPulseSequence = extra.get("EchoPulseSequence", "SPIN")
    ds.NumberOfFrames = frames.shape[0]
    ds.Rows, ds.Columns = frames.shape[1:]
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [f"{v:.6f}" for v in spacing]
    measures.SliceThickness = "5"
    shared.PixelMeasuresSequence = [measures]
    orient = Dataset()
    orient.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    shared.PlaneOrientationSequence = [orient]
    timing = Dataset()
    timing.RepetitionTime = "3000"
    timing.FlipAngle = "180"
    shared.MRTimingAndRelatedParametersSequence = [timing]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for position, te in zip(positions, echo_times_ms, strict=True):
        item = Dataset()
        plane = Dataset()
        plane.ImagePositionPatient = [f"{v:.6f}" for v in position]
        item.PlanePositionSequence = [plane]
        echo = Dataset()
        echo.EffectiveEchoTime = te
        item.MREchoSequence = [echo]
        frame_item = Dataset()
        frame_item.FrameType = list(frame_type)
        frame_item.ComplexImageComponent = complex_component
        item.MRImageFrameTypeSequence = [frame_item]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint16).tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
