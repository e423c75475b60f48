"""Tiny synthetic MR DICOM objects for the anonymizer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage

SECRET = b"test-secret-0123456789abcdef"


def mr_dataset(
    *,
    patient_id: str = "PAT-000123",
    patient_name: str = "Doe^Jane",
    study_uid: str = "1.2.826.0.1.3680043.99.1.1",
    series_uid: str = "1.2.826.0.1.3680043.99.1.1.1",
    sop_uid: str = "1.2.826.0.1.3680043.99.1.1.1.1",
    study_date: str = "20240315",
    birth_date: str = "19800101",
    position: tuple[float, float, float] = (0.0, 0.0, 0.0),
    pixels: np.ndarray | None = None,
    body_part: str = "THIGH",
) -> Dataset:
    """A classic MR image with identifying and research attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "HOSPSCANNER1"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NORM"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.AcquisitionDate = study_date
    ds.ContentDate = study_date
    ds.StudyTime = "101500"
    ds.AcquisitionTime = "102030.5"
    ds.AccessionNumber = "ACC99887766"
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "Skyra"
    ds.InstitutionName = "St Elsewhere Hospital"
    ds.InstitutionAddress = "12 Harbour Road, Springfield"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.StationName = "MRC40123"
    ds.StudyDescription = "MRI thigh Jane Doe"
    ds.SeriesDescription = "t2_mese_tra 15.03.2024"
    ds.OperatorsName = "Nurse^Ratched"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = "F"
    ds.PatientSize = "1.68"
    ds.PatientWeight = "61.5"
    ds.PatientAddress = "7 Elm Street, Springfield"
    ds.OtherPatientIDs = "ALT-4455667"
    ds.BodyPartExamined = body_part
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK"
    ds.SequenceName = "*se2d17"
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = "5"
    ds.RepetitionTime = "1800"
    ds.EchoTime = "10.9"
    ds.MagneticFieldStrength = "3"
    ds.FlipAngle = "180"
    ds.DeviceSerialNumber = "45358"
    ds.SoftwareVersions = "syngo MR D13C"
    ds.ProtocolName = "t2_mese_tra"
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "STUDY77"
    ds.SeriesNumber = "4"
    ds.InstanceNumber = "1"
    ds.FrameOfReferenceUID = study_uid + ".9"
    ds.ImagePositionPatient = list(position)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = ["1.5", "1.5"]
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1.25"
    ref = Dataset()
    ref.ReferencedSOPClassUID = MRImageStorage
    ref.ReferencedSOPInstanceUID = sop_uid + ".77"
    ds.ReferencedImageSequence = Sequence([ref])
    req = Dataset()
    req.RequestedProcedureDescription = "Thigh MRI for Jane"
    req.ScheduledPerformingPhysicianName = "Strange^Stephen"
    ds.RequestAttributesSequence = Sequence([req])
    block = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
    block.add_new(0x2F, "SS", 1)
    block.add_new(0x30, "LO", "Jane Doe private note")
    other = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    other.add_new(0x10, "OB", b"Doe^Jane CSA stuff ")
    if pixels is None:
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 300, size=(16, 16), dtype=np.uint16)
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a Part 10 file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
