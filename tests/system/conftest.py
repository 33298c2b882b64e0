"""Fixtures of the system tests: a real `pixmill serve` shared by the tests of a module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.servers import Server, running_server


@pytest.fixture(scope="module")
def mpi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`pixmill serve` on 127.0.0.1 with two MPI workers, for one module's tests; it must stop cleanly."""
    with running_server(tmp_path_factory.mktemp("serve"), engine="mpi", workers=2) as server:
        yield server
    assert server.proc.returncode == 0, server.log.read_text()[-2000:]    # SIGTERM is a clean stop
