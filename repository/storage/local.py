"""Local filesystem backend (embedded mode)."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from .base import READ_CHUNK_BYTES
from .errors import ObjectNotFound, StorageError, StorageUnavailable
from .keys import validate_key, validate_prefix

#: Directory (inside the root) holding in-flight writes; never listed as objects.
PARTIAL_DIR = ".partial"


class LocalBackend:
    """Objects as files under ``root``; key ``a/b/c`` is the file ``root/a/b/c``.

    Writes go to a temporary file in ``root/.partial`` (same filesystem), are flushed and
    fsync'ed, then renamed over the destination and the directory is fsync'ed: readers see
    either the old object or the complete new one, never a partial file. A process killed
    mid-write leaves at most a stray file in ``.partial`` (removed by :meth:`purge_partials`),
    never a visible object.

    Parameters
    ----------
    root
        Store directory. It must exist unless ``create`` is true.
    create
        Create ``root`` (mode 0700) if it is missing.
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = False) -> None:
        self.root = Path(root).expanduser().absolute()
        if create:
            try:
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageUnavailable(
                    f"cannot create local store directory {self.root}: {exc.strerror}"
                ) from exc

    def describe(self) -> str:
        return f"local store {self.root}"

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.root)!r})"

    # -- helpers -----------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _require_root(self) -> None:
        if not self.root.is_dir():
            raise StorageUnavailable(
                f"local store directory {self.root} does not exist (run `myovault init` "
                "or fix MYOVAULT_STORAGE)"
            )

    def _reject_collision(self, key: str, dest: Path) -> None:
        """Files cannot be directories: ``a`` and ``a/b`` cannot both be objects here."""
        if dest.is_dir():
            raise StorageError(
                f"object key {key!r} collides with existing keys under {key + '/'!r} in "
                f"{self.describe()}"
            )
        parent = dest.parent
        while parent != self.root:
            if parent.exists() and not parent.is_dir():
                prefix = parent.relative_to(self.root).as_posix()
                raise StorageError(
                    f"object key {key!r} collides with the existing object {prefix!r} in "
                    f"{self.describe()}"
                )
            parent = parent.parent

    # -- protocol ----------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ``StorageUnavailable`` unless the root is an existing, writable directory."""
        if not self.root.exists():
            raise StorageUnavailable(f"local store directory {self.root} does not exist")
        if not self.root.is_dir():
            raise StorageUnavailable(f"local store path {self.root} is not a directory")
        try:
            partial = self.root / PARTIAL_DIR
            partial.mkdir(mode=0o700, exist_ok=True)
            probe = partial / f"health-{secrets.token_hex(8)}"
            with open(probe, "wb") as fh:
                fh.write(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StorageUnavailable(
                f"local store directory {self.root} is not writable: {exc.strerror}"
            ) from exc

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        dest = self._path(key)
        self._require_root()
        partial_dir = self.root / PARTIAL_DIR
        self._reject_collision(key, dest)
        try:
            partial_dir.mkdir(mode=0o700, exist_ok=True)
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(
                f"cannot prepare directories in {self.root}: {exc.strerror}"
            ) from exc
        tmp = partial_dir / f"{secrets.token_hex(16)}.tmp"
        size = 0
        try:
            with _io(f"creating a temporary file in {partial_dir}"):
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:  # errors raised by the source propagate unchanged
                    with _io(f"writing {key!r} to {self.root}"):
                        fh.write(chunk)
                    size += len(chunk)
                with _io(f"flushing {key!r} to {self.root}"):
                    fh.flush()
                    os.fsync(fh.fileno())
            with _io(f"renaming {key!r} into place in {self.root}"):
                try:
                    os.replace(tmp, dest)
                except FileNotFoundError:
                    # A concurrent delete pruned the (then empty) parent directory: recreate.
                    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return size

    def get_stream(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        self._require_root()
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the generator below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(key, self.describe()) from exc
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {key!r} from {self.root}: {exc}") from exc
        return _read_chunks(fh, key, self.root)

    def delete(self, key: str) -> None:
        path = self._path(key)
        self._require_root()
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageUnavailable(f"cannot delete {key!r} from {self.root}: {exc}") from exc
        _fsync_dir(path.parent)
        # Prune now-empty parent directories (never the root itself).
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        self._require_root()
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*directory.split("/")) if directory else self.root
        if not start.is_dir():
            return
        for key in _walk(start, start.relative_to(self.root).as_posix()):
            if key.startswith(prefix):
                yield key

    def purge_partials(self) -> int:
        """Remove leftovers of interrupted writes; return how many files were removed.

        Only safe while no write is in flight (e.g. at start-up of the only process).
        """
        partial_dir = self.root / PARTIAL_DIR
        if not partial_dir.is_dir():
            return 0
        removed = 0
        for item in partial_dir.iterdir():
            if item.is_file():
                item.unlink()
                removed += 1
        return removed


def _walk(directory: Path, rel: str) -> Iterator[str]:
    """Keys under ``directory`` in byte order of the full key (the order S3 lists in)."""
    entries = []
    with os.scandir(directory) as scan:
        for entry in scan:
            if entry.name.startswith("."):
                continue  # .partial and anything that cannot be a key segment
            is_dir = entry.is_dir(follow_symlinks=False)
            entries.append((entry.name + ("/" if is_dir else ""), entry.name, is_dir))
    entries.sort()
    for _sort_key, name, is_dir in entries:
        key = name if rel in ("", ".") else f"{rel}/{name}"
        if is_dir:
            yield from _walk(directory / name, key)
        else:
            yield key


def _read_chunks(fh: BinaryIO, key: str, root: Path) -> Iterator[bytes]:
    with fh:
        while True:
            with _io(f"reading {key!r} from {root}"):
                chunk = fh.read(READ_CHUNK_BYTES)
            if not chunk:
                return
            yield chunk


@contextlib.contextmanager
def _io(action: str) -> Iterator[None]:
    """Turn an ``OSError`` of the filesystem into ``StorageUnavailable`` naming the action."""
    try:
        yield
    except OSError as exc:
        raise StorageUnavailable(f"{action} failed: {exc.strerror or exc}") from exc


def _fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename/unlink inside it is durable (POSIX only)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        raise StorageUnavailable(f"fsync of {directory} failed: {exc.strerror}") from exc
    finally:
        os.close(fd)
