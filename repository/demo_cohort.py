"""A synthetic demo cohort as *identifiable-looking* DICOM studies, pushed through the pipeline.

Every subject gets two visits; each visit a Dixon series (water, fat, in-phase, opposed-phase
images, classic MR, ImageType W/F/IP/OP) and a multi-echo spin-echo series (classic MR, SE,
several echoes). Headers carry *fake* identifiers (name, id, birth date, institution) so that
de-identification has real work to do. Pixel data come from the project's own phantom generator
(:func:`qmri.phantom.make_subject`) when ``realistic`` is true, else from a fast analytic
cylinder phantom (tests).

``write_study(...)`` is a pure writer (arrays in, files out); ``ingest_demo_cohort(app)`` writes
the cohort to a temporary folder and ingests it with the same services as every upload.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage

UID_ROOT = "1.2.826.0.1.3680043.10.1234."  # demo-only root (never a real scanner's)
DIXON_PARTS = (("W", "water"), ("F", "fat"), ("IP", "in_phase"), ("OP", "opposed_phase"))


@dataclass(frozen=True)
class FakePatient:
    """Fake identifiers written into the demo headers (never real people)."""

    patient_id: str
    name: str
    birth_date: date
    sex: str
    disease: str


def _uid(*parts: object) -> str:
    digest = int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:24], 16)
    return f"{UID_ROOT}{digest}"


def cylinder_phantom(
    shape_xyz: tuple[int, int, int], ff: float, t2_ms: float, echo_times_ms: Sequence[float]
) -> dict[str, npt.NDArray[np.float32]]:
    """A fast analytic thigh-like phantom: a muscle cylinder in a fat ring.

    Returns
    -------
    dict
        ``water``, ``fat`` (x, y, z) and ``mese`` (x, y, z, echo) float32 images.
    """
    nx, ny, nz = shape_xyz
    x, y = np.meshgrid(np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), indexing="ij")
    r = np.hypot(x, y)
    muscle = (r < 0.6).astype(np.float32)
    subcut = ((r >= 0.6) & (r < 0.85)).astype(np.float32)
    water2d = muscle * (1 - ff) * 1000
    fat2d = muscle * ff * 1000 + subcut * 900
    water = np.repeat(water2d[:, :, None], nz, axis=2).astype(np.float32)
    fat = np.repeat(fat2d[:, :, None], nz, axis=2).astype(np.float32)
    te = np.asarray(echo_times_ms, dtype=np.float32)
    mese = (water[..., None] * np.exp(-te / t2_ms) + fat[..., None] * np.exp(-te / 150.0)).astype(
        np.float32
    )
    return {"water": water, "fat": fat, "mese": mese}


def _image(
    pixels_xy: npt.NDArray[np.floating[Any]],
    *,
    patient: FakePatient,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    study_date: date,
    series_number: int,
    instance_number: int,
    z_mm: float,
    spacing_mm: tuple[float, float, float],
    image_type: list[str],
    scanning_sequence: str,
    echo_time_ms: float,
    echo_number: int,
    repetition_time_ms: float,
    description: str,
) -> Dataset:
    """One classic MR image; ``pixels_xy`` is indexed (column x, row y)."""
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
    ds.PatientSex = patient.sex
    age = (study_date - patient.birth_date).days // 365
    ds.PatientAge = f"{age:03d}Y"
    ds.InstitutionName = "Example General Hospital"
    ds.ReferringPhysicianName = "Roe^Richard"
    ds.AccessionNumber = f"ACC{abs(hash(study_uid)) % 10**8:08d}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "MAGNETOM Synthetic"
    ds.MagneticFieldStrength = 3
    ds.BodyPartExamined = "THIGH"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.SeriesDescription = description
    ds.ProtocolName = description
    ds.ImageType = image_type
    ds.ScanningSequence = scanning_sequence
    ds.SequenceVariant = "NONE"
    ds.MRAcquisitionType = "2D"
    ds.EchoTime = f"{echo_time_ms:g}"
    ds.EchoNumbers = echo_number
    ds.RepetitionTime = f"{repetition_time_ms:g}"
    ds.SliceThickness = f"{spacing_mm[2]:g}"
    ds.PixelSpacing = [f"{spacing_mm[1]:g}", f"{spacing_mm[0]:g}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ImagePositionPatient = ["0", "0", f"{z_mm:g}"]
    rows = np.ascontiguousarray(pixels_xy.T)  # DICOM stores (row = y, column = x)
    ds.Rows, ds.Columns = rows.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.clip(np.rint(rows), 0, 65535).astype(np.uint16).tobytes()
    return ds


def write_study(
    root: Path,
    patient: FakePatient,
    visit: int,
    study_date: date,
    images: dict[str, npt.NDArray[np.float32]],
    *,
    echo_times_ms: Sequence[float],
    spacing_mm: tuple[float, float, float],
) -> list[Path]:
    """Write one visit (Dixon + MESE) as classic DICOM files under ``root``; returns the paths.

    ``images`` holds ``water`` and ``fat`` (x, y, z) and ``mese`` (x, y, z, echo), arbitrary
    units; file names carry the fake patient id, as a scanner export would.
    """
    study_uid = _uid(patient.patient_id, visit)
    folder = root / f"{patient.patient_id}_visit{visit}"
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    water, fat = images["water"], images["fat"]
    nz = water.shape[2]
    dixon = {
        "water": water,
        "fat": fat,
        "in_phase": water + fat,
        "opposed_phase": np.abs(water - fat),
    }
    n = 0
    for code, part in DIXON_PARTS:
        series_uid = _uid(study_uid, "dixon", part)
        for z in range(nz):
            n += 1
            ds = _image(
                dixon[part][:, :, z],
                patient=patient,
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=_uid(series_uid, z),
                study_date=study_date,
                series_number=10 + [c for c, _ in DIXON_PARTS].index(code),
                instance_number=z + 1,
                z_mm=z * spacing_mm[2],
                spacing_mm=spacing_mm,
                image_type=["DERIVED", "PRIMARY", "DIXON", code],
                scanning_sequence="GR",
                echo_time_ms=2.46,
                echo_number=1,
                repetition_time_ms=7.0,
                description=f"t1_vibe_dixon_tra_{part}",
            )
            paths.append(_save(ds, folder / f"{patient.patient_id}_dixon_{part}_{z:03d}.dcm"))
    mese = images["mese"]
    series_uid = _uid(study_uid, "mese")
    for e, te in enumerate(echo_times_ms):
        for z in range(nz):
            n += 1
            ds = _image(
                mese[:, :, z, e],
                patient=patient,
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=_uid(series_uid, e, z),
                study_date=study_date,
                series_number=20,
                instance_number=e * nz + z + 1,
                z_mm=z * spacing_mm[2],
                spacing_mm=spacing_mm,
                image_type=["ORIGINAL", "PRIMARY", "M", "ND"],
                scanning_sequence="SE",
                echo_time_ms=te,
                echo_number=e + 1,
                repetition_time_ms=3000,
                description="se_mc_t2_map",
            )
            paths.append(_save(ds, folder / f"{patient.patient_id}_mese_e{e + 1:02d}_{z:03d}.dcm"))
    return paths


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


# fake names (words that appear nowhere else in the headers, so the verifier has a clean job)
SURNAMES = ("Ashford", "Brennan", "Castell", "Dunmore", "Ellery", "Fairbank")
GIVEN_NAMES = ("Alma", "Bruno", "Clara", "Dario", "Elin", "Felix")

DISEASES = (
    ("healthy", "healthy", 0.05, 32.0),
    ("FSHD", "moderate", 0.25, 40.0),
    ("DMD", "severe", 0.45, 45.0),
)


def write_cohort(
    root: Path,
    *,
    n_subjects: int = 4,
    shape_xyz: tuple[int, int, int] = (48, 48, 4),
    n_echoes: int = 7,
    realistic: bool = False,
    seed: int = 7,
) -> list[FakePatient]:
    """Write ``n_subjects`` × 2 visits of synthetic studies under ``root``."""
    rng = np.random.default_rng(seed)
    echo_times_ms = [10.0 * (i + 1) for i in range(n_echoes)]
    spacing = (1.5 * 256 / shape_xyz[0] / 2, 1.5 * 256 / shape_xyz[1] / 2, 8.0)
    patients = []
    for s in range(n_subjects):
        disease, severity, ff, t2 = DISEASES[s % len(DISEASES)]
        patient = FakePatient(
            patient_id=f"DEMO{1000 + s}",
            name=f"{SURNAMES[s % len(SURNAMES)]}^{GIVEN_NAMES[s % len(GIVEN_NAMES)]}",
            birth_date=date(1960 + 7 * s, 1 + s % 12, 1 + s),
            sex="MF"[s % 2],
            disease=disease,
        )
        patients.append(patient)
        first = date(2024, 1, 8) + timedelta(days=int(rng.integers(0, 200)))
        for visit in (1, 2):
            progress = 1.0 + 0.15 * (visit - 1) * (severity != "healthy")
            study_spacing = spacing
            if realistic:
                images, study_spacing = _phantom_images(
                    seed * 100 + s * 10 + visit, severity, echo_times_ms, shape_xyz[2]
                )
            else:
                images = cylinder_phantom(
                    shape_xyz, min(ff * progress, 0.9), t2 * progress, echo_times_ms
                )
            noise = rng.normal(0, 5, size=images["mese"].shape).astype(np.float32)
            images["mese"] = np.abs(images["mese"] + noise)
            write_study(
                root,
                patient,
                visit,
                first + timedelta(days=365 * (visit - 1)),
                images,
                echo_times_ms=echo_times_ms,
                spacing_mm=study_spacing,
            )
    return patients


def _phantom_images(
    seed: int, severity: str, echo_times_ms: Sequence[float], n_slices: int
) -> tuple[dict[str, npt.NDArray[np.float32]], tuple[float, float, float]]:
    """Images from the project's phantom generator (:func:`qmri.phantom.make_subject`).

    Water and fat come from the phantom (scaled to ~1000 at the 99.5th percentile); the
    multi-echo spin echo is water · exp(-TE / T2_water) + fat · exp(-TE / 150 ms) with the
    phantom's true water T2 map. Returns the images and the voxel spacing in mm (x, y, z).
    """
    from qmri.phantom import make_subject

    subject = make_subject(
        seed, severity, contrasts=("water", "fat"), n_slices=n_slices, pixel_mm=3.0
    )
    water = np.asarray(subject["water"], dtype=np.float32)
    fat = np.asarray(subject["fat"], dtype=np.float32)
    scale = 1000.0 / max(float(np.percentile(water + fat, 99.5)), 1e-6)
    water, fat = water * scale, fat * scale
    t2_ms = np.maximum(np.asarray(subject["t2_water_true_ms"], dtype=np.float32), 1.0)
    te = np.asarray(echo_times_ms, dtype=np.float32)
    mese = water[..., None] * np.exp(-te / t2_ms[..., None]) + fat[..., None] * np.exp(-te / 150.0)
    spacing = tuple(float(v) for v in subject["spacing_mm"])
    return {"water": water, "fat": fat, "mese": mese.astype(np.float32)}, (
        spacing[0],
        spacing[1],
        spacing[2],
    )


def ingest_demo_cohort(
    app: Any, project_slug: str, *, n_subjects: int = 4, realistic: bool = True
) -> list[str]:
    """Generate the cohort and push it through the ingest pipeline (``make demo``).

    Runs once per instance: skipped when the demo project already has a demo-cohort upload.
    """

    from sqlalchemy import select

    from repository.errors import ConfigError
    from repository.models import Project, Upload
    from repository.services.context import SYSTEM
    from repository.services.pipeline import ingest_directory

    mode = str(app.config["DEMO_COHORT"])
    if mode not in DEMO_MODES:
        raise ConfigError(f"DEMO_COHORT must be one of {', '.join(DEMO_MODES)}, not {mode!r}")
    if mode == "none":
        return ["demo cohort skipped (DEMO_COHORT=none)"]
    realistic = realistic and mode == "synthetic"
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        done = session.scalar(
            select(Upload.id)
            .join(Project, Project.id == Upload.project_id)
            .where(Project.slug == project_slug, Upload.label == DEMO_LABEL)
        )
    if done is not None:
        return [f"demo cohort already ingested (upload {done})"]
    with tempfile.TemporaryDirectory(prefix="myovault-demo-") as tmp:
        root = Path(tmp)
        patients = write_cohort(
            root, n_subjects=n_subjects, shape_xyz=(64, 64, 6), n_echoes=7, realistic=realistic
        )
        summary = ingest_directory(ext, SYSTEM, root, project_slug, label=DEMO_LABEL)
    record_demo_consents(ext, project_slug, patients)
    return [
        f"demo cohort: {len(patients)} synthetic subjects x 2 visits (Dixon + MESE) ingested "
        f"as upload {summary['upload_id']}: {summary['state']} {summary['counts']}"
    ]


def record_demo_consents(ext: Any, project_slug: str, patients: Sequence[FakePatient]) -> None:
    """Give each demo subject its (synthetic) disease and a broad research consent (HMB), so
    the demo cohort is searchable and requestable like a real one."""
    from sqlalchemy import select

    from anonymizer import Pseudonymizer
    from repository.models import Project, Subject
    from repository.services import consent as consent_service
    from repository.services.context import SYSTEM

    with ext.db.transaction() as session:
        project = session.scalar(select(Project).where(Project.slug == project_slug))
        secret = ext.unwrap_project_secret(project.pseudonym_secret_wrapped)
        pseudonyms = Pseudonymizer(secret, project_slug, "")
        for patient in patients:
            pseudonym = pseudonyms.subject_pseudonym(patient.patient_id)
            subject = session.scalar(
                select(Subject).where(
                    Subject.project_id == project.id, Subject.pseudonym == pseudonym
                )
            )
            if subject is None:  # the pipeline quarantined all of this patient's files
                continue
            subject.disease = patient.disease
            consent_service.record_consent(
                session,
                SYSTEM,
                project,
                {
                    "pseudonym": pseudonym,
                    "form": "MyoVault demo consent (synthetic participants)",
                    "form_version": "1.0",
                    "signed_on": "2024-01-02",
                    "duo_terms": "HMB",
                    "lawful_basis": "6(1)(e)",
                    "special_category_basis": "9(2)(j)",
                },
                source="system",
            )


DEMO_LABEL = "demo cohort (synthetic)"
#: synthetic: phantom anatomy (default); fast: analytic cylinders; none: no cohort
DEMO_MODES = ("synthetic", "fast", "none")
