"""S3 backend over HTTP against a real moto_server on 127.0.0.1."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from repository.storage import (
    InvalidObjectKey,
    ObjectBackend,
    ObjectNotFound,
    S3Backend,
    StorageUnavailable,
)

pytestmark = pytest.mark.integration
S3_PART_BYTES = 5 << 20  # the s3_backend fixture's part size (S3's minimum)


class SourceFailed(Exception):
    pass


def chunks_then_fail(n_bytes: int) -> Iterator[bytes]:
    sent = 0
    while sent < n_bytes:
        yield b"y" * (1 << 20)
        sent += 1 << 20
    raise SourceFailed("uploader went away")


def test_storage_s3_is_an_object_backend(s3_backend: S3Backend) -> None:
    assert isinstance(s3_backend, ObjectBackend)
    s3_backend.check()


@pytest.mark.parametrize("size", [0, 10, S3_PART_BYTES, 2 * S3_PART_BYTES + 123])
def test_storage_s3_round_trip(s3_backend: S3Backend, size: int) -> None:
    data = os.urandom(size)
    pieces = [data[i : i + 700_000] for i in range(0, size, 700_000)]
    assert s3_backend.put_stream("objects/x.bin", pieces) == size
    assert s3_backend.exists("objects/x.bin")
    assert b"".join(s3_backend.get_stream("objects/x.bin")) == data


def test_storage_s3_keys_live_under_prefix(
    s3_backend: S3Backend, s3_client: Any, s3_bucket: str
) -> None:
    s3_backend.put_stream("a/b", [b"1"])
    listed = s3_client.list_objects_v2(Bucket=s3_bucket)
    assert [o["Key"] for o in listed["Contents"]] == ["vault/v1/a/b"]


def test_storage_s3_multipart_is_used_and_completed(
    s3_backend: S3Backend, s3_client: Any, s3_bucket: str
) -> None:
    data = os.urandom(2 * S3_PART_BYTES + 1)
    s3_backend.put_stream("big", iter([data]))
    head = s3_client.head_object(Bucket=s3_bucket, Key="vault/v1/big")
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert head["ContentLength"] == len(data)


def test_storage_s3_failed_upload_is_aborted(
    s3_backend: S3Backend, s3_client: Any, s3_bucket: str
) -> None:
    s3_backend.put_stream("obj", [b"previous version"])
    with pytest.raises(SourceFailed):
        s3_backend.put_stream("obj", chunks_then_fail(3 * S3_PART_BYTES))
    uploads = s3_client.list_multipart_uploads(Bucket=s3_bucket)
    assert uploads.get("Uploads", []) == []
    assert b"".join(s3_backend.get_stream("obj")) == b"previous version"
    with pytest.raises(SourceFailed):
        s3_backend.put_stream("fresh", chunks_then_fail(2 * S3_PART_BYTES))
    assert not s3_backend.exists("fresh")


def test_storage_s3_missing_object(s3_backend: S3Backend) -> None:
    with pytest.raises(ObjectNotFound, match="'nope' not found in s3://"):
        s3_backend.get_stream("nope")
    assert not s3_backend.exists("nope")
    s3_backend.delete("nope")


def test_storage_s3_delete_and_list(s3_backend: S3Backend) -> None:
    for key in ["objects/aa/1", "objects/ab/2", "derived/x"]:
        s3_backend.put_stream(key, [b"."])
    assert list(s3_backend.iter_keys("objects/a")) == ["objects/aa/1", "objects/ab/2"]
    s3_backend.delete("objects/aa/1")
    assert list(s3_backend.iter_keys()) == ["derived/x", "objects/ab/2"]


def test_storage_s3_rejects_unsafe_keys(s3_backend: S3Backend) -> None:
    with pytest.raises(InvalidObjectKey):
        s3_backend.put_stream("../x", [b"x"])


def test_storage_s3_bucket_absent(s3_client: Any, moto_endpoint: str) -> None:
    backend = S3Backend("no-such-bucket", endpoint_url=moto_endpoint, client=s3_client)
    with pytest.raises(StorageUnavailable, match="bucket 'no-such-bucket' does not exist"):
        backend.check()
    with pytest.raises(StorageUnavailable, match="does not exist"):
        backend.put_stream("a", [b"x"])
    with pytest.raises(StorageUnavailable, match="does not exist"):
        backend.get_stream("a")


def test_storage_s3_endpoint_down(
    dead_endpoint: str, s3_client_factory: Callable[[str], Any]
) -> None:
    backend = S3Backend(
        "bucket", endpoint_url=dead_endpoint, client=s3_client_factory(dead_endpoint)
    )
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="endpoint unreachable"):
        backend.check()
    with pytest.raises(StorageUnavailable, match="endpoint unreachable"):
        backend.put_stream("a", [b"x"])
    with pytest.raises(StorageUnavailable, match="endpoint unreachable"):
        backend.get_stream("a")
    with pytest.raises(StorageUnavailable, match="endpoint unreachable"):
        list(backend.iter_keys())
    assert time.monotonic() - started < 30


def test_storage_s3_endpoint_down_with_default_client(dead_endpoint: str, aws_env: None) -> None:
    """The production client (built from the URL) also reports a dead endpoint clearly."""
    backend = S3Backend("bucket", "p", endpoint_url=dead_endpoint)
    with pytest.raises(
        StorageUnavailable, match=f"endpoint unreachable for s3://bucket/p at {dead_endpoint}"
    ):
        backend.check()


def test_storage_s3_endpoint_dies_mid_upload(
    s3_client: Any, s3_bucket: str, dead_endpoint: str, s3_client_factory: Callable[[str], Any]
) -> None:
    """The endpoint vanishing during a multipart upload raises StorageUnavailable."""
    backend = S3Backend(s3_bucket, client=s3_client, part_bytes=S3_PART_BYTES)

    def source() -> Iterator[bytes]:
        yield b"z" * (S3_PART_BYTES + 1)  # the first part goes to the live endpoint,
        backend.client = s3_client_factory(dead_endpoint)  # then the endpoint goes away
        yield b"z" * S3_PART_BYTES

    with pytest.raises(StorageUnavailable, match="endpoint unreachable"):
        backend.put_stream("obj", source())
    uploads = s3_client.list_multipart_uploads(Bucket=s3_bucket)
    assert not s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents")
    # The abort could not reach the dead endpoint; S3 lifecycle rules
    # (AbortIncompleteMultipartUpload) reclaim such parts, and they are never visible as objects.
    assert len(uploads.get("Uploads", [])) <= 1
