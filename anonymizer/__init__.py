"""MyoVault de-identification library (DICOM PS3.15 Annex E profile as data).

Public API (used by the pipeline, the CLI and the services)::

    from anonymizer import Deidentifier, load_profile, write_dataset, UploadReport

    deid = Deidentifier(secret=b"...>=16 bytes...", project="P1", site="S1")
    result = deid.deidentify_file("quarantine/IM0001.dcm")   # -> FileResult
    if result.status == "written":
        write_dataset(result.encoded, dst / result.output_name)   # verified bytes
    else:
        print(result.reason, result.detail, result.findings)      # stays in quarantine

    report = anonymize_directory(src, dst, JobConfig(secret, "P1", "S1"))  # whole upload
    report.to_json()

* :func:`load_profile` — compiled recipe ``myovault-ps315-2026c-v1`` (Table E.1-1 2026c).
* :class:`Deidentifier` — ``deidentify_file(path) -> FileResult``,
  ``deidentify_dataset(ds) -> FileResult``; pseudonyms, UIDs and date shifts keyed by the
  per-project secret (:class:`Pseudonymizer`); burned-in text check; independent verifier.
* :func:`anonymize_directory` — a whole folder on all cores, with series-level defacing.
* Series-level defacing for callers that de-identify file by file: collect
  ``image_info(result.dataset, result.encoded)`` per written file, then
  ``deface_series({index: info}, {index: encoded})`` per Series Instance UID returns new
  encodings for defaced files and quarantine reasons; ``head_hint(ds)`` tells whether Body Part
  Examined names a head region (see :mod:`anonymizer.series`).
* :class:`FileResult`, :class:`UploadReport` — JSON-serialisable results.
* Errors: :mod:`anonymizer.errors` (all derive from :class:`AnonymizerError`).
"""

from anonymizer.batch import JobConfig, anonymize_directory
from anonymizer.engine import Deidentifier, encode, read_dicom, write_dataset
from anonymizer.errors import (
    AnonymizerError,
    NotDicomError,
    ProfileError,
    SecretError,
    UnsafeFileError,
)
from anonymizer.profile import Action, Profile, load_profile
from anonymizer.pseudonym import Pseudonymizer, random_secret
from anonymizer.report import FileResult, UploadReport
from anonymizer.series import ImageInfo, deface_series, head_hint, image_info

__all__ = [
    "Action",
    "AnonymizerError",
    "Deidentifier",
    "FileResult",
    "ImageInfo",
    "JobConfig",
    "NotDicomError",
    "Profile",
    "ProfileError",
    "Pseudonymizer",
    "SecretError",
    "UnsafeFileError",
    "UploadReport",
    "anonymize_directory",
    "deface_series",
    "encode",
    "head_hint",
    "image_info",
    "load_profile",
    "random_secret",
    "read_dicom",
    "write_dataset",
]
