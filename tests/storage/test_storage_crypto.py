"""Streaming AES-256-GCM format: round trips, a naive reference decoder, and tampering."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from repository.storage import IntegrityError
from repository.storage.crypto import (
    MAGIC,
    TAG_BYTES,
    build_header,
    decrypt_stream,
    encrypt_stream,
    parse_header,
)
from repository.storage.errors import KeyNotFound, StorageError

CHUNK_LOG2 = 12  # 4 KiB chunks keep the tests tiny
CHUNK = 1 << CHUNK_LOG2
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
KEY_ID = "0123456789abcdef0123456789abcdef"


def key_for(key_id: str) -> bytes:
    if key_id == KEY_ID:
        return KEY
    raise KeyNotFound(key_id)


def encrypt(data: bytes, object_key: str = "obj/a", pieces: int = 7) -> bytes:
    rng = random.Random(len(data))
    cuts = sorted(rng.randrange(0, len(data) + 1) for _ in range(pieces))
    parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return b"".join(encrypt_stream(KEY, KEY_ID, object_key, parts, chunk_log2=CHUNK_LOG2))


def split(blob: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(blob), size):
        yield blob[start : start + size]


def decrypt(blob: bytes, object_key: str = "obj/a", piece: int = 1000) -> bytes:
    return b"".join(decrypt_stream(key_for, object_key, split(blob, piece)))


def naive_decrypt(blob: bytes, key: bytes, object_key: str) -> bytes:
    """Independent reading of the documented format, one frame at a time."""
    magic, version, chunk_log2, key_len = struct.unpack(">4sBBB", blob[:7])
    assert magic == b"MVLT" and version == 1
    header_len = 7 + key_len + 8
    header, body = blob[:header_len], blob[header_len:]
    prefix = header[-8:]
    frame = (1 << chunk_log2) + 16
    frames = [body[i : i + frame] for i in range(0, len(body), frame)] or [b""]
    out = []
    for index, data in enumerate(frames):
        last = index == len(frames) - 1
        aad = header + struct.pack(">QB", index, last) + object_key.encode()
        out.append(AESGCM(key).decrypt(prefix + struct.pack(">I", index), data, aad))
    return b"".join(out)


SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17]


@pytest.mark.parametrize("size", SIZES)
def test_storage_crypto_round_trip_matches_reference(size: int) -> None:
    data = random.Random(size).randbytes(size)
    blob = encrypt(data)
    assert decrypt(blob) == data
    assert decrypt(blob, piece=CHUNK + TAG_BYTES) == data  # pieces aligned with frames
    assert decrypt(blob, piece=len(blob) + 1) == data  # a single piece
    assert naive_decrypt(blob, KEY, "obj/a") == data
    header = parse_header(blob, "obj/a")
    assert header is not None and header.key_id == KEY_ID
    frames = max(1, -(-size // CHUNK))
    assert len(blob) == len(header.raw) + size + frames * TAG_BYTES


def test_storage_crypto_nonce_prefix_is_fresh_per_object() -> None:
    a, b = encrypt(b"same"), encrypt(b"same")
    assert a != b
    assert parse_header(a, "k").nonce_prefix != parse_header(b, "k").nonce_prefix  # type: ignore[union-attr]


def test_storage_crypto_ciphertext_does_not_contain_plaintext() -> None:
    data = b"PATIENT NAME^SMITH " * 500
    assert b"SMITH" not in encrypt(data)


DATA = random.Random(1).randbytes(3 * CHUNK + 100)


def _header_len(blob: bytes) -> int:
    header = parse_header(blob, "x")
    assert header is not None
    return len(header.raw)


def test_storage_crypto_every_bit_flip_is_detected() -> None:
    blob = encrypt(DATA)
    rng = random.Random(7)
    positions = sorted({*range(0, 60), *rng.sample(range(len(blob)), 200), len(blob) - 1})
    for pos in positions:
        bad = bytearray(blob)
        bad[pos] ^= 1 << rng.randrange(8)
        # A flipped key id may name a key that does not exist: refused before any decryption.
        with pytest.raises((IntegrityError, KeyNotFound)):
            decrypt(bytes(bad))


@pytest.mark.parametrize("cut", [0, 3, 10, 40, 1, CHUNK, CHUNK + TAG_BYTES, 2 * (CHUNK + 16)])
def test_storage_crypto_truncation_is_detected(cut: int) -> None:
    blob = encrypt(DATA)
    head = _header_len(blob)
    for end in {cut, head + cut} - {len(blob)}:
        if end < len(blob):
            with pytest.raises(IntegrityError):
                decrypt(blob[:end])


def test_storage_crypto_truncation_at_every_frame_boundary() -> None:
    blob = encrypt(DATA)
    head = _header_len(blob)
    frame = CHUNK + TAG_BYTES
    for frames in range(0, 4):
        with pytest.raises(IntegrityError, match="truncated|authentication"):
            decrypt(blob[: head + frames * frame])


def test_storage_crypto_appended_data_is_detected() -> None:
    blob = encrypt(DATA)
    with pytest.raises(IntegrityError):
        decrypt(blob + b"\x00")
    with pytest.raises(IntegrityError):
        decrypt(blob + blob[-(CHUNK + TAG_BYTES) :])


def test_storage_crypto_reordered_frames_are_detected() -> None:
    blob = encrypt(DATA)
    head = _header_len(blob)
    frame = CHUNK + TAG_BYTES
    body = blob[head:]
    frames = [body[i : i + frame] for i in range(0, len(body), frame)]
    swapped = frames[1], frames[0], *frames[2:]
    with pytest.raises(IntegrityError, match="chunk 0"):
        decrypt(blob[:head] + b"".join(swapped))


def test_storage_crypto_object_key_is_bound() -> None:
    blob = encrypt(DATA, object_key="obj/a")
    with pytest.raises(IntegrityError, match="not the object written under this key"):
        decrypt(blob, object_key="obj/b")


def test_storage_crypto_key_id_is_bound() -> None:
    """Relabelling a ciphertext with another key id (even one whose key we hold) fails."""
    blob = encrypt(DATA)
    other_id = "f" * 32
    relabelled = blob.replace(KEY_ID.encode(), other_id.encode(), 1)

    def both(key_id: str) -> bytes:
        return KEY if key_id in (KEY_ID, other_id) else OTHER_KEY

    with pytest.raises(IntegrityError):
        b"".join(decrypt_stream(both, "obj/a", [relabelled]))


def test_storage_crypto_wrong_data_key_fails() -> None:
    blob = encrypt(DATA)
    with pytest.raises(IntegrityError):
        b"".join(decrypt_stream(lambda _k: OTHER_KEY, "obj/a", [blob]))


def test_storage_crypto_not_an_encrypted_object() -> None:
    with pytest.raises(IntegrityError, match="not a MyoVault encrypted object"):
        decrypt(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(IntegrityError, match="truncated"):
        decrypt(b"")


def test_storage_crypto_unknown_version_fails_closed() -> None:
    blob = bytearray(encrypt(b"x"))
    blob[len(MAGIC)] = 2
    with pytest.raises(IntegrityError, match="unsupported encryption format version 2"):
        decrypt(bytes(blob))


def test_storage_crypto_header_bounds_chunk_size() -> None:
    header = bytearray(build_header(KEY_ID, bytes(8), CHUNK_LOG2))
    header[5] = 40  # a 1 TiB chunk would let a tampered header exhaust memory
    with pytest.raises(IntegrityError, match="corrupted header"):
        parse_header(bytes(header), "x")
    with pytest.raises(StorageError):
        build_header(KEY_ID, bytes(8), 30)


def test_storage_crypto_partial_plaintext_before_corruption_is_authentic() -> None:
    """Chunks released before a corrupted one are exactly the original chunks."""
    blob = bytearray(encrypt(DATA))
    blob[-5] ^= 0xFF
    released: list[bytes] = []
    with pytest.raises(IntegrityError):
        for chunk in decrypt_stream(key_for, "obj/a", split(bytes(blob), 999)):
            released.append(chunk)
    assert b"".join(released) == DATA[: len(b"".join(released))]
    assert len(released) == 3
