"""S3 backend error mapping and configuration, without a server (botocore Stubber)."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from repository.storage import S3Backend, StorageError, StorageUnavailable


def test_storage_s3_config_errors() -> None:
    with pytest.raises(StorageError, match="bucket name is empty"):
        S3Backend("", client=object())  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="part size"):
        S3Backend("b", client=object(), part_bytes=1024)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("operation", "code", "status", "message"),
    [
        ("head_bucket", "403", 403, "access denied"),
        ("head_bucket", "ServiceUnavailable", 503, "S3 service error"),
        ("get_object", "SlowDown", 503, "S3 service error"),
        ("get_object", "AccessDenied", 403, "access denied"),
    ],
)
def test_storage_s3_service_errors_are_unavailable(
    aws_env: None, operation: str, code: str, status: int, message: str
) -> None:
    """Denied access and 5xx answers map to StorageUnavailable (no moto needed: stubbed)."""
    client = boto3.client("s3", region_name="us-east-1")
    backend = S3Backend("bucket", client=client)
    with Stubber(client) as stub:
        stub.add_client_error(operation, service_error_code=code, http_status_code=status)
        with pytest.raises(StorageUnavailable, match=message):
            if operation == "head_bucket":
                backend.check()
            else:
                backend.get_stream("a")
