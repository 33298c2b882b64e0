"""The PostgreSQL test harness: a real server on 127.0.0.1, separate databases, restarts, a clean stop."""

from __future__ import annotations

import os

import psutil
import psycopg
import pytest

from support.postgres import ended, listening, running_postgres


def test_select_one_through_psycopg(postgres, postgres_url):
    with psycopg.connect(postgres_url, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SHOW unix_socket_directories").fetchone() == (str(postgres.root),)
    assert postgres_url.startswith(f"postgresql://postgres@127.0.0.1:{postgres.port}/")


def test_server_runs_as_postgres_when_root(postgres):
    owner = psutil.Process(postgres.postmaster_pid()).username()
    assert owner == ("postgres" if os.geteuid() == 0 else psutil.Process().username())


def test_two_databases_are_separate(postgres, postgres_url):
    other = postgres.create_database("pixmill_harness_other")
    try:
        with psycopg.connect(postgres_url, connect_timeout=5) as conn:
            conn.execute("CREATE TABLE jobs (id int)")
            conn.execute("INSERT INTO jobs VALUES (1)")
        with psycopg.connect(other, connect_timeout=5) as conn:
            with pytest.raises(psycopg.errors.UndefinedTable):
                conn.execute("SELECT * FROM jobs")
    finally:
        postgres.drop_database("pixmill_harness_other")
    with psycopg.connect(postgres.url, connect_timeout=5) as conn:
        names = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
    assert "pixmill_harness_other" not in names


def test_restart_drops_connections_and_keeps_commits(postgres, postgres_url):
    conn = psycopg.connect(postgres_url, connect_timeout=5, autocommit=True)
    try:
        conn.execute("CREATE TABLE jobs (id int)")
        conn.execute("INSERT INTO jobs VALUES (7)")
        old_pid = postgres.postmaster_pid()
        postgres.restart()
        assert postgres.postmaster_pid() not in (None, old_pid)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()
    with psycopg.connect(postgres_url, connect_timeout=5) as conn:
        assert conn.execute("SELECT id FROM jobs").fetchall() == [(7,)]


def test_context_manager_stops_the_server_and_removes_its_directory():
    with pytest.raises(RuntimeError, match="the test failed"):
        with running_postgres() as server:
            port, root, pid = server.port, server.root, server.postmaster_pid()
            with server.connect() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            assert listening(port)
            raise RuntimeError("the test failed")
    assert not listening(port), f"something still listens on 127.0.0.1:{port}"
    assert not root.exists(), f"{root} is still there"
    assert not psutil.pid_exists(pid) or ended(psutil.Process(pid)), f"the postmaster {pid} is still running"
