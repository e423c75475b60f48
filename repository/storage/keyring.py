"""Master key and per-subject data keys (envelope encryption).

* :class:`MasterKey` - 32 random bytes kept outside the database: a key file (embedded mode;
  base64 text, mode 0600) or a base64 value from the environment (production,
  ``MYOVAULT_MASTER_KEY``, e.g. injected from a KMS/secret store).
* :class:`KeyRing` - per-subject AES-256 data keys stored wrapped (AES-256-GCM, AAD binding the
  key id and the subject) in table ``subject_keys``. Destroying a subject's key
  (crypto-shredding) makes every object encrypted under it unreadable wherever a copy lives.

Unwrapped keys are never cached across calls, so a key destroyed by one process is refused by
every other process from its next read on.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, Engine, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from repository.models.keys import SubjectKey

from .errors import KeyDestroyed, KeyNotFound, MasterKeyError, StorageError, StorageUnavailable

MASTER_KEY_BYTES = 32
DATA_KEY_BYTES = 32
MASTER_KEY_ENV = "MYOVAULT_MASTER_KEY"
WRAP_ALGORITHM = "A256GCM-wrap-v1"
#: Scope of objects that belong to no subject (reports, cohort-level files, ...).
SYSTEM = "*system*"
_SUBJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")
_WRAP_NONCE_BYTES = 12
#: nonce (12) + AES-GCM ciphertext of a 32-byte key (32) + tag (16).
WRAPPED_KEY_BYTES = _WRAP_NONCE_BYTES + DATA_KEY_BYTES + 16


class MasterKey:
    """The key-encryption key. Never stored in the database; ``repr`` never shows it."""

    __slots__ = ("_aead", "_key", "key_id", "source")

    def __init__(self, key: bytes, *, source: str = "memory") -> None:
        if len(key) != MASTER_KEY_BYTES:
            raise MasterKeyError(
                f"master key from {source} is {len(key)} bytes; expected {MASTER_KEY_BYTES}"
            )
        self._key = bytes(key)
        self._aead = AESGCM(self._key)
        self.source = source
        #: Public fingerprint (not secret) recorded with every wrapped key.
        self.key_id = hmac.new(self._key, b"myovault master key id v1", hashlib.sha256).hexdigest()[
            :32
        ]

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r}, source={self.source!r})"

    @classmethod
    def from_base64(cls, value: str, *, source: str = MASTER_KEY_ENV) -> MasterKey:
        """Decode a base64 (standard or URL-safe) master key value."""
        text = value.strip()
        try:
            raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MasterKeyError(f"master key from {source} is not valid base64") from exc
        if len(raw) != MASTER_KEY_BYTES:
            raise MasterKeyError(
                f"master key from {source} decodes to {len(raw)} bytes; expected "
                f"{MASTER_KEY_BYTES} (generate one with `myovault init`)"
            )
        return cls(raw, source=source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> MasterKey:
        """Load a key file written by :func:`generate_master_key_file`.

        Refuses a missing file, a non-regular file, a file readable or writable by group or
        others, and content that is not base64 of exactly 32 bytes.
        """
        key_path = Path(path)
        try:
            info = key_path.stat()
        except FileNotFoundError:
            raise MasterKeyError(f"master key file {key_path} does not exist") from None
        except OSError as exc:
            raise MasterKeyError(f"cannot access master key file {key_path}: {exc}") from exc
        if not stat.S_ISREG(info.st_mode):
            raise MasterKeyError(f"master key file {key_path} is not a regular file")
        if info.st_mode & 0o077:
            raise MasterKeyError(
                f"master key file {key_path} has mode {stat.S_IMODE(info.st_mode):04o}; it must "
                f"not be accessible by group or others (run: chmod 600 {key_path})"
            )
        try:
            text = key_path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise MasterKeyError(f"cannot read master key file {key_path}: {exc}") from exc
        return cls.from_base64(text, source=f"key file {key_path}")

    @classmethod
    def from_env(cls, var: str = MASTER_KEY_ENV) -> MasterKey:
        """Load the master key from the base64 value of environment variable ``var``."""
        value = os.environ.get(var)
        if not value:
            raise MasterKeyError(f"environment variable {var} is not set")
        return cls.from_base64(value, source=f"environment variable {var}")

    @classmethod
    def load(
        cls, key_file: str | os.PathLike[str] | None = None, *, env_var: str = MASTER_KEY_ENV
    ) -> MasterKey:
        """Production value from ``env_var`` if set, else the key file; error if neither."""
        if os.environ.get(env_var):
            return cls.from_env(env_var)
        if key_file is None:
            raise MasterKeyError(f"no master key configured: set {env_var} or a key file")
        return cls.from_file(key_file)

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        """Encrypt a data key; ``context`` is authenticated (binds key id and subject)."""
        nonce = os.urandom(_WRAP_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data_key, context)

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        """Decrypt a wrapped data key; ``MasterKeyError`` if it does not authenticate."""
        try:
            return self._aead.decrypt(blob[:_WRAP_NONCE_BYTES], blob[_WRAP_NONCE_BYTES:], context)
        except (InvalidTag, ValueError):
            raise MasterKeyError(
                "a wrapped data key does not authenticate under the loaded master key "
                f"({self.source}): wrong master key or corrupted key table"
            ) from None


def generate_master_key_file(path: str | os.PathLike[str]) -> MasterKey:
    """Create a new random master key file (mode 0600, base64 text) and return the key.

    Refuses to overwrite an existing file: replacing a master key makes every stored object
    unreadable.
    """
    key_path = Path(path)
    key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    raw = secrets.token_bytes(MASTER_KEY_BYTES)
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise MasterKeyError(
            f"master key file {key_path} already exists; refusing to overwrite it"
        ) from None
    except OSError as exc:
        raise MasterKeyError(f"cannot create master key file {key_path}: {exc}") from exc
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(base64.b64encode(raw).decode("ascii") + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return MasterKey(raw, source=f"key file {key_path}")


@dataclass(frozen=True)
class DataKey:
    """An unwrapped data key; ``repr`` hides the key bytes."""

    key_id: str
    subject: str
    key: bytes = field(repr=False)


def normalise_subject(subject: str | int) -> str:
    """Validate a subject pseudonym/id (or :data:`SYSTEM`) and return it as a string."""
    value = str(subject) if isinstance(subject, int) and not isinstance(subject, bool) else subject
    if value == SYSTEM:
        return value
    if not isinstance(value, str) or not _SUBJECT.fullmatch(value):
        raise StorageError(
            "subject must be a pseudonym of 1-128 characters from A-Z a-z 0-9 _ . : - "
            f"(or keyring.SYSTEM), got {value!r}"
        )
    return value


def _wrap_context(key_id: str, subject: str) -> bytes:
    return b"myovault/subject-key/v1\x00" + key_id.encode("ascii") + b"\x00" + subject.encode()


def _sqlite_checkpoint(bind: Engine | Connection) -> None:
    """Fold the WAL into the database file and truncate it.

    Best effort: the destruction is already committed, so a busy database only delays the
    moment the old page leaves the WAL (SQLite checkpoints on its own later).
    """
    engine = bind if isinstance(bind, Engine) else bind.engine
    with (
        contextlib.suppress(sa_exc.OperationalError),
        engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
    ):
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


class KeyRing:
    """Per-subject data keys stored wrapped by the master key in ``subject_keys``.

    Parameters
    ----------
    session_factory
        Returns a new SQLAlchemy ``Session`` (e.g. a ``sessionmaker``). The keyring commits
        its own short transactions: a key is durable before any object is encrypted with it.
    master_key
        The loaded :class:`MasterKey`.
    """

    def __init__(self, session_factory: Callable[[], Session], master_key: MasterKey) -> None:
        self._sessions = session_factory
        self.master_key = master_key

    @contextlib.contextmanager
    def _session(self) -> Iterator[Session]:
        """A session whose connection failures surface as ``StorageUnavailable``."""
        try:
            with self._sessions() as session:
                yield session
        except sa_exc.OperationalError as exc:
            detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else ""
            raise StorageUnavailable(
                f"the key table database is unavailable ({type(exc.orig).__name__}: {detail})"
            ) from exc

    def _unwrap(self, row: SubjectKey) -> bytes:
        if row.destroyed_at is not None:
            raise KeyDestroyed(
                f"data key {row.key_id} of subject {row.subject!r} was destroyed at "
                f"{row.destroyed_at.isoformat()}; its objects are permanently unreadable"
            )
        if row.algorithm != WRAP_ALGORITHM:
            raise MasterKeyError(f"data key {row.key_id} uses unknown wrapping {row.algorithm!r}")
        if row.master_key_id != self.master_key.key_id:
            raise MasterKeyError(
                f"data key {row.key_id} was wrapped by master key {row.master_key_id} but the "
                f"loaded master key ({self.master_key.source}) is {self.master_key.key_id}: "
                "wrong key file or MYOVAULT_MASTER_KEY"
            )
        key = self.master_key.unwrap(row.wrapped_key, _wrap_context(row.key_id, row.subject))
        if len(key) != DATA_KEY_BYTES:
            raise MasterKeyError(f"data key {row.key_id} has the wrong length")
        return key

    def data_key(self, subject: str | int, create: bool = True) -> DataKey:
        """The subject's active data key, created on first use when ``create`` is true.

        Raises ``KeyDestroyed`` if the subject's key was destroyed (an erased subject cannot
        receive new data under the same pseudonym) and ``KeyNotFound`` if it has no key and
        ``create`` is false.
        """
        name = normalise_subject(subject)
        for _attempt in range(3):
            with self._session() as session:
                row = session.scalars(
                    select(SubjectKey)
                    .where(SubjectKey.subject == name)
                    .order_by(SubjectKey.destroyed_at.is_(None).desc(), SubjectKey.id.desc())
                    .limit(1)
                ).first()
                if row is not None:
                    return DataKey(row.key_id, name, self._unwrap(row))
            if not create:
                raise KeyNotFound(f"subject {name!r} has no data key")
            key = secrets.token_bytes(DATA_KEY_BYTES)
            key_id = secrets.token_hex(16)
            # A fresh transaction whose first statement is the INSERT: on SQLite (WAL) a read
            # transaction that later writes fails with "database is locked" under concurrency,
            # while a transaction that starts by writing waits for the lock (busy timeout).
            try:
                with self._session() as session:
                    session.add(
                        SubjectKey(
                            key_id=key_id,
                            subject=name,
                            algorithm=WRAP_ALGORITHM,
                            master_key_id=self.master_key.key_id,
                            wrapped_key=self.master_key.wrap(key, _wrap_context(key_id, name)),
                            created_at=datetime.now(UTC),
                        )
                    )
                    session.commit()
            except sa_exc.IntegrityError:
                continue  # another worker created the subject's key first: read theirs
            return DataKey(key_id, name, key)
        raise StorageError(f"could not create a data key for subject {name!r}")

    def key_by_id(self, key_id: str) -> bytes:
        """Unwrap the data key with id ``key_id`` (as found in an object header)."""
        with self._session() as session:
            row = session.scalars(select(SubjectKey).where(SubjectKey.key_id == key_id)).first()
            if row is None:
                raise KeyNotFound(f"no data key with id {key_id!r} in the key table")
            return self._unwrap(row)

    def destroy_subject_key(self, subject: str | int) -> int:
        """Crypto-shred a subject: overwrite and mark destroyed every key of the subject.

        Returns the number of keys destroyed (0 if the subject had none or was already
        destroyed). Irreversible. The system key cannot be destroyed.

        On SQLite the connection is switched to ``PRAGMA secure_delete`` and the write-ahead
        log is checkpointed and truncated afterwards, so the old wrapped value leaves the live
        database files (unless another connection holds an old snapshot open at that
        moment). Copies of the key table made *before* the destruction (database backups,
        PostgreSQL dead tuples until VACUUM) still hold the wrapped key; they become useless
        once the master key is rotated (:meth:`rotate_master_key`) and the old master key is
        destroyed.
        """
        name = normalise_subject(subject)
        if name == SYSTEM:
            raise StorageError("the system data key cannot be destroyed")
        now = datetime.now(UTC)
        with self._session() as session:
            if session.get_bind().dialect.name == "sqlite":
                session.execute(text("PRAGMA secure_delete = ON"))
            # One UPDATE (write first, see data_key); every wrapped key has the same length,
            # so the zeros overwrite the old value in place.
            result = session.execute(
                update(SubjectKey)
                .where(SubjectKey.subject == name, SubjectKey.destroyed_at.is_(None))
                .values(wrapped_key=bytes(WRAPPED_KEY_BYTES), destroyed_at=now)
                .execution_options(synchronize_session=False)
            )
            destroyed = int(getattr(result, "rowcount", 0) or 0)
            session.commit()
            bind = session.get_bind()
        if destroyed and bind.dialect.name == "sqlite":
            _sqlite_checkpoint(bind)
        return destroyed

    def rotate_master_key(self, new_master_key: MasterKey) -> int:
        """Re-wrap every live data key under ``new_master_key`` in one transaction.

        Afterwards this keyring uses the new key; the caller installs the new key file / secret
        and destroys the old one. Rotation after an erasure is what makes the erased subject's
        wrapped key in older database backups unrecoverable. Returns the number of keys
        re-wrapped. Objects are not touched (their data keys do not change).
        """
        if new_master_key.key_id == self.master_key.key_id:
            raise MasterKeyError("the new master key is the current master key")
        with self._session() as session:
            # Take the write lock first (a no-op write), then read and re-wrap.
            session.execute(
                update(SubjectKey)
                .where(SubjectKey.destroyed_at.is_(None))
                .values(master_key_id=SubjectKey.master_key_id)
                .execution_options(synchronize_session=False)
            )
            rows = session.scalars(
                select(SubjectKey).where(SubjectKey.destroyed_at.is_(None)).with_for_update()
            ).all()
            for row in rows:
                key = self._unwrap(row)
                context = _wrap_context(row.key_id, row.subject)
                row.wrapped_key = new_master_key.wrap(key, context)
                row.master_key_id = new_master_key.key_id
            session.commit()
        self.master_key = new_master_key
        return len(rows)

    def is_destroyed(self, subject: str | int) -> bool:
        """Whether the subject had a key and it was destroyed."""
        name = normalise_subject(subject)
        with self._session() as session:
            rows = session.scalars(select(SubjectKey).where(SubjectKey.subject == name)).all()
            return bool(rows) and all(row.destroyed_at is not None for row in rows)

    def check(self) -> None:
        """Start-up check: the loaded master key unwraps the stored keys.

        Raises ``MasterKeyError`` when the key table was written with another master key.
        """
        with self._session() as session:
            row = session.scalars(
                select(SubjectKey).where(SubjectKey.destroyed_at.is_(None)).limit(1)
            ).first()
            if row is not None:
                self._unwrap(row)
