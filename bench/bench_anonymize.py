"""Benchmark: de-identification throughput of MyoVault vs deid and dicognito, same input, same run.

Usage::

    .venv/bin/python bench/bench_anonymize.py [--input DIR ...] [--baseline-files N]

Default input: the classic real samples in ../shared/data/real (GE 256 + Siemens 119 files) when
present, else 300 synthetic MR files written to a temporary folder. Every tool reads each file
from disk and writes its output to disk. Figures are files per second (wall clock); ratios are
against the baselines measured in this run. deid is slow, so it runs on the first
``--baseline-files`` files only (its rate does not depend on the file count).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from anonymizer import JobConfig, anonymize_directory

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"
SECRET = b"benchmark-secret-0123456789"


def synthetic(folder: Path, count: int = 300) -> list[Path]:
    """Write ``count`` small identifiable MR files (3 subjects) and return their paths."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName = f"Subject^{i % 3}"
        ds.PatientID = f"PID{i % 3:05d}"
        ds.PatientBirthDate = "19700101"
        ds.StudyDate = "20240101"
        ds.InstitutionName = "Bench Hospital"
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.99.9.{i % 3}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.99.9.{i % 3}.1"
        ds.Modality = "MR"
        ds.EchoTime = "10"
        ds.RepetitionTime = "1000"
        ds.ImagePositionPatient = [0, 0, float(i)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1, 1]
        ds.Rows = ds.Columns = 256
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = rng.integers(0, 400, (256, 256), dtype=np.uint16).tobytes()
        path = folder / f"IM{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _dicognito_one(args: tuple[str, str]) -> None:
    from dicognito.anonymizer import Anonymizer

    src, dst = args
    ds = dcmread(src)
    Anonymizer(seed="bench").anonymize(ds)
    ds.save_as(dst)


def run_dicognito(files: list[Path], out: Path, workers: int) -> float:
    """Files per second of dicognito (one Anonymizer per file call, as its CLI per file)."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(f), str(out / f"{i}.dcm")) for i, f in enumerate(files)]
    start = time.perf_counter()
    if workers == 1:
        from dicognito.anonymizer import Anonymizer

        anonymizer = Anonymizer(seed="bench")
        for src, dst in jobs:
            ds = dcmread(src)
            anonymizer.anonymize(ds)
            ds.save_as(dst)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_dicognito_one, jobs, chunksize=8))
    return len(files) / (time.perf_counter() - start)


def run_deid(files: list[Path], out: Path) -> float:
    """Files per second of deid's replace_identifiers with its default recipe."""
    from deid.config import DeidRecipe
    from deid.dicom import replace_identifiers

    logging.getLogger("deid").setLevel(logging.ERROR)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    recipe = DeidRecipe()  # deid's default recipe (deid.dicom)
    replace_identifiers(
        dicom_files=[str(f) for f in files], deid=recipe, save=True, output_folder=str(out)
    )
    return len(files) / (time.perf_counter() - start)


def run_myovault(src: Path, out: Path, workers: int) -> float:
    """Files per second of ``anonymize_directory`` (read, de-identify, verify, deface, write)."""
    start = time.perf_counter()
    report = anonymize_directory(src, out, JobConfig(SECRET, "bench"), workers=workers)
    elapsed = time.perf_counter() - start
    if not report.safe:
        print(f"  note: {report.files_quarantined} files quarantined")
    return report.files_total / elapsed


def planted_survivors(tmp: Path) -> dict[str, tuple[int, int]]:
    """Per tool: (planted Table E.1-1 values surviving unchanged at their tag, planted count).

    Uses the table-driven test's planted file (one unique value per attribute of the pinned
    2026c table). For MyoVault the survivors are exactly those a claimed option keeps.
    """
    import copy
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "anonymizer"))
    from test_anonymizer_table import _planted_dataset  # the test suite's builder

    from anonymizer import Deidentifier

    def survivors(out: Dataset, planted: dict[int, object]) -> int:
        count = 0
        for tag, elem in planted.items():
            got = out.get(tag)
            if (
                got is not None
                and got.value not in (None, "", b"")
                and (
                    str(got.value) == str(elem.value)  # type: ignore[attr-defined]
                )
            ):
                count += 1
        return count

    results: dict[str, tuple[int, int]] = {}
    ds, planted = _planted_dataset()
    for tag in [t for t in planted if t >> 16 == 0]:  # command group cannot go in a file
        del ds[tag], planted[tag]
    path = tmp / "planted.dcm"
    ds.save_as(path, enforce_file_format=True)
    mine = Deidentifier(SECRET, "bench").deidentify_dataset(copy.deepcopy(ds))
    if mine.dataset is not None:
        results["MyoVault"] = (survivors(mine.dataset, planted), len(planted))
    from dicognito.anonymizer import Anonymizer

    other = dcmread(path)
    Anonymizer(seed="bench").anonymize(other)
    results["dicognito"] = (survivors(other, planted), len(planted))
    from deid.config import DeidRecipe
    from deid.dicom import replace_identifiers

    logging.getLogger("deid").setLevel(logging.ERROR)
    out_dir = tmp / "planted_deid"
    out_dir.mkdir()
    written = replace_identifiers(
        [str(path)], deid=DeidRecipe(), save=True, output_folder=str(out_dir)
    )
    results["deid"] = (survivors(dcmread(written[0]), planted), len(planted))
    return results


