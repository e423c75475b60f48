"""Walk a folder of DICOM files, read headers only, and group the images into series.

Every file ends up in exactly one place of the :class:`ScanResult`: an image record of a series,
or a :class:`FileIssue` saying why it was skipped (not DICOM, not MR) or refused (corrupt,
truncated, not de-identified, inconsistent series). Nothing is silently dropped.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from ingest.errors import (
    CorruptDicomError,
    MixedPatientsError,
    NotDeidentifiedError,
    NotDicomError,
)
from ingest.records import InstanceRecord, PixelLocation, SeriesRecord, records_from_dataset

PREAMBLE_BYTES = 128
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
UNDEFINED_LENGTH = 0xFFFFFFFF
NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})
MR_IMAGE_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    }
)


class IssueKind(StrEnum):
    """Why a file or series is not part of the conversion."""

    SKIPPED = "skipped"  # not ours to convert (not DICOM, not an MR image); harmless
    REFUSED = "refused"  # should have been convertible but is unsafe or broken


@dataclass(frozen=True, slots=True)
class FileIssue:
    """A file that was not turned into records, and why."""

    path: Path
    kind: IssueKind
    reason: str


@dataclass(frozen=True, slots=True)
class ScanResult:
    """Series found under a folder, plus every file that was skipped or refused."""

    root: Path
    series: tuple[SeriesRecord, ...]
    issues: tuple[FileIssue, ...]

    @property
    def patient_ids(self) -> tuple[str, ...]:
        """Distinct (pseudonymous) PatientIDs, sorted."""
        return tuple(sorted({s.patient_id for s in self.series}))

    @property
    def mixed_patients(self) -> bool:
        return len(self.patient_ids) > 1

    def require_single_patient(self) -> str:
        """Return the one PatientID, or raise :class:`MixedPatientsError`."""
        ids = self.patient_ids
        if len(ids) != 1:
            raise MixedPatientsError(
                f"expected the files of one patient, found {len(ids)} distinct PatientIDs"
            )
        return ids[0]

    @property
    def n_images(self) -> int:
        return sum(len(s.instances) for s in self.series)


def iter_files(root: Path) -> Iterable[Path]:
    """All regular files under ``root`` in a stable (sorted) order; symlinks are not followed."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path


def _expected_pixel_bytes(ds: Dataset) -> int:
    rows = int(ds.get("Rows", 0) or 0)
    cols = int(ds.get("Columns", 0) or 0)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return rows * cols * samples * frames * bits // 8


def _check_pixel_data(ds: Dataset, path: Path, header_end: int, file_size: int) -> int | None:
    """Raise :class:`CorruptDicomError` when the pixel data element is missing or truncated.

    Returns the byte offset of the pixel data value for native little-endian data (so the
    converter can read pixels without parsing the header again), else None.
    """
    with path.open("rb") as fp:
        fp.seek(header_end)
        head = fp.read(12)
        if len(head) < 8 or head[:4] != PIXEL_DATA_TAG:
            raise CorruptDicomError(
                f"{path.name}: truncated or corrupt DICOM: no pixel data after the header "
                f"(file is {file_size} bytes)"
            )
        syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
        if syntax.is_implicit_VR:
            length = struct.unpack("<I", head[4:8])[0]
            value_start = header_end + 8
        else:
            length = struct.unpack("<I", head[8:12])[0]
            value_start = header_end + 12
        if length == UNDEFINED_LENGTH:  # encapsulated: must end with a sequence delimiter
            fp.seek(max(file_size - 8, 0))
            tail = fp.read(8)
            if tail[:4] != b"\xfe\xff\xdd\xe0":
                raise CorruptDicomError(
                    f"{path.name}: truncated DICOM: encapsulated pixel data has no "
                    "sequence delimitation item at the end of the file"
                )
            return None
    if value_start + length > file_size:
        raise CorruptDicomError(
            f"{path.name}: truncated DICOM: pixel data declares {length} bytes but only "
            f"{file_size - value_start} are present"
        )
    expected = _expected_pixel_bytes(ds)
    if not syntax.is_compressed and length < expected:
        raise CorruptDicomError(
            f"{path.name}: corrupt DICOM: pixel data holds {length} bytes, "
            f"{expected} expected from Rows/Columns/BitsAllocated/NumberOfFrames"
        )
    return value_start if syntax in NATIVE_LITTLE_ENDIAN else None


def read_header(path: Path) -> tuple[Dataset, PixelLocation]:
    """Read one file's header (no pixels) and check it is complete.

    Returns the header and where its pixel data are (offset None when pydicom must decode).

    Raises
    ------
    NotDicomError
        When the file has no ``DICM`` preamble.
    CorruptDicomError
        When the header cannot be parsed, or pixel data are missing or truncated.
    """
    stat = path.stat()
    file_size = stat.st_size
    with path.open("rb") as fp:
        preamble = fp.read(PREAMBLE_BYTES + 4)
        if len(preamble) < PREAMBLE_BYTES + 4 or preamble[PREAMBLE_BYTES:] != b"DICM":
            raise NotDicomError(f"{path.name}: not a DICOM file (no DICM preamble)")
        fp.seek(0)
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
        except InvalidDicomError as exc:
            raise CorruptDicomError(f"{path.name}: corrupt DICOM header: {exc}") from exc
        except Exception as exc:  # untrusted input: any parser failure means "corrupt"
            raise CorruptDicomError(
                f"{path.name}: corrupt DICOM header ({type(exc).__name__}: {exc})"
            ) from exc
        header_end = fp.tell()
    if "SOPInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
        raise CorruptDicomError(
            f"{path.name}: truncated or corrupt DICOM: SOPInstanceUID/SeriesInstanceUID missing"
        )
    offset = None
    if str(ds.get("SOPClassUID", "")) in MR_IMAGE_SOP_CLASSES:
        offset = _check_pixel_data(ds, path, header_end, file_size)
    return ds, PixelLocation(offset, file_size, stat.st_mtime_ns)


