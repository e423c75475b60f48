"""Fixity: re-read and re-hash stored objects against their recorded sha256."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from repository.storage import (
    EncryptedObjectStore,
    FixityStatus,
    LocalBackend,
    StorageUnavailable,
    check_fixity,
)


@pytest.fixture
def records(local_store: EncryptedObjectStore) -> dict[str, str]:
    out = {}
    for i in range(5):
        info = local_store.put(f"objects/o{i}", bytes([i]) * (1000 + i), subject=f"sub-{i % 2}")
        out[info.key] = info.sha256
    return out


def test_storage_fixity_all_ok(local_store: EncryptedObjectStore, records: dict[str, str]) -> None:
    report = check_fixity(local_store, records.items())
    assert report.ok
    assert (report.checked, report.passed, report.problems) == (5, 5, [])
    assert report.bytes_read == sum(1000 + i for i in range(5))
    assert report.summary() == "5 checked, 5 ok"


def test_storage_fixity_reports_each_problem(
    local_store: EncryptedObjectStore, records: dict[str, str]
) -> None:
    backend = local_store.backend
    local_store.delete("objects/o0")  # missing
    stored = bytearray(b"".join(backend.get_stream("objects/o1")))
    stored[-3] ^= 1
    backend.put_stream("objects/o1", [bytes(stored)])  # corrupt (bit rot)
    local_store.put("objects/o2", b"replaced", subject="sub-0")  # authentic but not recorded
    local_store.destroy_subject_key("sub-1")  # o1, o3 shredded (o1 is also corrupt)
    report = check_fixity(local_store, sorted(records.items()))
    statuses = {p.key: p.status for p in report.problems}
    assert statuses == {
        "objects/o0": FixityStatus.MISSING,
        "objects/o1": FixityStatus.SHREDDED,  # the key is gone before the bytes are looked at
        "objects/o2": FixityStatus.MISMATCH,
        "objects/o3": FixityStatus.SHREDDED,
    }
    assert report.passed == 1 and report.checked == 5
    assert not report.ok
    mismatch = report.by_status(FixityStatus.MISMATCH)[0]
    assert mismatch.actual_sha256 == hashlib.sha256(b"replaced").hexdigest()
    assert "1 mismatch, 1 missing, 2 shredded" in report.summary()
    assert not check_fixity(local_store, sorted(records.items()), shredded_ok=True).ok


def test_storage_fixity_corrupt_object(
    local_store: EncryptedObjectStore, records: dict[str, str]
) -> None:
    backend = local_store.backend
    stored = b"".join(backend.get_stream("objects/o4"))
    backend.put_stream("objects/o4", [stored[:-1]])
    report = check_fixity(local_store, [("objects/o4", records["objects/o4"])])
    assert [p.status for p in report.problems] == [FixityStatus.CORRUPT]
    assert "truncated" in report.problems[0].detail or "authentication" in report.problems[0].detail


def test_storage_fixity_shredded_ok_when_requested(
    local_store: EncryptedObjectStore, records: dict[str, str]
) -> None:
    local_store.destroy_subject_key("sub-1")
    report = check_fixity(local_store, records.items(), shredded_ok=True)
    assert report.ok
    assert len(report.by_status(FixityStatus.SHREDDED)) == 2


def test_storage_fixity_outage_aborts(
    local_store: EncryptedObjectStore, records: dict[str, str]
) -> None:
    assert isinstance(local_store.backend, LocalBackend)
    local_store.backend.root.rename(local_store.backend.root.with_name("moved"))

    def recs() -> Iterator[tuple[str, str]]:
        yield from records.items()

    with pytest.raises(StorageUnavailable, match="does not exist"):
        check_fixity(local_store, recs())
