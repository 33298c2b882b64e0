"""The S3 harness of tests/support/s3.py: moto's server answers boto3 over real HTTP, restarts, and stops."""

from __future__ import annotations

import os

import boto3
import botocore.exceptions
import pytest

from support.s3 import CREDENTIALS, listening, running_s3

MiB = 1024 * 1024


def test_put_get_delete_over_http(s3, s3_bucket):
    client = s3.client()
    assert s3.endpoint_url.startswith("http://127.0.0.1:")
    body = os.urandom(1000)
    client.put_object(Bucket=s3_bucket, Key="in/a.png", Body=body)
    assert client.get_object(Bucket=s3_bucket, Key="in/a.png")["Body"].read() == body
    assert [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]] == ["in/a.png"]
    client.delete_object(Bucket=s3_bucket, Key="in/a.png")
    assert client.list_objects_v2(Bucket=s3_bucket)["KeyCount"] == 0
    with pytest.raises(client.exceptions.NoSuchKey):
        client.get_object(Bucket=s3_bucket, Key="in/a.png")


def test_multipart_upload_completes(s3, s3_bucket):
    client = s3.client()
    parts = [os.urandom(5 * MiB), b"x"]
    upload = client.create_multipart_upload(Bucket=s3_bucket, Key="big.tif")["UploadId"]
    done = [{"PartNumber": n, "ETag": client.upload_part(Bucket=s3_bucket, Key="big.tif", UploadId=upload,
                                                         PartNumber=n, Body=part)["ETag"]}
            for n, part in enumerate(parts, 1)]
    client.complete_multipart_upload(Bucket=s3_bucket, Key="big.tif", UploadId=upload,
                                     MultipartUpload={"Parts": done})
    assert client.get_object(Bucket=s3_bucket, Key="big.tif")["Body"].read() == b"".join(parts)
    assert client.head_object(Bucket=s3_bucket, Key="big.tif")["ContentLength"] == 5 * MiB + 1


def test_aborted_multipart_upload_leaves_nothing(s3, s3_bucket):
    client = s3.client()
    upload = client.create_multipart_upload(Bucket=s3_bucket, Key="refused.png")["UploadId"]
    client.upload_part(Bucket=s3_bucket, Key="refused.png", UploadId=upload, PartNumber=1, Body=os.urandom(5 * MiB))
    client.abort_multipart_upload(Bucket=s3_bucket, Key="refused.png", UploadId=upload)
    assert client.list_objects_v2(Bucket=s3_bucket)["KeyCount"] == 0
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_environment_configures_boto3(s3, s3_bucket, monkeypatch):
    # A pixmill process gets only these variables: boto3 must find the endpoint, keys and region in them.
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in s3.environment().items():
        monkeypatch.setenv(name, value)
    assert {"AWS_ENDPOINT_URL", *CREDENTIALS} <= set(s3.environment())
    client = boto3.session.Session().client("s3")
    client.put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    assert s3.client().get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"v"


def test_restart_keeps_the_port_and_empties_the_buckets(tmp_path):
    with running_s3(tmp_path) as s3:
        endpoint = s3.endpoint_url
        bucket = s3.create_bucket("kept")
        s3.client().put_object(Bucket=bucket, Key="gone", Body=b"in memory only")
        s3.restart()
        assert s3.endpoint_url == endpoint
        client = s3.client()
        assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
        client.put_object(Bucket=bucket, Key="after", Body=b"again")
        assert client.get_object(Bucket=bucket, Key="after")["Body"].read() == b"again"
        port, proc = s3.port, s3.proc
    assert proc.poll() is not None
    assert not listening(port)
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        s3.client(retries={"max_attempts": 0}).list_buckets()
    assert "moto.server" in (tmp_path / "moto.log").read_text()


def test_stopped_even_when_the_block_fails(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), running_s3(tmp_path) as s3:
        port, proc = s3.port, s3.proc
        raise RuntimeError("boom")
    assert proc.poll() is not None
    assert not listening(port)
