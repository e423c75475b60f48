"""Local filesystem backend: atomic writes, key safety, listing, health."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from repository.storage import (
    InvalidObjectKey,
    LocalBackend,
    ObjectBackend,
    ObjectNotFound,
    StorageError,
    StorageUnavailable,
)
from repository.storage.local import PARTIAL_DIR


class SourceFailed(Exception):
    pass


def failing_source(good_chunks: int) -> Iterator[bytes]:
    for _ in range(good_chunks):
        yield b"x" * 1000
    raise SourceFailed("connection to the uploader dropped")


def test_storage_local_is_an_object_backend(local_backend: LocalBackend) -> None:
    assert isinstance(local_backend, ObjectBackend)


def test_storage_local_round_trip(local_backend: LocalBackend) -> None:
    data = os.urandom(3 * (1 << 20) + 5)
    size = local_backend.put_stream("a/b/c.bin", [data[:10], data[10:]])
    assert size == len(data)
    assert local_backend.exists("a/b/c.bin")
    assert b"".join(local_backend.get_stream("a/b/c.bin")) == data
    assert (local_backend.root / "a" / "b" / "c.bin").stat().st_mode & 0o077 == 0


def test_storage_local_failed_write_leaves_nothing(local_backend: LocalBackend) -> None:
    with pytest.raises(SourceFailed):
        local_backend.put_stream("new/obj", failing_source(3))
    assert not local_backend.exists("new/obj")
    assert list(local_backend.iter_keys()) == []
    assert list((local_backend.root / PARTIAL_DIR).iterdir()) == []


def test_storage_local_failed_overwrite_keeps_old_object(local_backend: LocalBackend) -> None:
    local_backend.put_stream("obj", [b"old"])
    with pytest.raises(SourceFailed):
        local_backend.put_stream("obj", failing_source(2))
    assert b"".join(local_backend.get_stream("obj")) == b"old"


def test_storage_local_killed_writer_leftover_is_invisible(local_backend: LocalBackend) -> None:
    """What a writer killed mid-stream leaves (a temp file) is never listed or readable."""
    partial = local_backend.root / PARTIAL_DIR
    partial.mkdir(exist_ok=True)
    (partial / "deadbeef.tmp").write_bytes(b"half an object")
    assert list(local_backend.iter_keys()) == []
    assert local_backend.purge_partials() == 1


def test_storage_local_missing_object(local_backend: LocalBackend) -> None:
    with pytest.raises(ObjectNotFound, match="'nope/x' not found"):
        local_backend.get_stream("nope/x")
    assert not local_backend.exists("nope/x")
    local_backend.delete("nope/x")  # idempotent


def test_storage_local_delete_prunes_empty_directories(local_backend: LocalBackend) -> None:
    local_backend.put_stream("p/q/r/obj", [b"1"])
    local_backend.put_stream("p/keep", [b"2"])
    local_backend.delete("p/q/r/obj")
    assert not (local_backend.root / "p" / "q").exists()
    assert (local_backend.root / "p" / "keep").exists()
    assert local_backend.root.is_dir()


def test_storage_local_iter_keys(local_backend: LocalBackend) -> None:
    for key in ["objects/aa/1", "objects/ab/2", "objects/b/3", "derived/x", "top"]:
        local_backend.put_stream(key, [b"."])
    local_backend.put_stream("objects-x", [b"."])  # '-' sorts before '/' as in S3 listings
    assert list(local_backend.iter_keys()) == sorted(
        ["derived/x", "objects/aa/1", "objects/ab/2", "objects/b/3", "top", "objects-x"]
    )
    assert list(local_backend.iter_keys("objects/a")) == ["objects/aa/1", "objects/ab/2"]
    assert list(local_backend.iter_keys("objects/")) == [
        "objects/aa/1",
        "objects/ab/2",
        "objects/b/3",
    ]
    assert list(local_backend.iter_keys("zzz/")) == []


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a/../../b", ".partial/x"])
def test_storage_local_rejects_unsafe_keys(local_backend: LocalBackend, key: str) -> None:
    with pytest.raises(InvalidObjectKey):
        local_backend.put_stream(key, [b"x"])
    with pytest.raises(InvalidObjectKey):
        local_backend.get_stream(key)
    assert not (local_backend.root.parent / "escape").exists()


def test_storage_local_check_missing_root(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "absent")
    with pytest.raises(StorageUnavailable, match="absent does not exist"):
        backend.check()
    with pytest.raises(StorageUnavailable, match="does not exist"):
        backend.put_stream("a", [b"x"])


def test_storage_local_check_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageUnavailable, match="is not a directory"):
        LocalBackend(tmp_path / "file").check()


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses directory permissions")
def test_storage_local_check_unwritable_root(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir(mode=0o500)
    try:
        with pytest.raises(StorageUnavailable, match="is not writable"):
            LocalBackend(root).check()
    finally:
        root.chmod(0o700)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_storage_local_check_unwritable_root_even_for_root() -> None:
    """/proc refuses new entries for every user, root included."""
    with pytest.raises(StorageUnavailable, match="/proc is not writable"):
        LocalBackend("/proc").check()


def test_storage_local_check_ok_and_create(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "new" / "store", create=True)
    backend.check()
    assert backend.root.is_dir()
    assert list(backend.iter_keys()) == []


def test_storage_local_key_prefix_collisions_are_clear(local_backend: LocalBackend) -> None:
    """S3 allows both ``a`` and ``a/b``; a filesystem cannot, and says so."""
    local_backend.put_stream("a/b", [b"1"])
    with pytest.raises(StorageError, match="collides with existing keys under 'a/'"):
        local_backend.put_stream("a", [b"2"])
    local_backend.put_stream("c", [b"3"])
    with pytest.raises(StorageError, match="collides with the existing object 'c'"):
        local_backend.put_stream("c/d/e", [b"4"])
    assert list(local_backend.iter_keys()) == ["a/b", "c"]
    with pytest.raises(ObjectNotFound):
        local_backend.get_stream("a")