def check_deidentified(ds: Dataset, path: Path) -> None:
    """Raise :class:`NotDeidentifiedError` unless ``PatientIdentityRemoved`` is ``YES``."""
    flag = str(ds.get("PatientIdentityRemoved", "") or "").strip().upper()
    if flag != "YES":
        shown = flag or "absent"
        raise NotDeidentifiedError(
            f"{path.name}: not de-identified (PatientIdentityRemoved is {shown}); "
            "the converter only accepts de-identified DICOM — run `myovault anonymize` first"
        )
    if not str(ds.get("PatientID", "") or "").strip():
        raise NotDeidentifiedError(
            f"{path.name}: de-identified file without a pseudonymous PatientID"
        )


def _series_issue(records: list[InstanceRecord]) -> str | None:
    """A reason to refuse a whole series whose headers disagree on who or what it is."""
    patients = {r.patient_id for r in records}
    if len(patients) > 1:
        return f"mixed patients within one series ({len(patients)} distinct PatientIDs)"
    sessions = {r.session_key for r in records}
    if len(sessions) > 1:
        return f"one series spans {len(sessions)} visits (StudyDate/StudyTime disagree)"
    return None


def _scan_one(
    path: Path,
    require_deidentified: bool,
    issues: list[FileIssue],
    by_series: dict[str, list[InstanceRecord]],
    seen: dict[tuple[str, int | None], Path],
) -> None:
    """Read one file into ``by_series`` or record why not in ``issues``."""
    try:
        ds, location = read_header(path)
    except NotDicomError as exc:
        issues.append(FileIssue(path, IssueKind.SKIPPED, str(exc)))
        return
    except CorruptDicomError as exc:
        issues.append(FileIssue(path, IssueKind.REFUSED, str(exc)))
        return
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in MR_IMAGE_SOP_CLASSES:
        modality = ds.get("Modality", "?")
        issues.append(
            FileIssue(
                path,
                IssueKind.SKIPPED,
                f"{path.name}: not an MR image (Modality {modality}, SOP class {sop_class})",
            )
        )
        return
    try:
        if require_deidentified:
            check_deidentified(ds, path)
        records = records_from_dataset(ds, path, location)
    except (NotDeidentifiedError, CorruptDicomError) as exc:
        issues.append(FileIssue(path, IssueKind.REFUSED, str(exc)))
        return
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        reason = f"{path.name}: unreadable header value ({type(exc).__name__}: {exc})"
        issues.append(FileIssue(path, IssueKind.REFUSED, reason))
        return
    for record in records:
        key = (record.sop_instance_uid, record.frame_index)
        if key in seen:
            issues.append(
                FileIssue(
                    path,
                    IssueKind.SKIPPED,
                    f"{path.name}: duplicate of {seen[key].name} (same SOPInstanceUID)",
                )
            )
            return
        seen[key] = path
        by_series[record.series_instance_uid].append(record)


def scan_folder(root: str | os.PathLike[str], *, require_deidentified: bool = True) -> ScanResult:
    """Read every file under ``root`` (headers only) and group MR images into series.

    Parameters
    ----------
    root : path
        Folder to walk recursively.
    require_deidentified : bool
        Refuse files not marked ``PatientIdentityRemoved=YES`` (default). Only the quarantine
        side of the pipeline, which never writes ORMIR-MIDS, may turn this off.

    Returns
    -------
    ScanResult
        Series sorted by (PatientID, StudyDate, SeriesNumber, UID); images inside a series
        sorted by (file, frame). Duplicate SOP instances are kept once and reported.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise NotADirectoryError(f"{root_path} is not a folder")
    issues: list[FileIssue] = []
    by_series: dict[str, list[InstanceRecord]] = defaultdict(list)
    seen: dict[tuple[str, int | None], Path] = {}
    for path in iter_files(root_path):
        with warnings.catch_warnings(record=True):  # pydicom's value warnings on odd headers
            warnings.simplefilter("always")
            _scan_one(path, require_deidentified, issues, by_series, seen)
    series: list[SeriesRecord] = []
    for uid, records in by_series.items():
        reason = _series_issue(records)
        if reason is not None:
            issues.extend(
                FileIssue(p, IssueKind.REFUSED, f"{p.name}: {reason}")
                for p in dict.fromkeys(r.path for r in records)
            )
            continue
        records.sort(key=lambda r: (str(r.path), r.frame_index or 0))
        series.append(SeriesRecord(uid, tuple(records)))
    series.sort(
        key=lambda s: (
            s.patient_id,
            s.first.study_date or "",
            s.series_number if s.series_number is not None else -1,
            s.series_instance_uid,
        )
    )
    return ScanResult(root=root_path, series=tuple(series), issues=tuple(issues))
