"""Master key loading and the per-subject key ring (SQLite)."""

from __future__ import annotations

import base64
import os
import secrets
import sqlite3
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from repository.models.keys import SubjectKey
from repository.storage import (
    SYSTEM,
    KeyDestroyed,
    KeyNotFound,
    KeyRing,
    MasterKey,
    MasterKeyError,
    StorageError,
    StorageUnavailable,
    generate_master_key_file,
)

# --- master key -----------------------------------------------------------------------------


def test_storage_generate_master_key_file_mode_0600_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master.key"
    key = generate_master_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert MasterKey.from_file(path).key_id == key.key_id
    assert len(base64.b64decode(path.read_text())) == 32


def test_storage_generate_master_key_file_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    first = generate_master_key_file(path)
    with pytest.raises(MasterKeyError, match="already exists"):
        generate_master_key_file(path)
    assert MasterKey.from_file(path).key_id == first.key_id


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_storage_master_key_file_with_group_or_other_access_refused(
    tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "master.key"
    generate_master_key_file(path)
    path.chmod(mode)
    with pytest.raises(MasterKeyError, match=f"mode {mode:04o}.*chmod 600"):
        MasterKey.from_file(path)


@pytest.mark.parametrize("n_bytes", [16, 31, 33, 64])
def test_storage_master_key_file_wrong_length_refused(tmp_path: Path, n_bytes: int) -> None:
    path = tmp_path / "master.key"
    path.write_text(base64.b64encode(secrets.token_bytes(n_bytes)).decode())
    path.chmod(0o600)
    with pytest.raises(MasterKeyError, match=f"{n_bytes} bytes; expected 32"):
        MasterKey.from_file(path)


def test_storage_master_key_file_missing_or_garbage(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="does not exist"):
        MasterKey.from_file(tmp_path / "nope.key")
    path = tmp_path / "master.key"
    path.write_text("not base64 at all !!!")
    path.chmod(0o600)
    with pytest.raises(MasterKeyError, match="not valid base64"):
        MasterKey.from_file(path)
    with pytest.raises(MasterKeyError, match="not a regular file"):
        MasterKey.from_file(tmp_path)


def test_storage_master_key_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    raw = secrets.token_bytes(32)
    monkeypatch.setenv("MYOVAULT_MASTER_KEY", base64.urlsafe_b64encode(raw).decode())
    env_key = MasterKey.from_env()
    assert env_key.key_id == MasterKey(raw).key_id
    # load(): the environment wins over the key file (production).
    assert MasterKey.load(tmp_path / "absent.key").key_id == env_key.key_id
    monkeypatch.delenv("MYOVAULT_MASTER_KEY")
    with pytest.raises(MasterKeyError, match="MYOVAULT_MASTER_KEY is not set"):
        MasterKey.from_env()
    with pytest.raises(MasterKeyError, match="no master key configured"):
        MasterKey.load(None)
    monkeypatch.setenv("MYOVAULT_MASTER_KEY", base64.b64encode(b"short").decode())
    with pytest.raises(MasterKeyError, match="environment variable MYOVAULT_MASTER_KEY"):
        MasterKey.from_env()


def test_storage_master_key_repr_hides_key() -> None:
    raw = secrets.token_bytes(32)
    key = MasterKey(raw)
    assert raw.hex() not in repr(key)
    assert base64.b64encode(raw).decode() not in repr(key)


# --- key ring -------------------------------------------------------------------------------


def test_storage_keyring_creates_one_key_per_subject(keyring: KeyRing) -> None:
    a1 = keyring.data_key("sub-001")
    a2 = keyring.data_key("sub-001", create=False)
    b = keyring.data_key("sub-002")
    system = keyring.data_key(SYSTEM)
    assert a1 == a2
    assert len({a1.key, b.key, system.key}) == 3
    assert len({a1.key_id, b.key_id, system.key_id}) == 3
    assert len(a1.key) == 32
    assert a1.key.hex() not in repr(a1)
    assert keyring.key_by_id(b.key_id) == b.key


def test_storage_keyring_stores_only_wrapped_keys(
    keyring: KeyRing, session_factory: Callable[[], Session]
) -> None:
    key = keyring.data_key("sub-001")
    with session_factory() as session:
        row = session.scalars(select(SubjectKey)).one()
    assert key.key not in row.wrapped_key
    assert row.master_key_id == keyring.master_key.key_id
    assert row.destroyed_at is None


def test_storage_keyring_unknown(keyring: KeyRing) -> None:
    with pytest.raises(KeyNotFound, match="has no data key"):
        keyring.data_key("sub-404", create=False)
    with pytest.raises(KeyNotFound, match="no data key with id"):
        keyring.key_by_id("0" * 32)


@pytest.mark.parametrize("bad", ["", "a b", "Smith^John", "*system", "x" * 129, "../x"])
def test_storage_keyring_rejects_bad_subject(keyring: KeyRing, bad: str) -> None:
    with pytest.raises(StorageError, match="subject must be a pseudonym"):
        keyring.data_key(bad)


def test_storage_keyring_accepts_integer_subject_ids(keyring: KeyRing) -> None:
    assert keyring.data_key(42) == keyring.data_key("42")


def test_storage_keyring_destroy(keyring: KeyRing, session_factory: Callable[[], Session]) -> None:
    doomed = keyring.data_key("sub-001")
    kept = keyring.data_key("sub-002")
    assert keyring.destroy_subject_key("sub-001") == 1
    assert keyring.destroy_subject_key("sub-001") == 0
    assert keyring.is_destroyed("sub-001")
    assert not keyring.is_destroyed("sub-002")
    with pytest.raises(KeyDestroyed, match="destroyed at"):
        keyring.key_by_id(doomed.key_id)
    with pytest.raises(KeyDestroyed):
        keyring.data_key("sub-001")  # an erased pseudonym gets no new key
    assert keyring.key_by_id(kept.key_id) == kept.key
    with session_factory() as session:
        row = session.scalars(select(SubjectKey).where(SubjectKey.key_id == doomed.key_id)).one()
    assert row.wrapped_key == bytes(len(row.wrapped_key))  # overwritten, not just flagged
    assert row.destroyed_at is not None


def test_storage_keyring_system_key_cannot_be_destroyed(keyring: KeyRing) -> None:
    keyring.data_key(SYSTEM)
    with pytest.raises(StorageError, match="system data key cannot be destroyed"):
        keyring.destroy_subject_key(SYSTEM)


def test_storage_keyring_wrong_master_key(
    keyring: KeyRing, session_factory: Callable[[], Session]
) -> None:
    key = keyring.data_key("sub-001")
    other = KeyRing(session_factory, MasterKey(os.urandom(32), source="key file /wrong.key"))
    with pytest.raises(MasterKeyError, match="wrong key file or MYOVAULT_MASTER_KEY"):
        other.key_by_id(key.key_id)
    with pytest.raises(MasterKeyError, match="/wrong.key"):
        other.check()
    keyring.check()  # the right key passes


def test_storage_keyring_wrapped_keys_cannot_be_swapped_between_subjects(
    keyring: KeyRing, session_factory: Callable[[], Session]
) -> None:
    """Copying subject A's wrapped key into subject B's row does not yield A's key for B."""
    a = keyring.data_key("sub-00a")
    b = keyring.data_key("sub-00b")
    with session_factory() as session:
        rows = {r.subject: r for r in session.scalars(select(SubjectKey))}
        rows["sub-00b"].wrapped_key = rows["sub-00a"].wrapped_key
        session.commit()
    with pytest.raises(MasterKeyError, match="does not authenticate"):
        keyring.key_by_id(b.key_id)
    assert keyring.key_by_id(a.key_id) == a.key


def test_storage_keyring_one_active_key_per_subject_enforced(
    keyring: KeyRing, session_factory: Callable[[], Session]
) -> None:
    keyring.data_key("sub-001")
    with session_factory() as session:
        row = session.scalars(select(SubjectKey)).one()
        session.add(
            SubjectKey(
                key_id="f" * 32,
                subject="sub-001",
                algorithm=row.algorithm,
                master_key_id=row.master_key_id,
                wrapped_key=row.wrapped_key,
                created_at=row.created_at,
            )
        )
        with pytest.raises(sa_exc.IntegrityError):
            session.commit()


def test_storage_keyring_rotate_master_key(
    keyring: KeyRing, session_factory: Callable[[], Session], master_key: MasterKey
) -> None:
    a = keyring.data_key("sub-001")
    b = keyring.data_key("sub-002")
    keyring.destroy_subject_key("sub-002")
    new = MasterKey(os.urandom(32), source="new key file")
    assert keyring.rotate_master_key(new) == 1  # destroyed keys are not re-wrapped
    assert keyring.master_key is new
    assert keyring.key_by_id(a.key_id) == a.key
    with pytest.raises(KeyDestroyed):
        keyring.key_by_id(b.key_id)
    with pytest.raises(MasterKeyError, match="wrong key file"):
        KeyRing(session_factory, master_key).key_by_id(a.key_id)
    with pytest.raises(MasterKeyError, match="is the current master key"):
        keyring.rotate_master_key(new)


def test_storage_erasure_reaches_database_backups_after_rotation(
    tmp_path: Path, engine: Any, master_key: MasterKey
) -> None:
    """A key-table backup taken before an erasure still holds the wrapped key; rotating the
    master key (and destroying the old one) makes that backup useless."""
    keyring = KeyRing(sessionmaker(engine, expire_on_commit=False), master_key)
    doomed = keyring.data_key("sub-erased")
    with sessionmaker(engine)() as session:
        wrapped = session.scalars(select(SubjectKey.wrapped_key)).one()
    backup_file = tmp_path / "backup.sqlite3"
    live_file = Path(str(engine.url.database))
    with sqlite3.connect(live_file) as live, sqlite3.connect(backup_file) as copy:
        live.backup(copy)  # last night's database backup (SQLite online backup API)

    keyring.destroy_subject_key("sub-erased")
    backup_engine = create_engine(f"sqlite:///{backup_file}")
    try:
        from_backup = KeyRing(sessionmaker(backup_engine), master_key)
        assert from_backup.key_by_id(doomed.key_id) == doomed.key  # the gap rotation closes
        keyring.rotate_master_key(MasterKey(os.urandom(32)))
        del master_key  # the old master key is destroyed; only the new one remains
        restored = KeyRing(sessionmaker(backup_engine), keyring.master_key)
        with pytest.raises(MasterKeyError):
            restored.key_by_id(doomed.key_id)
    finally:
        backup_engine.dispose()
    # The live database files (main file and write-ahead log) no longer hold the old wrapped
    # key: overwritten with secure_delete, WAL checkpointed and truncated.
    assert wrapped in backup_file.read_bytes()
    for path in (live_file, live_file.with_name(live_file.name + "-wal")):
        assert not path.exists() or wrapped not in path.read_bytes()


def test_storage_keyring_concurrent_first_use_yields_one_key(keyring: KeyRing) -> None:
    """Workers racing to create a subject's first key all end up with the same key."""
    barrier = threading.Barrier(6)

    def first_use() -> str:
        barrier.wait()
        return keyring.data_key("sub-race").key_id

    with ThreadPoolExecutor(max_workers=6) as pool:
        key_ids = set(pool.map(lambda _i: first_use(), range(6)))
    assert len(key_ids) == 1


def test_storage_keyring_database_unavailable(tmp_path: Path, master_key: MasterKey) -> None:
    """A key table that cannot be reached is a clear StorageUnavailable, never a stack of
    driver errors (SQLite here; PostgreSQL raises the same OperationalError class)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'keys.sqlite3'}")
    try:
        keyring = KeyRing(sessionmaker(engine), master_key)
        with pytest.raises(StorageUnavailable, match="key table database is unavailable"):
            keyring.data_key("sub-001")
        with pytest.raises(StorageUnavailable, match="unable to open database file"):
            keyring.key_by_id("0" * 32)
    finally:
        engine.dispose()
