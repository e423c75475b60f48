"""De-identify every file under a directory into another directory, using all cores.

Plan: list files → de-identify and verify each in a process pool (the recipe is compiled once
per worker; verified encodings are staged in ``DST/.myovault-staging`` so memory does not grow
with the upload) → check every series that may hold a head and deface it, one series per task
in the same pool → move staged files to names made of the pseudonym and hashes of new UIDs
(staging is always removed) → one :class:`~anonymizer.report.UploadReport`.

The worker-side functions (:func:`init_worker`, :func:`process_file`,
:func:`deface_staged_series`, :func:`needs_series_check`, :func:`staged_path`) are also what
the server pipeline runs in its own pool (``repository/services/pipeline_deidentify.py``).
Non-DICOM files are reported and never copied. Nothing is written for a quarantined file.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anonymizer.engine import Deidentifier, write_dataset
from anonymizer.errors import AnonymizerError
from anonymizer.report import STATUS_QUARANTINED, STATUS_WRITTEN, FileResult, UploadReport
from anonymizer.series import MIN_SLICES, ImageInfo, deface_series, head_hint, image_info


@dataclass(frozen=True)
class JobConfig:
    """Everything a worker needs to build its :class:`Deidentifier` (picklable)."""

    secret: bytes
    project: str
    site: str = ""
    uid_root: str | None = None


_WORKER: dict[str, Deidentifier] = {}
STAGING_NAME = ".myovault-staging"


def init_worker(config: JobConfig) -> None:
    """Pool initializer: build this process's :class:`Deidentifier` once (recipe compiled once)."""
    _WORKER["deid"] = Deidentifier(
        config.secret, config.project, config.site, None, config.uid_root
    )


def release_worker() -> None:
    """Forget this process's :class:`Deidentifier` (and with it the project secret)."""
    _WORKER.pop("deid", None)


def process_file(item: tuple[int, str, str, str]) -> tuple[int, FileResult, ImageInfo | None]:
    """Worker task: de-identify one file and stage its verified encoding on disk.

    ``item`` is ``(index, path, name to report, staging directory)``; the encoding goes to
    :func:`staged_path` (memory stays flat) and the result comes back without dataset or
    encoding, with the image geometry needed by the series-level defacing.
    """
    index, path, name, staging = item
    result = _WORKER["deid"].deidentify_file(path, name)
    info = None
    encoded = result.encoded
    if result.status == STATUS_WRITTEN and result.dataset is not None and encoded:
        info = image_info(result.dataset, encoded)
        if info is None and head_hint(result.dataset) and "PixelData" in result.dataset:
            result = FileResult(
                name,
                STATUS_QUARANTINED,
                "deface-impossible",
                "head region named in Body Part Examined but image geometry unusable",
            )
        else:
            staged_path(staging, index).write_bytes(encoded)
    result.dataset = None
    result.encoded = None
    return index, result, info


def staged_path(staging: str | Path, index: int) -> Path:
    """Where :func:`process_file` stages the verified encoding of file ``index``."""
    return Path(staging) / f"{index:08d}.dcm.part"


def list_files(src: Path) -> list[Path]:
    """Regular files under ``src`` (recursively, sorted, symlinks not followed)."""
    return sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())


Mapper = Callable[[Callable[[Any], Any], list[Any]], Iterator[Any]]


