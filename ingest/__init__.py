"""MyoVault ingest: de-identified DICOM → typed series records → classification → ORMIR-MIDS.

A library (no Flask, no database). The pipeline plans, then executes (DESIGN.md §7.9)::

    scan = scan_folder(src)                  # headers only → ScanResult (series + file issues)
    plan = plan_conversion(scan)             # pure: classify, name, check geometry, sidecars
    result = convert(plan, dst_root)         # read pixels, write NIfTI + JSON atomically

Public API
----------
``scan_folder(path, *, require_deidentified=True) -> ScanResult``
    Walk ``path``; every file becomes an :class:`InstanceRecord` of a :class:`SeriesRecord`
    or a :class:`FileIssue` (``skipped``: not DICOM / not MR; ``refused``: corrupt, truncated,
    not de-identified, inconsistent series). ``ScanResult.patient_ids``,
    ``.mixed_patients`` and ``.require_single_patient()`` detect mixed patients.
``classify_series(series, table=None) -> Classification``
    Table-driven label (``dixon``, ``megre``, ``mese``, ``t1w``, ``t2w``, ``stir``, ``dti``,
    ``localizer``, ``other``) plus image parts (``magnitude``, ``phase``, ``real``,
    ``imaginary``, ``water``, ``fat``, ``in_phase``, ``opposed_phase``). Rules:
    ``ingest/data/classification-v1.json``; ``load_rule_table(path)`` loads another version.
``plan_conversion(scan, *, table=None) -> ConversionPlan``
    ``.files`` (:class:`PlannedFile`: ORMIR-MIDS stem, geometry, sidecar), ``.not_converted``
    (what and why), ``.participants`` / ``.sessions`` rows.
``convert(plan, dst_root, *, overwrite=False) -> ConversionResult``
    ``.files`` (:class:`ConvertedFile` with paths and sha256), ``.failed``; writes
    ``participants.tsv`` and ``sub-*/sub-*_sessions.tsv``. Never writes a patient sidecar.
``stack_geometry(records, *, volumes=None) -> StackGeometry``
    DICOM LPS → NIfTI RAS affine, slice order along the normal, echo order by echo time (or
    the given 4th-axis index, e.g. DWI volumes).

Diffusion series become ``mr-dwi/…_dwi.nii.gz`` + ``.bval``/``.bvec`` (``ingest.diffusion``),
series holding several stacks one ``_chunk-<n>`` NIfTI per stack (``ingest.stacks``), phase
parts are written in radians with ``Units`` in the sidecar (``ingest.phase``).

``ingest.receiver.StudyReceiver(ae_table, stage, on_study_complete, *, quiet_seconds=60)``
    pynetdicom C-STORE SCP: ``.start(host, port) -> (host, port)``, ``.stop()``. Calling AE
    titles map to ``Destination(project, site)`` via ``parse_ae_table({...})`` (unknown AE
    titles are rejected); ``stage(ae, destination, study_uid, sop_uid, part10_bytes) -> Path``
    stores each instance; ``on_study_complete(ae, study_uid, paths)`` fires once the study has
    been quiet for ``quiet_seconds``. Imported from its module (pulls in pynetdicom).

Note: ``ingest.convert`` the *function* shadows the submodule of the same name as a package
attribute; import helpers with ``from ingest.convert import plan_conversion`` (works as usual).

Errors are subclasses of :class:`ingest.errors.IngestError`. Conventions and where MyoVault
goes beyond the ``ormir-mids`` package: ``ingest/README.md``.
"""

from ingest.classify import Classification, classify_series, load_rule_table
from ingest.convert import (
    ConversionPlan,
    ConversionResult,
    ConvertedFile,
    NotConvertedItem,
    PlannedFile,
    convert,
    plan_conversion,
)
from ingest.nifti import StackGeometry, stack_geometry
from ingest.records import InstanceRecord, SeriesRecord
from ingest.scan import FileIssue, IssueKind, ScanResult, scan_folder

__all__ = [
    "Classification",
    "ConversionPlan",
    "ConversionResult",
    "ConvertedFile",
    "FileIssue",
    "InstanceRecord",
    "IssueKind",
    "NotConvertedItem",
    "PlannedFile",
    "ScanResult",
    "SeriesRecord",
    "StackGeometry",
    "classify_series",
    "convert",
    "load_rule_table",
    "plan_conversion",
    "scan_folder",
    "stack_geometry",
]
