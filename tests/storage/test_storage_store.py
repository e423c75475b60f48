"""Encrypted object store on both backends: round trips, shredding, tampering, factory."""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from repository.storage import (
    SYSTEM,
    EncryptedObjectStore,
    IntegrityError,
    InvalidObjectKey,
    KeyDestroyed,
    KeyRing,
    LocalBackend,
    MasterKey,
    MasterKeyError,
    ObjectNotFound,
    S3Backend,
    StorageError,
    StorageUnavailable,
    make_store,
)

MIB = 1 << 20


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def raw(store: EncryptedObjectStore, key: str) -> bytes:
    return b"".join(store.backend.get_stream(key))


@pytest.mark.parametrize("size", [0, 1, MIB - 1, MIB, 2 * MIB + 3])
def test_storage_store_round_trip(store: EncryptedObjectStore, size: int) -> None:
    data = payload(size, size)
    info = store.put("objects/a.bin", data, subject="sub-001")
    assert info.key == "objects/a.bin"
    assert info.size == size
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.key_id == store.keyring.data_key("sub-001").key_id
    assert info.stored_size == len(raw(store, "objects/a.bin"))
    assert store.read_bytes("objects/a.bin", expected_sha256=info.sha256) == data
    assert b"".join(store.open("objects/a.bin")) == data


def test_storage_store_sources(store: EncryptedObjectStore, tmp_path: Path) -> None:
    data = payload(3 * MIB + 11)
    digest = hashlib.sha256(data).hexdigest()
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    with open(src, "rb") as fh:
        assert store.put("f", fh, subject="sub-1").sha256 == digest
    assert store.put("b", io.BytesIO(data), subject="sub-1").sha256 == digest
    assert (
        store.put(
            "i", (data[i : i + 1000] for i in range(0, len(data), 1000)), subject="sub-1"
        ).sha256
        == digest
    )
    assert store.put("m", memoryview(data), subject="sub-1").sha256 == digest
    for key in "fbim":
        assert store.read_bytes(key, expected_sha256=digest) == data
    with pytest.raises(TypeError, match="binary mode"):
        store.put("t", io.StringIO("text"), subject="sub-1")  # type: ignore[arg-type]
    assert not store.exists("t")


def test_storage_store_ciphertext_at_rest(store: EncryptedObjectStore) -> None:
    data = b"MUSCLE FAT FRACTION 0.42 " * 1000
    store.put("objects/m", data, subject="sub-1")
    stored = raw(store, "objects/m")
    assert b"MUSCLE" not in stored
    assert stored.startswith(b"MVLT")


def test_storage_store_system_scope(store: EncryptedObjectStore) -> None:
    info = store.put("reports/cohort.pdf", b"%PDF", subject=SYSTEM)
    assert store.read_bytes("reports/cohort.pdf") == b"%PDF"
    assert info.key_id == store.keyring.data_key(SYSTEM).key_id


def test_storage_store_invalid_keys(store: EncryptedObjectStore) -> None:
    for key in ["../x", "PatientName^Smith", "/abs", "a b"]:
        with pytest.raises(InvalidObjectKey):
            store.put(key, b"x", subject="sub-1")
        with pytest.raises(InvalidObjectKey):
            store.open(key)


