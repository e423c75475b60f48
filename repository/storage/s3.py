"""S3 backend (production; any S3-compatible endpoint such as MinIO or moto)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from .base import READ_CHUNK_BYTES
from .errors import ObjectNotFound, StorageError, StorageUnavailable
from .keys import validate_key, validate_prefix

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Multipart part size (bytes). S3 requires >= 5 MiB for every part but the last.
DEFAULT_PART_BYTES = 8 << 20
MIN_PART_BYTES = 5 << 20

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET = {"NoSuchBucket"}
_UNAVAILABLE = {"ServiceUnavailable", "SlowDown", "InternalError", "RequestTimeout"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


def default_client(endpoint_url: str | None = None) -> S3Client:
    """A boto3 S3 client with short connect timeouts and few retries, so an endpoint that is
    down is reported within seconds instead of hanging a request."""
    config = Config(
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    client: S3Client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
    return client


class S3Backend:
    """Objects in ``s3://bucket/prefix``; key ``a/b`` is the S3 key ``prefix/a/b``.

    Uploads larger than one part use a multipart upload streamed part by part (memory is one
    part, ``part_bytes``); on any failure the multipart upload is aborted so nothing
    half-written remains. Smaller objects use a single ``PutObject`` (atomic by S3 semantics).

    Parameters
    ----------
    bucket
        Bucket name (must already exist; :meth:`check` reports a missing bucket).
    prefix
        Key prefix inside the bucket (no leading or trailing ``/`` needed).
    endpoint_url
        Custom endpoint (MinIO, moto); ``None`` = AWS.
    client
        A ready boto3 S3 client (tests, custom credentials); built from the default
        credential chain when omitted.
    part_bytes
        Multipart part size in bytes (>= 5 MiB).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        client: S3Client | None = None,
        *,
        part_bytes: int = DEFAULT_PART_BYTES,
    ) -> None:
        if not bucket:
            raise StorageError("S3 bucket name is empty")
        if part_bytes < MIN_PART_BYTES:
            raise StorageError(f"S3 part size must be >= {MIN_PART_BYTES} bytes")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.part_bytes = part_bytes
        self.client: S3Client = client if client is not None else default_client(endpoint_url)

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        endpoint = self.endpoint_url or getattr(self.client.meta, "endpoint_url", None)
        return f"{where} at {endpoint}" if endpoint else where

    def __repr__(self) -> str:
        return f"S3Backend({self.describe()!r})"

    def _s3_key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Translate botocore failures into the storage error hierarchy."""
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if key is not None and code in _NOT_FOUND:
                raise ObjectNotFound(key, self.describe()) from exc
            if code in _NO_BUCKET:
                raise StorageUnavailable(
                    f"{action}: bucket {self.bucket!r} does not exist at {self.describe()}"
                ) from exc
            if code in _DENIED:
                raise StorageUnavailable(
                    f"{action}: access denied to {self.describe()} ({code}); check credentials "
                    "and bucket policy"
                ) from exc
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if status >= 500 or code in _UNAVAILABLE:
                raise StorageUnavailable(
                    f"{action}: S3 service error at {self.describe()} ({code or status})"
                ) from exc
            raise StorageError(f"{action} on {self.describe()} failed: {code or exc}") from exc
        except NoCredentialsError as exc:
            raise StorageUnavailable(
                f"{action}: no S3 credentials configured for {self.describe()}"
            ) from exc
        except (BotoConnectionError, ReadTimeoutError) as exc:
            raise StorageUnavailable(
                f"{action}: S3 endpoint unreachable for {self.describe()} ({exc})"
            ) from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"{action} on {self.describe()} failed: {exc}") from exc

    # -- protocol ----------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ``StorageUnavailable`` if the endpoint is down, the bucket is absent or
        access is denied."""
        try:
            with self._errors("checking the bucket"):
                self.client.head_bucket(Bucket=self.bucket)
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and str(
                cause.response.get("Error", {}).get("Code", "")
            ) in {"404", "NoSuchBucket", "NotFound"}:
                raise StorageUnavailable(
                    f"S3 bucket {self.bucket!r} does not exist at {self.describe()}; create it "
                    "or fix MYOVAULT_STORAGE"
                ) from cause
            raise

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        s3_key = self._s3_key(key)
        buffer = bytearray()
        iterator = iter(chunks)
        # Fill the first part; an object that fits in one part is a single PutObject.
        for chunk in iterator:
            buffer += chunk
            if len(buffer) > self.part_bytes:
                break
        else:
            with self._errors(f"uploading {key!r}"):
                self.client.put_object(Bucket=self.bucket, Key=s3_key, Body=bytes(buffer))
            return len(buffer)
        return self._multipart(key, s3_key, buffer, iterator)

    def _multipart(
        self, key: str, s3_key: str, buffer: bytearray, iterator: Iterator[bytes]
    ) -> int:
        with self._errors(f"starting the upload of {key!r}"):
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=s3_key)[
                "UploadId"
            ]
        parts: list[dict[str, Any]] = []
        size = 0
        try:
            while True:
                while len(buffer) >= self.part_bytes:
                    part = bytes(buffer[: self.part_bytes])
                    del buffer[: self.part_bytes]
                    size += self._upload_part(key, s3_key, upload_id, parts, part)
                chunk = next(iterator, None)
                if chunk is None:
                    break
                buffer += chunk
            if buffer or not parts:
                size += self._upload_part(key, s3_key, upload_id, parts, bytes(buffer))
            buffer.clear()
            with self._errors(f"completing the upload of {key!r}"):
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=s3_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                )
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=s3_key, UploadId=upload_id
                )
            raise
        return size

    def _upload_part(
        self,
        key: str,
        s3_key: str,
        upload_id: str,
        parts: list[dict[str, Any]],
        data: bytes,
    ) -> int:
        number = len(parts) + 1
        with self._errors(f"uploading part {number} of {key!r}"):
            response = self.client.upload_part(
                Bucket=self.bucket, Key=s3_key, UploadId=upload_id, PartNumber=number, Body=data
            )
        parts.append({"ETag": response["ETag"], "PartNumber": number})
        return len(data)

    def get_stream(self, key: str) -> Iterator[bytes]:
        s3_key = self._s3_key(key)
        with self._errors(f"reading {key!r}", key):
            body = self.client.get_object(Bucket=self.bucket, Key=s3_key)["Body"]
        return self._iter_body(key, body)

    def _iter_body(self, key: str, body: Any) -> Iterator[bytes]:
        try:
            while True:
                with self._errors(f"reading {key!r}", key):
                    chunk = body.read(READ_CHUNK_BYTES)
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    def delete(self, key: str) -> None:
        with self._errors(f"deleting {key!r}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._s3_key(key))

    def exists(self, key: str) -> bool:
        s3_key = self._s3_key(key)
        try:
            with self._errors(f"looking up {key!r}", key):
                self.client.head_object(Bucket=self.bucket, Key=s3_key)
        except ObjectNotFound:
            return False
        return True

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        with self._errors("listing objects"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    yield item["Key"][strip:]