_REFERENCE_SNIPPET = """
import resource, sys, time
from anonymizer import JobConfig, anonymize_directory
def cpu():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
start, cpu0 = time.perf_counter(), cpu()
report = anonymize_directory(sys.argv[1], sys.argv[2], JobConfig(sys.argv[3].encode(), "bench"),
                             workers=int(sys.argv[4]))
wall, used = time.perf_counter() - start, cpu() - cpu0
print(report.files_total / wall, report.files_total / used)
"""


def run_reference(tree: Path, src: Path, out: Path, workers: int, label: str) -> float:
    """``anonymize_directory`` from another source tree (e.g. the last commit:
    ``git archive HEAD anonymizer | tar -x -C /tmp/ref``) in a child process; rates are
    measured inside the child, so its interpreter start-up is not counted."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    code = [sys.executable, "-c", _REFERENCE_SNIPPET, str(src), str(out), SECRET.decode()]
    done = subprocess.run(  # noqa: S603
        [*code, str(workers)], env=env, cwd=tree, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"reference run failed: {done.stderr[-400:]}")
    rate, per_core = (float(v) for v in done.stdout.strip().splitlines()[-1].split())
    load = os.getloadavg()[0]
    print(f"{label:<44} {rate:8.1f} files/s   {per_core:7.1f} files/CPU-s   (load {load:.1f})")
    return rate


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker pools), user + system."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(label: str, fn: Callable[[], float], files: int) -> float:
    """Run one tool; print its wall-clock rate and its rate per CPU-second (per core).

    On a machine shared with other jobs the wall-clock rate depends on the load; files per
    CPU-second is what one core does and is far less sensitive to it.
    """
    cpu = _cpu_seconds()
    rate = fn()
    per_core = files / max(_cpu_seconds() - cpu, 1e-9)
    load = os.getloadavg()[0]
    print(f"{label:<44} {rate:8.1f} files/s   {per_core:7.1f} files/CPU-s   (load {load:.1f})")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, action="append", help="input folder (repeatable)")
    parser.add_argument("--baseline-files", type=int, default=60)
    parser.add_argument(
        "--reference",
        type=Path,
        help="a source tree holding an earlier anonymizer/ to measure in the same run",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        staging = tmp / "input"
        staging.mkdir()
        folders = args.input or [
            p for p in (REAL / "ge_megre_thigh", REAL / "siemens_mese_thigh") if p.is_dir()
        ]
        if folders:
            files = []
            for n, folder in enumerate(folders):  # temporary copy: every tool reads the same
                for path in sorted(p for p in folder.iterdir() if p.is_file()):
                    target = staging / f"f{n}_{path.name}"
                    shutil.copyfile(path, target)
                    files.append(target)
            source = ", ".join(str(f) for f in folders)
        else:
            files = synthetic(staging)
            source = "300 synthetic 256x256 MR files"
        print(f"input: {len(files)} files from {source}; cpus={os.cpu_count()}")
        print(f"load average at start: {os.getloadavg()[0]:.1f} (machine shared with others)")
        subset = files[: args.baseline_files]
        n = len(files)
        deid_rate = _timed(
            f"deid default recipe (1 proc, {len(subset)} files)",
            lambda: run_deid(subset, tmp / "deid"),
            len(subset),
        )
        dcg1 = _timed("dicognito (1 proc)", lambda: run_dicognito(files, tmp / "dcg1", 1), n)
        dcg2 = _timed("dicognito (2 procs)", lambda: run_dicognito(files, tmp / "dcg2", 2), n)
        mv1 = _timed(
            "MyoVault anonymize_directory (1 worker)",
            lambda: run_myovault(staging, tmp / "mv1", 1),
            n,
        )
        mv2 = _timed(
            "MyoVault anonymize_directory (2 workers)",
            lambda: run_myovault(staging, tmp / "mv2", 2),
            n,
        )
        print(f"ratio MyoVault(2) / deid(1)       = {mv2 / deid_rate:6.1f}x")
        print(f"ratio MyoVault(2) / dicognito(1)  = {mv2 / dcg1:6.2f}x")
        print(f"ratio MyoVault(2) / dicognito(2)  = {mv2 / dcg2:6.2f}x")
        print(f"ratio MyoVault(1) / dicognito(1)  = {mv1 / dcg1:6.2f}x")
        if args.reference is not None:
            ref1 = run_reference(
                args.reference, staging, tmp / "ref1", 1, "reference tree (1 worker)"
            )
            ref2 = run_reference(
                args.reference, staging, tmp / "ref2", 2, "reference tree (2 workers)"
            )
            print(
                f"ratio MyoVault / reference tree   = {mv1 / ref1:6.2f}x (1) {mv2 / ref2:6.2f}x (2)"
            )
        print(f"goal 300 files/s on 2 cores: {'met' if mv2 >= 300 else 'NOT met'} (wall clock)")
        print(f"load average at end: {os.getloadavg()[0]:.1f}")
        for tool, (alive, total) in planted_survivors(tmp).items():
            print(f"planted Table E.1-1 values surviving unchanged, {tool:<9}: {alive}/{total}")


if __name__ == "__main__":
    main()
