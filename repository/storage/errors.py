"""Domain exceptions of the encrypted object store.

Every failure of :mod:`repository.storage` is a :class:`StorageError`; callers that map
errors to HTTP (one place, the API error handler) can rely on this hierarchy:

* :class:`StorageUnavailable` - the backend cannot be reached or used (directory missing or
  unwritable, S3 endpoint down, bucket absent, access denied). Retry-able / 503.
* :class:`ObjectNotFound` - no object under that key. 404.
* :class:`InvalidObjectKey` - the object key breaks the key rules (also a ``ValueError``). 400.
* :class:`IntegrityError` - the stored bytes are not what was written (bit flip, truncation,
  ciphertext moved to another key, sha256 mismatch, unknown format). Never retry-able.
* :class:`KeyDestroyed` - the data key was destroyed (crypto-shredded subject). 410.
* :class:`KeyNotFound` - no data key with that id / for that subject.
* :class:`MasterKeyError` - the master key is missing, unreadable, badly protected, of the
  wrong length, or not the key that wrapped the stored data keys.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error raised by :mod:`repository.storage`."""


class StorageUnavailable(StorageError):
    """The storage backend cannot be reached or used (the message says why and where)."""


class ObjectNotFound(StorageError):
    """No object is stored under the requested key."""

    def __init__(self, key: str, where: str = "") -> None:
        self.key = key
        suffix = f" in {where}" if where else ""
        super().__init__(f"object {key!r} not found{suffix}")


class InvalidObjectKey(StorageError, ValueError):
    """An object key breaks the key rules (characters, ``..``, absolute paths, length)."""


class IntegrityError(StorageError):
    """Stored bytes failed authentication or the recorded sha256 (corruption, tampering)."""


class KeyDestroyed(StorageError):
    """The data key was destroyed: the objects it protected are permanently unreadable."""


class KeyNotFound(StorageError):
    """No data key exists with the requested id or for the requested subject."""


class MasterKeyError(StorageError):
    """The master key is missing, badly protected, malformed or not the expected key."""
