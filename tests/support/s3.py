"""An S3 endpoint over real HTTP for the tests: moto's standalone server on 127.0.0.1, started and stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from botocore.config import Config

REGION = "us-east-1"

# Dummy credentials and an explicit region, so neither boto3 nor the server ever reads the user's ~/.aws.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


class S3Server:
    """A moto server (`python -m moto.server`) on a free port of 127.0.0.1, in its own process group.

    moto keeps everything in memory and its server has no persistence: `restart()` comes back on the
    same port with no objects (its recorder only replays logged requests on demand, which would not
    reproduce multipart upload ids). The buckets made with `create_bucket` are made again, empty.
    """

    def __init__(self, folder: Path, timeout: float = 30.0):
        self.folder, self.timeout = folder, timeout
        self.log = folder / "moto.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.buckets: list[str] = []

    @property
    def endpoint_url(self) -> str:
        """The server's URL, as boto3's `endpoint_url` or `AWS_ENDPOINT_URL`."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, attempts: int = 5) -> None:
        """Start the server on a free port, trying another if the chosen one is taken meanwhile."""
        for attempt in range(attempts):
            self.port = _free_port()
            try:
                self._launch()
                return
            except _PortTaken:
                if attempt == attempts - 1:
                    raise

    def environment(self) -> dict[str, str]:
        """The `AWS_*` variables a pixmill process talking to this endpoint is started with."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint_url,
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client of this endpoint, with the dummy credentials; `config` goes to botocore's Config."""
        core = botocore.session.Session()
        core.set_config_variable("config_file", os.devnull)
        core.set_config_variable("credentials_file", os.devnull)
        session = boto3.session.Session(botocore_session=core, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                                        aws_session_token=CREDENTIALS["AWS_SESSION_TOKEN"], region_name=REGION)
        settings = {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2}, **config}
        return session.client("s3", endpoint_url=self.endpoint_url, config=Config(**settings))

    def create_bucket(self, name: str) -> str:
        """Create the bucket `name` (again after a restart) and return its name."""
        self.client().create_bucket(Bucket=name)
        if name not in self.buckets:
            self.buckets.append(name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete the bucket `name` with its objects and unfinished multipart uploads, if it is there."""
        client = self.client()
        if name in self.buckets:
            self.buckets.remove(name)
        try:
            for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=name):
                for upload in page.get("Uploads", []):
                    client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
            for page in client.get_paginator("list_object_versions").paginate(Bucket=name):
                for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    client.delete_object(Bucket=name, Key=item["Key"], VersionId=item["VersionId"])
            client.delete_bucket(Bucket=name)
        except client.exceptions.NoSuchBucket:
            pass

    def restart(self) -> None:
        """Stop the server and start it again on the same port; it comes back empty but for its buckets."""
        self.stop()
        self._launch()
        for name in self.buckets:
            self.client().create_bucket(Bucket=name)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server with SIGTERM, then SIGKILL its process group if it is still there."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever the server left in its group goes too, even if the leader has exited.
        _signal_group(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"moto server {proc.pid} survived SIGKILL for {timeout} s") from exc

    def _launch(self) -> None:
        """Start the process on self.port and wait until it answers HTTP."""
        cmd = [sys.executable, "-m", "moto.server", "--host", "127.0.0.1", "--port", str(self.port)]
        environ = {**os.environ, **self.environment()}
        environ.pop("AWS_ENDPOINT_URL")
        environ.pop("AWS_PROFILE", None)
        with open(self.log, "ab") as log:
            log.write(f"--- {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=environ, start_new_session=True, cwd=self.folder)
        deadline = time.monotonic() + self.timeout
        while not self._answers():
            if self.proc.poll() is not None:
                text = self.log.read_text(errors="replace")[-3000:]
                self.proc = None
                if "Address already in use" in text:
                    raise _PortTaken(self.port)
                raise AssertionError(f"moto server exited on port {self.port}:\n{text}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"moto server did not answer on port {self.port} within {self.timeout} s")
            time.sleep(0.1)

    def _answers(self) -> bool:
        """True once the server answers any HTTP request (an error status is an answer too)."""
        try:
            with urllib.request.urlopen(self.endpoint_url + "/", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False


class _PortTaken(Exception):
    """The chosen port was taken by someone else between choosing it and binding it."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def listening(port: int) -> bool:
    """True if something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def running_s3(folder: Path | None = None, timeout: float = 30.0) -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 for the block, always stopped after it; its log in `folder` (or a temp dir)."""
    with tempfile.TemporaryDirectory(prefix="pixmill-s3-") as scratch:
        server = S3Server(Path(folder or scratch), timeout)
        try:
            server.start()
            yield server
        finally:
            server.stop()
