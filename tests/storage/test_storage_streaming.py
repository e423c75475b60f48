"""Streaming: memory does not grow with object size (1 GB round trip, marked slow)."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from repository.storage import EncryptedObjectStore

MIB = 1 << 20


def generated(total_bytes: int, digest: hashlib._Hash) -> Iterator[bytes]:
    """``total_bytes`` of varied data in 1 MiB pieces, hashed as produced (never all in RAM)."""
    block = bytearray(hashlib.shake_256(b"myovault").digest(MIB))
    for index in range(total_bytes // MIB):
        block[:8] = index.to_bytes(8, "big")
        piece = bytes(block)
        digest.update(piece)
        yield piece


def vm_hwm_kib() -> int | None:
    """Peak resident set (VmHWM) of this process in KiB, or None where unavailable."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def round_trip(store: EncryptedObjectStore, total_bytes: int) -> tuple[int, int | None]:
    """Put then read back ``total_bytes``; return (tracemalloc peak growth, VmHWM growth)."""
    written = hashlib.sha256()
    can_reset = reset_hwm()
    rss_before = vm_hwm_kib()
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        info = store.put("big/object.bin", generated(total_bytes, written), subject="sub-big")
        read = hashlib.sha256()
        size = 0
        for chunk in store.open("big/object.bin", expected_sha256=info.sha256):
            read.update(chunk)
            size += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_after = vm_hwm_kib()
    assert info.size == size == total_bytes
    assert info.sha256 == written.hexdigest() == read.hexdigest()
    rss_growth = (
        (rss_after - rss_before) * 1024
        if can_reset and rss_before is not None and rss_after is not None
        else None
    )
    return peak - baseline, rss_growth


def test_storage_streaming_64mb_local_bounded(local_store: EncryptedObjectStore) -> None:
    growth, _ = round_trip(local_store, 64 * MIB)
    assert growth < 16 * MIB, f"traced memory grew by {growth / MIB:.1f} MiB for 64 MiB"


@pytest.mark.integration
def test_storage_streaming_s3_multipart_bounded(s3_store: EncryptedObjectStore) -> None:
    """Upload memory is a few multipart parts (~4 x 5 MiB: buffer, part copy, botocore's
    request copy and checksum), constant in the object size; download is one chunk."""
    growth, _ = round_trip(s3_store, 48 * MIB)
    assert growth < 28 * MIB, f"traced memory grew by {growth / MIB:.1f} MiB for 48 MiB"


@pytest.mark.slow
def test_storage_streaming_1gb_local_bounded(local_store: EncryptedObjectStore) -> None:
    growth, rss_growth = round_trip(local_store, 1024 * MIB)
    assert growth < 64 * MIB, f"traced memory grew by {growth / MIB:.1f} MiB for 1 GiB"
    if rss_growth is not None:
        assert rss_growth < 64 * MIB, f"peak RSS grew by {rss_growth / MIB:.1f} MiB for 1 GiB"