def test_storage_store_missing(store: EncryptedObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.open("absent")
    assert not store.exists("absent")


def test_storage_store_delete_and_list(store: EncryptedObjectStore) -> None:
    store.put("objects/1", b"1", subject="sub-1")
    store.put("objects/2", b"2", subject="sub-2")
    assert list(store.iter_keys("objects/")) == ["objects/1", "objects/2"]
    store.delete("objects/1")
    assert not store.exists("objects/1")
    assert list(store.iter_keys()) == ["objects/2"]


def test_storage_store_failed_source_leaves_nothing(store: EncryptedObjectStore) -> None:
    store.put("obj", b"v1", subject="sub-1")

    def broken() -> Iterator[bytes]:
        yield payload(6 * MIB)
        raise OSError("upload connection reset")

    with pytest.raises(OSError, match="connection reset"):
        store.put("obj", broken(), subject="sub-1")
    with pytest.raises(OSError, match="connection reset"):
        store.put("new", broken(), subject="sub-1")
    assert store.read_bytes("obj") == b"v1"
    assert not store.exists("new")


# --- tampering ------------------------------------------------------------------------------


def test_storage_store_swapped_ciphertext_fails(store: EncryptedObjectStore) -> None:
    """Copying object A's stored bytes over object B is detected, same or other subject."""
    store.put("objects/a", b"A data", subject="sub-1")
    store.put("objects/b", b"B data", subject="sub-1")
    store.put("objects/c", b"C data", subject="sub-2")
    stolen = raw(store, "objects/a")
    store.backend.put_stream("objects/b", [stolen])
    store.backend.put_stream("objects/c", [stolen])
    for key in ("objects/b", "objects/c"):
        with pytest.raises(IntegrityError, match="not the object written under this key"):
            store.read_bytes(key)
    assert store.read_bytes("objects/a") == b"A data"


def test_storage_store_bit_flip_fails_clearly(store: EncryptedObjectStore) -> None:
    data = payload(2 * MIB + 100)
    store.put("obj", data, subject="sub-1")
    stored = raw(store, "obj")
    for position, chunk_index in ((500, 0), (MIB + 500, 1), (len(stored) - 1, 2)):
        flipped = bytearray(stored)
        flipped[position] ^= 0x04
        store.backend.put_stream("obj", [bytes(flipped)])
        with pytest.raises(
            IntegrityError, match=f"'obj' failed authentication at chunk {chunk_index}"
        ):
            store.read_bytes("obj")
        released = []
        with pytest.raises(IntegrityError):
            for chunk in store.open("obj"):
                released.append(chunk)
        # Only an authentic prefix is released, and never the chunk right before the bad one
        # (the store holds one chunk back).
        assert b"".join(released) == data[: max(0, chunk_index - 1) * MIB]


def test_storage_store_truncation_fails_clearly(store: EncryptedObjectStore) -> None:
    data = payload(3 * MIB)
    store.put("obj", data, subject="sub-1")
    stored = raw(store, "obj")
    for cut in (len(stored) - 1, len(stored) - 16 - MIB, 3, 100):
        store.backend.put_stream("obj", [stored[:cut]])
        with pytest.raises(IntegrityError, match="truncated|failed authentication"):
            store.read_bytes("obj")


def test_storage_store_expected_sha256_mismatch_holds_back_final_chunk(
    store: EncryptedObjectStore,
) -> None:
    """An authentic object that is not the recorded one: nothing of the last chunk escapes."""
    info = store.put("obj", b"new version", subject="sub-1")
    wrong = hashlib.sha256(b"old version").hexdigest()
    released = []
    with pytest.raises(IntegrityError, match="was recorded"):
        for chunk in store.open("obj", expected_sha256=wrong):
            released.append(chunk)
    assert released == []
    assert store.read_bytes("obj", expected_sha256=info.sha256.upper()) == b"new version"
    with pytest.raises(StorageError, match="64 hex"):
        store.open("obj", expected_sha256="abc")


def test_storage_store_copy_to_file_is_atomic(store: EncryptedObjectStore, tmp_path: Path) -> None:
    data = payload(MIB + 1)
    info = store.put("obj", data, subject="sub-1")
    target = tmp_path / "out.bin"
    assert store.copy_to_file("obj", target, expected_sha256=info.sha256) == len(data)
    assert target.read_bytes() == data
    bad = tmp_path / "bad.bin"
    with pytest.raises(IntegrityError):
        store.copy_to_file("obj", bad, expected_sha256="0" * 64)
    assert list(tmp_path.glob("bad.bin*")) == []


def test_storage_store_wrong_master_key(
    store: EncryptedObjectStore, session_factory: Callable[[], Session]
) -> None:
    store.put("obj", b"secret", subject="sub-1")
    wrong = KeyRing(session_factory, MasterKey(os.urandom(32), source="key file /bad.key"))
    other = EncryptedObjectStore(store.backend, wrong)
    with pytest.raises(MasterKeyError, match="wrong key file or MYOVAULT_MASTER_KEY"):
        other.open("obj")  # eager: before any byte is streamed
    with pytest.raises(MasterKeyError):
        other.check()


# --- crypto-shredding -----------------------------------------------------------------------


@pytest.mark.integration
def test_storage_store_crypto_shredding_reaches_both_backends(
    local_backend: LocalBackend, s3_backend: S3Backend, keyring: KeyRing, tmp_path: Path
) -> None:
    """After destroy_subject_key no copy of the subject's objects is readable anywhere
    (primary local store, S3 replica, and a file-level backup), other subjects untouched."""
    local = EncryptedObjectStore(local_backend, keyring)
    s3 = EncryptedObjectStore(s3_backend, keyring)
    doomed = {f"objects/d{i}": payload(i * 300_000 + 1, i) for i in range(4)}
    kept = {f"objects/k{i}": payload(i * 200_000 + 7, 100 + i) for i in range(3)}
    for key, data in doomed.items():
        for target in (local, s3):
            target.put(key, data, subject="sub-doomed")
    for key, data in kept.items():
        for target in (local, s3):
            target.put(key, data, subject="sub-kept")
    backup = LocalBackend(tmp_path / "backup", create=True)  # e.g. last night's rsync copy
    for key in local.iter_keys():
        backup.put_stream(key, local_backend.get_stream(key))
    restored = EncryptedObjectStore(backup, keyring)
    assert restored.read_bytes("objects/d1") == doomed["objects/d1"]

    assert local.destroy_subject_key("sub-doomed") == 1

    for target in (local, s3, restored):
        for key in doomed:
            assert target.exists(key)  # the ciphertext is still there ...
            with pytest.raises(KeyDestroyed, match="permanently unreadable"):
                target.read_bytes(key)  # ... but can never be decrypted again
        for key, data in kept.items():
            assert target.read_bytes(key) == data
    with pytest.raises(KeyDestroyed):
        s3.put("objects/new", b"x", subject="sub-doomed")


def test_storage_store_shredding_one_backend(store: EncryptedObjectStore) -> None:
    store.put("a", b"doomed", subject="sub-a")
    store.put("b", b"kept", subject="sub-b")
    store.destroy_subject_key("sub-a")
    with pytest.raises(KeyDestroyed):
        store.open("a")  # raised before any streaming starts (HTTP can still answer 410)
    assert store.read_bytes("b") == b"kept"


# --- factory --------------------------------------------------------------------------------


def test_storage_make_store_local(tmp_path: Path, keyring: KeyRing) -> None:
    for url in (str(tmp_path / "s1"), f"file://{tmp_path / 's2'}"):
        store = make_store(url, endpoint_url=None, keyring=keyring, create=True)
        assert isinstance(store.backend, LocalBackend)
        store.check()
        store.put("x", b"1", subject="sub-1")
        assert store.read_bytes("x") == b"1"
    with pytest.raises(StorageUnavailable, match="does not exist"):
        make_store(str(tmp_path / "absent"), endpoint_url=None, keyring=keyring).check()


@pytest.mark.integration
def test_storage_make_store_s3(
    moto_endpoint: str, s3_bucket: str, keyring: KeyRing, aws_env: None
) -> None:
    store = make_store(f"s3://{s3_bucket}/vault/prod", endpoint_url=moto_endpoint, keyring=keyring)
    assert isinstance(store.backend, S3Backend)
    assert store.backend.prefix == "vault/prod"
    store.check()
    store.put("x", b"over http", subject="sub-1")
    assert store.read_bytes("x") == b"over http"
    absent = make_store("s3://absent-bucket", endpoint_url=moto_endpoint, keyring=keyring)
    with pytest.raises(StorageUnavailable, match="'absent-bucket' does not exist"):
        absent.check()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("gs://bucket/x", "unsupported storage URL scheme 'gs'"),
        ("s3:///prefix", "has no bucket"),
        ("file://host/path", "file:///absolute/path"),
    ],
)
def test_storage_make_store_rejects_bad_urls(keyring: KeyRing, url: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        make_store(url, endpoint_url=None, keyring=keyring)


def test_storage_store_repr_has_no_secrets(store: EncryptedObjectStore, master_key: Any) -> None:
    assert master_key.key_id not in repr(store)
    assert "Store(" in repr(store)
