"""Benchmark: streaming a BagIt download package vs reading the same objects from the store.

Usage::

    .venv/bin/python bench/bench_consent_download.py [--files N] [--size-mib M] [--repeat R]

Both runs decrypt and verify the same N objects of M MiB each from a local encrypted store; the
package run also writes the zip (stored, with data descriptors and zip64) and the tag files.
Reports MiB/s for each, the ratio package/baseline, and the peak Python heap (tracemalloc)
while streaming, which must stay flat as the files grow (streamed, never buffered whole).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repository.db import Base  # noqa: E402
from repository.models.keys import SubjectKey  # noqa: E402
from repository.services.downloads import PackageFile, PackagePlan, stream_package  # noqa: E402
from repository.storage import EncryptedObjectStore, KeyRing, LocalBackend, MasterKey  # noqa: E402

MIB = 1 << 20


def _fill(store: EncryptedObjectStore, files: int, size_mib: int) -> list[PackageFile]:
    out = []
    block = secrets.token_bytes(MIB)
    for i in range(files):
        info = store.put(f"bench/obj-{i}.nii.gz", (block for _ in range(size_mib)), subject="BENCH")
        out.append(
            PackageFile(f"sub-BENCH/ses-01/mr-anat/f{i}.nii.gz", info.sha256, info.size, info.key)
        )
    return out


def _baseline(store: EncryptedObjectStore, files: list[PackageFile]) -> int:
    total = 0
    for f in files:
        for chunk in store.open(f.object_key or "", expected_sha256=f.sha256):
            total += len(chunk)
    return total


def _package(store: EncryptedObjectStore, files: list[PackageFile]) -> int:
    plan = PackagePlan("bench", "bagit", 0, tuple(files), "CC-BY-4.0", "conditions", {"Grant": "0"})
    return sum(len(chunk) for chunk in stream_package(plan, store))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/keys.sqlite3")
        Base.metadata.create_all(engine, tables=[SubjectKey.__table__])  # type: ignore[list-item]
        store = EncryptedObjectStore(
            LocalBackend(Path(tmp) / "store", create=True),
            KeyRing(sessionmaker(engine), MasterKey(secrets.token_bytes(32))),
        )
        files = _fill(store, args.files, args.size_mib)
        total_mib = args.files * args.size_mib
        print(f"python {sys.version.split()[0]}; {args.files} files x {args.size_mib} MiB")
        best = {}
        for name, fn in (("baseline store read", _baseline), ("BagIt zip stream", _package)):
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                fn(store, files)
                times.append(time.perf_counter() - start)
            best[name] = min(times)
            print(f"{name:22s} {total_mib / best[name]:8.1f} MiB/s (best of {args.repeat})")
        print(
            f"ratio package/baseline time: {best['BagIt zip stream'] / best['baseline store read']:.2f}"
        )
        tracemalloc.start()
        _package(store, files)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"peak Python heap while streaming {total_mib} MiB: {peak / MIB:.1f} MiB")


if __name__ == "__main__":
    main()
