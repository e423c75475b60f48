"""The encrypted object store: envelope encryption over a raw backend."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from .base import READ_CHUNK_BYTES, ObjectBackend
from .crypto import DEFAULT_CHUNK_LOG2, decrypt_stream, encrypt_stream
from .errors import IntegrityError, StorageError
from .keyring import KeyRing
from .keys import validate_key
from .local import LocalBackend
from .s3 import S3Backend

Source = bytes | bytearray | memoryview | BinaryIO | Iterable[bytes]


@dataclass(frozen=True)
class StoredObjectInfo:
    """What to record in the database for a stored object.

    Attributes
    ----------
    key
        Object key.
    size
        Plaintext size in bytes.
    sha256
        Hex sha256 of the plaintext.
    key_id
        Id of the data key the object is encrypted with.
    stored_size
        Ciphertext size in bytes (what the backend holds).
    """

    key: str
    size: int
    sha256: str
    key_id: str
    stored_size: int


def _iter_source(source: Source) -> Iterator[bytes | bytearray | memoryview]:
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")
        for start in range(0, max(len(view), 1), READ_CHUNK_BYTES):
            yield view[start : start + READ_CHUNK_BYTES]  # zero-copy; re-chunked downstream
        return
    read = getattr(source, "read", None)
    if callable(read):
        while True:
            chunk = read(READ_CHUNK_BYTES)
            if not chunk:
                return
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError("file sources must be opened in binary mode")
            yield chunk
    else:
        for chunk in source:  # type: ignore[union-attr]
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"source yielded {type(chunk).__name__}, expected bytes")
            yield chunk


class EncryptedObjectStore:
    """Objects encrypted with their subject's data key, on any :class:`ObjectBackend`.

    Integrity guarantee of :meth:`open`: every byte it yields has been authenticated (AES-GCM)
    as written by MyoVault under this object key, at this position, with this data key; the
    final chunk is held back until the end of the stream is authenticated and, if
    ``expected_sha256`` is given, the sha256 of the whole plaintext matches. Corruption,
    truncation, swapping, or a hash mismatch therefore always ends the iteration with
    :class:`IntegrityError` instead of a normal end - a consumer that only acts on a complete
    iteration (or uses :meth:`read_bytes`) never acts on wrong bytes. Nothing is buffered
    beyond one chunk.
    """

    def __init__(
        self, backend: ObjectBackend, keyring: KeyRing, *, chunk_log2: int = DEFAULT_CHUNK_LOG2
    ) -> None:
        self.backend = backend
        self.keyring = keyring
        self.chunk_log2 = chunk_log2

    def __repr__(self) -> str:
        return f"EncryptedObjectStore({self.backend.describe()!r})"

    def describe(self) -> str:
        return self.backend.describe()

    def check(self) -> None:
        """Health check of the backend and the master key (raises on misconfiguration)."""
        self.backend.check()
        self.keyring.check()

    def put(self, key: str, source: Source, *, subject: str | int) -> StoredObjectInfo:
        """Encrypt ``source`` under ``subject``'s data key and store it atomically at ``key``.

        ``source`` may be bytes, a binary file object (read in 1 MiB pieces) or an iterable of
        bytes. Replaces an existing object under ``key`` only once the new one is complete.
        """
        validate_key(key)
        data_key = self.keyring.data_key(subject, create=True)
        digest = hashlib.sha256()
        size = 0

        def account(chunk: memoryview) -> None:
            nonlocal size
            digest.update(chunk)
            size += len(chunk)

        ciphertext = encrypt_stream(
            data_key.key,
            data_key.key_id,
            key,
            _iter_source(source),
            chunk_log2=self.chunk_log2,
            on_plaintext=account,
        )
        stored_size = self.backend.put_stream(key, ciphertext)
        return StoredObjectInfo(key, size, digest.hexdigest(), data_key.key_id, stored_size)

    def open(self, key: str, *, expected_sha256: str | None = None) -> Iterator[bytes]:
        """Stream the plaintext of ``key``, verifying as it goes (see the class docstring).

        Raises immediately (before returning the iterator) ``ObjectNotFound`` if absent,
        ``KeyDestroyed`` for a crypto-shredded subject, ``KeyNotFound`` / ``MasterKeyError``
        for key problems and ``IntegrityError`` for a damaged header; raises
        ``IntegrityError`` during iteration for damaged content or a sha256 mismatch.
        """
        validate_key(key)
        if expected_sha256 is not None:
            expected_sha256 = expected_sha256.lower()
            if len(expected_sha256) != 64:
                raise StorageError("expected_sha256 must be 64 hex characters")
        ciphertext = self.backend.get_stream(key)
        try:
            plaintext = decrypt_stream(self.keyring.key_by_id, key, ciphertext)
        except BaseException:
            _close(ciphertext)
            raise
        return self._verified(key, ciphertext, plaintext, expected_sha256)

    def _verified(
        self,
        key: str,
        ciphertext: Iterator[bytes],
        plaintext: Iterator[bytes],
        expected_sha256: str | None,
    ) -> Iterator[bytes]:
        digest = hashlib.sha256()
        held: bytes | None = None
        try:
            for chunk in plaintext:
                digest.update(chunk)
                if held is not None:
                    yield held
                held = chunk
        finally:
            _close(ciphertext)
        if expected_sha256 is not None and not hmac.compare_digest(
            digest.hexdigest(), expected_sha256
        ):
            raise IntegrityError(
                f"object {key!r} has sha256 {digest.hexdigest()} but {expected_sha256} was "
                "recorded: it was replaced or the record is wrong"
            )
        if held:
            yield held

    def read_bytes(self, key: str, *, expected_sha256: str | None = None) -> bytes:
        """The whole verified plaintext (small objects only)."""
        return b"".join(self.open(key, expected_sha256=expected_sha256))

    def copy_to_file(
        self, key: str, path: str | os.PathLike[str], *, expected_sha256: str | None = None
    ) -> int:
        """Decrypt ``key`` into ``path`` atomically (temp file + rename); return its size.

        The destination appears only if the whole object verified.
        """
        target = os.fspath(path)
        tmp = f"{target}.partial-{secrets.token_hex(8)}"
        size = 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in self.open(key, expected_sha256=expected_sha256):
                    fh.write(chunk)
                    size += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return size

    def delete(self, key: str) -> None:
        """Delete the object (absent keys are not an error)."""
        self.backend.delete(key)

    def exists(self, key: str) -> bool:
        return self.backend.exists(key)

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        return self.backend.iter_keys(prefix)

    def destroy_subject_key(self, subject: str | int) -> int:
        """Crypto-shred ``subject``: all their objects, in every copy, become unreadable."""
        return self.keyring.destroy_subject_key(subject)


def _close(stream: Iterator[bytes]) -> None:
    """Close a backend stream (releases its file handle or HTTP connection)."""
    close = getattr(stream, "close", None)
    if callable(close):
        close()


def make_backend(
    storage_url: str, *, endpoint_url: str | None = None, create: bool = False
) -> ObjectBackend:
    """Backend for a storage URL: a path or ``file://`` URL, or ``s3://bucket/prefix``.

    ``create`` creates a missing local directory (``myovault init``). Unknown schemes fail.
    """
    if not storage_url:
        raise StorageError("storage URL is empty (set MYOVAULT_STORAGE)")
    parts = urlsplit(storage_url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise StorageError(f"storage URL {storage_url!r} has no bucket (s3://bucket/prefix)")
        return S3Backend(parts.netloc, parts.path.strip("/"), endpoint_url=endpoint_url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"file storage URL {storage_url!r} must be file:///absolute/path")
        return LocalBackend(unquote(parts.path), create=create)
    if parts.scheme == "" or (len(parts.scheme) == 1 and os.name == "nt"):
        return LocalBackend(storage_url, create=create)
    raise StorageError(
        f"unsupported storage URL scheme {parts.scheme!r} in {storage_url!r} "
        "(use a path, file:///path or s3://bucket/prefix)"
    )


def make_store(
    storage_url: str,
    *,
    endpoint_url: str | None = None,
    keyring: KeyRing,
    create: bool = False,
    chunk_log2: int = DEFAULT_CHUNK_LOG2,
) -> EncryptedObjectStore:
    """The encrypted store for ``storage_url`` (see :func:`make_backend`)."""
    backend = make_backend(storage_url, endpoint_url=endpoint_url, create=create)
    return EncryptedObjectStore(backend, keyring, chunk_log2=chunk_log2)
