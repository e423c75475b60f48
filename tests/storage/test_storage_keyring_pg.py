"""The key ring on PostgreSQL (schema from the Alembic migration, not create_all)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import sessionmaker

from repository.db import make_engine
from repository.models.keys import SubjectKey
from repository.storage import (
    EncryptedObjectStore,
    KeyDestroyed,
    KeyRing,
    LocalBackend,
    MasterKey,
    MasterKeyError,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_engine(pg_database: str) -> Iterator[Engine]:
    engine = make_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(delete(SubjectKey))
    yield engine
    engine.dispose()


@pytest.fixture
def pg_keyring(pg_engine: Engine, master_key: MasterKey) -> KeyRing:
    return KeyRing(sessionmaker(pg_engine, expire_on_commit=False), master_key)


def test_storage_pg_keyring_life_cycle(pg_keyring: KeyRing, pg_engine: Engine) -> None:
    a = pg_keyring.data_key("sub-001")
    assert pg_keyring.data_key("sub-001") == a
    assert pg_keyring.key_by_id(a.key_id) == a.key
    assert pg_keyring.destroy_subject_key("sub-001") == 1
    with pytest.raises(KeyDestroyed):
        pg_keyring.key_by_id(a.key_id)
    with pytest.raises(KeyDestroyed):
        pg_keyring.data_key("sub-001")
    with pg_engine.connect() as conn:
        wrapped = conn.execute(select(SubjectKey.wrapped_key)).scalar_one()
    assert bytes(wrapped) == bytes(len(wrapped))


def test_storage_pg_concurrent_first_use(pg_keyring: KeyRing) -> None:
    barrier = threading.Barrier(6)

    def first_use(_index: int) -> str:
        barrier.wait()
        return pg_keyring.data_key("sub-race").key_id

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert len(set(pool.map(first_use, range(6)))) == 1


def test_storage_pg_one_active_key_per_subject(pg_keyring: KeyRing, pg_engine: Engine) -> None:
    pg_keyring.data_key("sub-001")
    with sessionmaker(pg_engine)() as session:
        row = session.scalars(select(SubjectKey)).one()
        session.add(
            SubjectKey(
                key_id="e" * 32,
                subject="sub-001",
                algorithm=row.algorithm,
                master_key_id=row.master_key_id,
                wrapped_key=row.wrapped_key,
                created_at=row.created_at,
            )
        )
        with pytest.raises(sa_exc.IntegrityError):
            session.commit()


def test_storage_pg_rotation_and_wrong_master_key(
    pg_keyring: KeyRing, pg_engine: Engine, master_key: MasterKey
) -> None:
    a = pg_keyring.data_key("sub-001")
    pg_keyring.rotate_master_key(MasterKey(os.urandom(32)))
    assert pg_keyring.key_by_id(a.key_id) == a.key
    stale = KeyRing(sessionmaker(pg_engine), master_key)
    with pytest.raises(MasterKeyError, match="wrong key file"):
        stale.check()


def test_storage_pg_store_shredding(pg_keyring: KeyRing, tmp_path: Path) -> None:
    store = EncryptedObjectStore(LocalBackend(tmp_path / "objects", create=True), pg_keyring)
    store.put("objects/a", b"doomed", subject="sub-a")
    store.put("objects/b", b"kept", subject="sub-b")
    store.destroy_subject_key("sub-a")
    with pytest.raises(KeyDestroyed):
        store.open("objects/a")
    assert store.read_bytes("objects/b") == b"kept"
