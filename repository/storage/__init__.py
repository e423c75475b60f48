"""Encrypted object storage (envelope encryption over local files or S3).

Public API
----------
Build a store::

    from repository.storage import KeyRing, MasterKey, make_store

    master = MasterKey.load(key_file)                    # or MasterKey.from_env()
    keyring = KeyRing(session_factory, master)           # table ``subject_keys``
    store = make_store("s3://bucket/prefix", endpoint_url=None, keyring=keyring)
    store.check()                                        # fail at start-up with a clear message

Use it::

    info = store.put("objects/ab/abcd.nii.gz", fileobj, subject="sub-0001")
    # -> StoredObjectInfo(key, size, sha256, key_id, stored_size): record it (StoredObject row)
    for chunk in store.open(info.key, expected_sha256=info.sha256):
        ...                                             # authenticated, streamed
    store.destroy_subject_key("sub-0001")                # crypto-shredding (erasure)
    report = check_fixity(store, [(key, sha256), ...])   # re-hash everything

* Object keys contain no identifiers; only ``[A-Za-z0-9/_.-]`` (see :mod:`.keys`).
* Objects with no subject use ``subject=SYSTEM`` (that key cannot be destroyed).
* ``open`` raises ``ObjectNotFound`` / ``KeyDestroyed`` / ``MasterKeyError`` eagerly, before
  anything is streamed; damage found while streaming raises ``IntegrityError`` and the last
  chunk is only released after the whole object (and ``expected_sha256``) verified.
* Writes are all-or-nothing on both backends (temp file + fsync + rename; S3 multipart
  aborted on failure).
* An erased subject's pseudonym cannot get a new key (``data_key`` raises ``KeyDestroyed``).
* ``keyring.rotate_master_key(new)`` re-wraps every live data key; rotating after an erasure
  (and destroying the old master key) makes the erased key in older database backups useless.
* Format and guarantees: :mod:`.crypto` and :class:`EncryptedObjectStore`.
* Errors: :mod:`.errors` (all subclasses of :class:`StorageError`).
"""

from .base import ObjectBackend
from .crypto import FORMAT_VERSION
from .errors import (
    IntegrityError,
    InvalidObjectKey,
    KeyDestroyed,
    KeyNotFound,
    MasterKeyError,
    ObjectNotFound,
    StorageError,
    StorageUnavailable,
)
from .fixity import FixityProblem, FixityReport, FixityStatus, check_fixity
from .keyring import (
    MASTER_KEY_ENV,
    SYSTEM,
    DataKey,
    KeyRing,
    MasterKey,
    generate_master_key_file,
)
from .keys import validate_key
from .local import LocalBackend
from .s3 import S3Backend
from .store import EncryptedObjectStore, StoredObjectInfo, make_backend, make_store

__all__ = [
    "FORMAT_VERSION",
    "MASTER_KEY_ENV",
    "SYSTEM",
    "DataKey",
    "EncryptedObjectStore",
    "FixityProblem",
    "FixityReport",
    "FixityStatus",
    "IntegrityError",
    "InvalidObjectKey",
    "KeyDestroyed",
    "KeyNotFound",
    "KeyRing",
    "LocalBackend",
    "MasterKey",
    "MasterKeyError",
    "ObjectBackend",
    "ObjectNotFound",
    "S3Backend",
    "StorageError",
    "StorageUnavailable",
    "StoredObjectInfo",
    "check_fixity",
    "generate_master_key_file",
    "make_backend",
    "make_store",
    "validate_key",
]