@contextmanager
def _mapper(config: JobConfig, workers: int, count: int) -> Iterator[Mapper]:
    """``map`` over the worker pool (kept open for both passes), or in-process for one worker."""
    if workers <= 1 or count < 2:
        init_worker(config)
        try:
            yield lambda fn, items: iter(map(fn, items))
        finally:
            release_worker()
        return
    with ProcessPoolExecutor(workers, initializer=init_worker, initargs=(config,)) as pool:

        def run(fn: Callable[[Any], Any], items: list[Any]) -> Iterator[Any]:
            chunk = max(1, min(16, len(items) // workers // 4))
            return iter(pool.map(fn, items, chunksize=chunk))

        yield run


def anonymize_directory(
    src: str | Path,
    dst: str | Path,
    config: JobConfig,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> UploadReport:
    """De-identify every DICOM file under ``src`` into ``dst``.

    Parameters
    ----------
    src, dst
        Input (quarantine) and output directories; they must not contain each other.
    config
        Secret, project, site and UID root.
    workers
        Worker processes (default: all CPUs).
    progress
        Called as ``progress(done, total)``.

    Returns
    -------
    UploadReport
        ``report.safe`` is true only if every DICOM file was written.
    """
    src_path, dst_path = Path(src).resolve(), Path(dst).resolve()
    if not src_path.is_dir():
        raise AnonymizerError(f"source is not a directory: {src}")
    if src_path == dst_path or src_path in dst_path.parents or dst_path in src_path.parents:
        raise AnonymizerError("source and destination directories must not contain each other")
    files = list_files(src_path)
    staging = dst_path / STAGING_NAME
    items = [(i, str(p), str(p.relative_to(src_path)), str(staging)) for i, p in enumerate(files)]
    probe = Deidentifier(config.secret, config.project, config.site, None, config.uid_root)
    report = UploadReport(
        probe.profile.version,
        probe.profile.edition,
        [f"{code} {meaning}" for code, meaning in probe.profile.options],
    )
    staging.mkdir(parents=True, exist_ok=True)
    try:
        results: dict[int, FileResult] = {}
        infos: dict[int, ImageInfo] = {}
        with _mapper(config, workers or os.cpu_count() or 1, len(items)) as run:
            for done, (index, result, info) in enumerate(run(process_file, items), start=1):
                results[index] = result
                if info is not None:
                    infos[index] = info
                if progress is not None:
                    progress(done, len(items))
            _deface(results, infos, staging, run)
        used: set[str] = set()
        for index in sorted(results):
            result = results[index]
            if result.status == STATUS_WRITTEN:
                if result.output_name in used:
                    result = results[index] = FileResult(
                        result.source,
                        STATUS_QUARANTINED,
                        "duplicate-instance",
                        "another file of this upload has the same SOP Instance UID",
                    )
                else:
                    used.add(result.output_name)
                    target = dst_path / result.output_name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    staged_path(staging, index).replace(target)
            report.add(result)
    finally:
        # staged files are de-identified and verified but possibly not yet defaced: never
        # leave them behind
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _deface(
    results: dict[int, FileResult], infos: dict[int, ImageInfo], staging: Path, run: Mapper
) -> None:
    """Deface head-containing series, one series per worker task (both cores)."""
    by_series: dict[str, dict[int, ImageInfo]] = defaultdict(dict)
    for index, info in infos.items():
        if results[index].status == STATUS_WRITTEN:
            by_series[info.series_uid][index] = info
    todo = [(series, str(staging)) for series in by_series.values() if needs_series_check(series)]
    for defaced, quarantine in run(deface_staged_series, todo):
        for index in defaced:
            results[index].pixel_actions.append("deface")
        for index, reason in quarantine.items():
            old = results[index]
            results[index] = FileResult(old.source, STATUS_QUARANTINED, "deface-impossible", reason)


def deface_staged_series(
    item: tuple[dict[int, ImageInfo], str],
) -> tuple[list[int], dict[int, str]]:
    """Worker task: deface one staged series in place; return defaced and quarantined indices."""
    series, staging = item
    encoded = {i: staged_path(staging, i).read_bytes() for i in series}
    new, quarantine = deface_series(series, encoded)
    for index, data in new.items():
        write_dataset(data, staged_path(staging, index))
    return sorted(new), quarantine


def needs_series_check(series: dict[int, ImageInfo]) -> bool:
    """Whether a series must be inspected for a head: Body Part Examined names one, or a stack
    is long enough to reach from the neck to the vertex (cheap geometric pre-check)."""
    if any(info.head_hint for info in series.values()):
        return True
    for info in series.values():
        if len(info.positions) >= MIN_SLICES:
            return True  # a multi-frame volume: inspect it
    return len(series) >= MIN_SLICES
