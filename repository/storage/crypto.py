"""Chunked streaming authenticated encryption (AES-256-GCM) of stored objects.

Format (version 1)
------------------
An encrypted object is a header followed by ciphertext frames::

    header = b"MVLT" | version:u8 (=1) | chunk_log2:u8 | key_id_len:u8 | key_id (ASCII)
             | nonce_prefix (8 random bytes, fresh per object)
    frame_i = AES-256-GCM(data_key, nonce_i, plaintext_i, aad_i)   (len(plaintext_i) + 16 bytes)

    nonce_i = nonce_prefix | i:u32 big-endian
    aad_i   = header | i:u64 big-endian | last:u8 | object_key (UTF-8)

Every frame but the last holds exactly ``2**chunk_log2`` plaintext bytes; the last holds
``0..2**chunk_log2`` bytes and is the only one encrypted with ``last = 1``. Because the whole
header, the chunk index, the last-chunk flag and the object key are authenticated with every
frame:

* a modified header (key id, chunk size, nonce prefix, version) fails the first frame;
* frames cannot be reordered, duplicated or dropped (index in nonce and AAD);
* truncation at any point is detected (the new final frame was not sealed with ``last = 1``,
  or a partial frame fails its tag), and so is data appended after the final frame;
* a ciphertext copied to another object key, or re-labelled with another data key id, fails.

Nonces never repeat under one data key as long as 64-bit random prefixes do not collide
(birthday bound ~2**32 objects per subject key) and an object has < 2**32 chunks (4 PiB at
1 MiB chunks, enforced). Memory use is O(chunk size), independent of the object size.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import IntegrityError, StorageError

MAGIC = b"MVLT"
FORMAT_VERSION = 1
TAG_BYTES = 16
NONCE_PREFIX_BYTES = 8
DATA_KEY_BYTES = 32
DEFAULT_CHUNK_LOG2 = 20  # 1 MiB
MIN_CHUNK_LOG2 = 12  # 4 KiB
MAX_CHUNK_LOG2 = 24  # 16 MiB: bounds the memory a (tampered) header can make a reader use
MAX_CHUNKS = 1 << 32
_FIXED_HEAD = struct.Struct(">4sBBB")  # magic, version, chunk_log2, key_id_len
_KEY_ID = re.compile(rb"[A-Za-z0-9_\-]+")


@dataclass(frozen=True)
class Header:
    """Parsed object header."""

    version: int
    chunk_log2: int
    key_id: str
    nonce_prefix: bytes
    raw: bytes

    @property
    def chunk_bytes(self) -> int:
        return 1 << self.chunk_log2


def build_header(key_id: str, nonce_prefix: bytes, chunk_log2: int = DEFAULT_CHUNK_LOG2) -> bytes:
    """Serialise a version-1 header (``key_id`` ASCII, 1-255 characters)."""
    encoded = key_id.encode("ascii")
    if not 0 < len(encoded) < 256 or not _KEY_ID.fullmatch(encoded):
        raise StorageError("data key id must be 1-255 characters from A-Z a-z 0-9 _ -")
    if len(nonce_prefix) != NONCE_PREFIX_BYTES:
        raise StorageError(f"nonce prefix must be {NONCE_PREFIX_BYTES} bytes")
    if not MIN_CHUNK_LOG2 <= chunk_log2 <= MAX_CHUNK_LOG2:
        raise StorageError(f"chunk_log2 must be in [{MIN_CHUNK_LOG2}, {MAX_CHUNK_LOG2}]")
    return (
        _FIXED_HEAD.pack(MAGIC, FORMAT_VERSION, chunk_log2, len(encoded)) + encoded + nonce_prefix
    )


def parse_header(buffer: bytes | bytearray, object_key: str) -> Header | None:
    """Parse the header at the start of ``buffer``; ``None`` if more bytes are needed.

    Raises ``IntegrityError`` for a wrong magic, unknown version or invalid field.
    """
    if len(buffer) < _FIXED_HEAD.size:
        if MAGIC[: len(buffer)] != bytes(buffer[: len(MAGIC)]):
            raise IntegrityError(f"object {object_key!r} is not a MyoVault encrypted object")
        return None
    magic, version, chunk_log2, key_len = _FIXED_HEAD.unpack_from(buffer)
    if magic != MAGIC:
        raise IntegrityError(f"object {object_key!r} is not a MyoVault encrypted object")
    if version != FORMAT_VERSION:
        raise IntegrityError(
            f"object {object_key!r} uses unsupported encryption format version {version}"
        )
    if not MIN_CHUNK_LOG2 <= chunk_log2 <= MAX_CHUNK_LOG2 or key_len == 0:
        raise IntegrityError(f"object {object_key!r} has a corrupted header")
    end = _FIXED_HEAD.size + key_len + NONCE_PREFIX_BYTES
    if len(buffer) < end:
        return None
    raw_key_id = bytes(buffer[_FIXED_HEAD.size : _FIXED_HEAD.size + key_len])
    if not _KEY_ID.fullmatch(raw_key_id):
        raise IntegrityError(f"object {object_key!r} has a corrupted header (data key id)")
    key_id = raw_key_id.decode("ascii")
    return Header(
        version=version,
        chunk_log2=chunk_log2,
        key_id=key_id,
        nonce_prefix=bytes(buffer[end - NONCE_PREFIX_BYTES : end]),
        raw=bytes(buffer[:end]),
    )


def _nonce(prefix: bytes, index: int) -> bytes:
    if index >= MAX_CHUNKS:
        raise StorageError("object too large for one encryption stream (2**32 chunks)")
    return prefix + index.to_bytes(4, "big")


def _aad(header: bytes, index: int, last: bool, object_key: bytes) -> bytes:
    return header + index.to_bytes(8, "big") + (b"\x01" if last else b"\x00") + object_key


def encrypt_stream(
    data_key: bytes,
    key_id: str,
    object_key: str,
    plaintext: Iterable[bytes | bytearray | memoryview],
    *,
    chunk_log2: int = DEFAULT_CHUNK_LOG2,
    on_plaintext: Callable[[memoryview], None] | None = None,
) -> Iterator[bytes]:
    """Encrypt an iterable of plaintext pieces into the format above, lazily.

    Parameters
    ----------
    data_key
        32-byte AES-256 key.
    key_id
        Identifier of ``data_key`` written into (and authenticated by) the header.
    object_key
        Object key the ciphertext is bound to.
    plaintext
        Pieces of any size (``bytes``-like); re-chunked to ``2**chunk_log2`` bytes.
    on_plaintext
        Called with every plaintext chunk before it is encrypted (hashing, counting).

    Yields
    ------
    bytes
        The header, then one frame per chunk. Memory: about two chunks.
    """
    if len(data_key) != DATA_KEY_BYTES:
        raise StorageError("data key must be 32 bytes")
    aead = AESGCM(data_key)
    header = build_header(key_id, os.urandom(NONCE_PREFIX_BYTES), chunk_log2)
    prefix = header[-NONCE_PREFIX_BYTES:]
    bound_key = object_key.encode("utf-8")
    chunk_bytes = 1 << chunk_log2
    yield header
    index = 0
    pending = bytearray()
    for piece in plaintext:
        view = memoryview(piece).cast("B")
        # Strictly more than one chunk available => the chunk being sealed is not the last.
        while len(pending) + len(view) > chunk_bytes:
            take = chunk_bytes - len(pending)
            pending += view[:take]
            view = view[take:]
            if on_plaintext is not None:
                on_plaintext(memoryview(pending))
            yield aead.encrypt(
                _nonce(prefix, index), pending, _aad(header, index, False, bound_key)
            )
            index += 1
            pending = bytearray()
        pending += view
    if on_plaintext is not None:
        on_plaintext(memoryview(pending))
    yield aead.encrypt(_nonce(prefix, index), pending, _aad(header, index, True, bound_key))


def decrypt_stream(
    key_for: Callable[[str], bytes],
    object_key: str,
    ciphertext: Iterable[bytes],
) -> Iterator[bytes]:
    """Decrypt and authenticate a stored object, chunk by chunk.

    The header is read and the data key resolved *eagerly*, when this function is called, so
    a wrong format, an unknown or destroyed key, or a wrong master key raise before anything
    is streamed (an HTTP handler can still answer with a proper status). Every yielded chunk has passed its GCM tag check for its position, so no unauthenticated
    byte is ever released. The generator ends normally only after the final frame (sealed as
    last) was verified and nothing follows it; any tampering, truncation or key mismatch raises
    ``IntegrityError`` at the point it is detected (earlier chunks may already have been
    yielded: a consumer must treat an exception as "discard everything").

    Parameters
    ----------
    key_for
        Returns the 32-byte data key for a header key id (raises ``KeyDestroyed`` /
        ``KeyNotFound`` / ``MasterKeyError`` as appropriate).
    object_key
        The key the object is read from; must equal the key it was written under.
    ciphertext
        Pieces of the stored object, any sizes.
    """
    buffer = bytearray()
    pieces = iter(ciphertext)
    header: Header | None = None
    for piece in pieces:
        buffer += piece
        header = parse_header(buffer, object_key)
        if header is not None:
            del buffer[: len(header.raw)]
            break
    if header is None:
        raise IntegrityError(f"object {object_key!r} is truncated (incomplete header)")
    aead = AESGCM(key_for(header.key_id))
    return _frames(aead, header, object_key, buffer, pieces)


def _frames(
    aead: AESGCM,
    head: Header,
    object_key: str,
    buffer: bytearray,
    pieces: Iterator[bytes],
) -> Iterator[bytes]:
    bound_key = object_key.encode("utf-8")
    frame_bytes = head.chunk_bytes + TAG_BYTES
    index = 0

    def open_frame(frame: bytes | bytearray | memoryview, last: bool) -> bytes:
        try:
            return aead.decrypt(
                _nonce(head.nonce_prefix, index),
                frame,
                _aad(head.raw, index, last, bound_key),
            )
        except InvalidTag:
            raise IntegrityError(
                f"object {object_key!r} failed authentication at chunk {index}: it is corrupted, "
                "truncated, or not the object written under this key"
            ) from None

    start = 0  # frames before ``start`` in ``buffer`` are consumed; compacted per piece
    while True:
        while len(buffer) - start > frame_bytes:
            with memoryview(buffer) as view:
                plain = open_frame(view[start : start + frame_bytes], last=False)
            start += frame_bytes
            yield plain
            index += 1
        more = next(pieces, None)
        if more is None:
            break
        del buffer[:start]
        start = 0
        buffer += more
    del buffer[:start]
    if len(buffer) < TAG_BYTES:
        raise IntegrityError(f"object {object_key!r} is truncated (final chunk {index} incomplete)")
    yield open_frame(bytes(buffer), last=True)
