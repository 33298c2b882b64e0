"""Fixtures shared by the test modules."""

from __future__ import annotations

import itertools
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import strategies as st

from pixmill.config import Settings
from pixmill.store import Store
from pixmill.web import create_app
from support.postgres import PostgresServer, running_postgres
from support.s3 import S3Server, running_s3
from support.strategies import params_strategy
from support.web import MB, make_client

DATA_DIR = Path(__file__).parent / "data"

# A test run started in the background of a non-interactive shell (`make test &`) inherits SIGINT
# ignored, and so would every server it starts: Ctrl-C, which tests send as SIGINT, would then not
# stop them (a fresh-clone run so started failed that way). Processes started from here get the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked both_backends runs once on SQLite with the blob folder and once on PostgreSQL with S3,
    unless it names its backend (support.backends: sqlite_only, postgres_only)."""
    narrowed = any("backend" in str(m.args[0]) for m in metafunc.definition.iter_markers("parametrize"))
    if metafunc.definition.get_closest_marker("both_backends") and not narrowed and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The store's backends: "sqlite" (SQLite and the blob folder in the data dir, the default) or
    "postgresql" (a fresh PostgreSQL database and a fresh S3 bucket, as a cluster runs)."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str:
    """'' (SQLite in the data dir) or the URL of a fresh PostgreSQL database."""
    return "" if backend == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture
def blob_url(backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """'' (the data dir's blob folder) or s3:// of a fresh bucket, with the AWS_* variables of the
    test endpoint set for this process and the processes it starts."""
    if backend == "sqlite":
        return ""
    server: S3Server = request.getfixturevalue("s3")
    for name, value in server.environment().items():
        monkeypatch.setenv(name, value)
    return f"s3://{request.getfixturevalue('s3_bucket')}/blobs"


@pytest.fixture
def settings(tmp_path: Path, database_url: str, blob_url: str) -> Settings:
    """Settings of a small store in tmp_path, on a local pool of one worker; files override it as they need."""
    return Settings(data_dir=tmp_path / "data", database_url=database_url, blob_url=blob_url, engine="local",
                    workers=1, max_files=4, max_file_bytes=1 * MB, max_request_bytes=3 * MB)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    """The store of `settings`, closed after the test."""
    with Store.open(settings) as store:
        yield store


@pytest.fixture
def app(settings: Settings, store: Store) -> Flask:
    """The web app on `store`, with event streams that look often and end within 20 s."""
    return create_app(settings, store, sse_poll=0.05, sse_max_seconds=20)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of `app` that reads each response whole."""
    return make_client(app)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder of test files copied from the shared corpus (see data/SOURCES.md)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def real_image() -> Callable[..., np.ndarray]:
    """Load tests/data/real/NAME with cv2.imread (cached; each call returns a fresh copy)."""
    cache: dict[tuple[str, int], np.ndarray] = {}

    def load(name: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
        if (name, flags) not in cache:
            image = cv2.imread(str(DATA_DIR / "real" / name), flags)
            assert image is not None, f"OpenCV cannot read tests/data/real/{name}"
            cache[name, flags] = image
        return cache[name, flags].copy()

    return load


@pytest.fixture(scope="session")
def op_params() -> Callable[..., st.SearchStrategy]:
    """params_strategy(op, cap=None): a hypothesis strategy for an operation's parameters."""
    return params_strategy


@pytest.fixture(scope="session")
def schemathesis_config():
    """schemathesis' settings for pixmill: a request over a limit (too many files, too large) is
    refused with 413, which its negative_data_rejection check does not expect by default."""
    from schemathesis.config import SchemathesisConfig

    statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
    return SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": statuses}}})


_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the session on 127.0.0.1 (run as the postgres user when the tests run as root)."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """The URL of a fresh empty database on `postgres`, dropped after the test."""
    name = f"pixmill_test_{next(_database_numbers)}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server over real HTTP on 127.0.0.1 for the session (its log in the session's tmp dir)."""
    with running_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_bucket(s3: S3Server) -> Iterator[str]:
    """The name of a fresh, empty bucket of `s3`, deleted with its objects after the test."""
    name = s3.create_bucket(f"pixmill-test-{uuid.uuid4().hex[:12]}")
    yield name
    s3.delete_bucket(name)
