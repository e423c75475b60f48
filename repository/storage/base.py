"""The raw-bytes backend protocol every object store backend implements."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

#: Size of the pieces a backend yields from ``get_stream`` (bytes).
READ_CHUNK_BYTES = 1 << 20


@runtime_checkable
class ObjectBackend(Protocol):
    """Raw byte storage addressed by validated object keys.

    Backends know nothing about encryption. Writes are all-or-nothing: after a failed
    ``put_stream`` (source error, crash, endpoint down) no partial object is visible under the
    key and any previous object under that key is unchanged.
    """

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        """Store the concatenation of ``chunks`` under ``key`` atomically; return its size."""
        ...

    def get_stream(self, key: str) -> Iterator[bytes]:
        """Stream the object's bytes; raises ``ObjectNotFound`` (eagerly) if it is absent."""
        ...

    def delete(self, key: str) -> None:
        """Delete the object; deleting an absent key is not an error."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        """Yield every stored key starting with ``prefix`` (sorted for the local backend)."""
        ...

    def check(self) -> None:
        """Health check: raise ``StorageUnavailable`` with a clear message when unusable."""
        ...

    def describe(self) -> str:
        """Human-readable location for messages (never contains credentials)."""
        ...
