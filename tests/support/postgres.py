"""A real PostgreSQL (Debian's) for the tests: a throwaway cluster in a temporary directory on 127.0.0.1."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import psycopg
from psycopg import sql

PG_USER = "postgres"
# initdb and a crash-recovering start are the slowest steps; a loaded CI machine may need this long.
COMMAND_TIMEOUT = 120.0
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

# Surviving a crash of the machine is worthless for a cluster that lives as long as a test session, and
# costs the most time. synchronous_commit stays on: with it off, `restart("immediate")` loses the latest
# commits, and the fault tests need a restarted server to keep everything it acknowledged.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "'16MB'",
    "max_connections": "100",
    "max_wal_size": "'256MB'",
    "logging_collector": "off",
}


def find_bindir() -> Path:
    """The bin folder of the newest PostgreSQL under /usr/lib/postgresql that has initdb."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    if not found:
        raise RuntimeError("no /usr/lib/postgresql/*/bin/initdb: install Debian's postgresql (make postgres-deps)")
    return max(found, key=lambda bindir: _version_key(bindir.parent.name))


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def ended(proc: psutil.Process) -> bool:
    """Whether a process has exited; a zombie counts, since the postmaster is not our child and only init reaps it."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _as_root() -> bool:
    return os.geteuid() == 0


class PostgresServer:
    """A PostgreSQL cluster in its own directory, listening on 127.0.0.1:port and a socket in that directory.

    As root (CI), initdb and pg_ctl run as the `postgres` user through runuser, since initdb refuses root.
    """

    def __init__(self, root: Path, port: int, bindir: Path | None = None):
        self.root, self.port = root, port
        self.bindir = bindir or find_bindir()
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.url = f"postgresql://{PG_USER}@127.0.0.1:{port}/postgres"

    def url_of(self, name: str) -> str:
        """The URL of database `name` on this server."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{name}"

    def connect(self, name: str = "postgres", **kw) -> psycopg.Connection:
        """A new psycopg connection to database `name` (autocommit unless told otherwise)."""
        kw.setdefault("autocommit", True)
        kw.setdefault("connect_timeout", 5)
        return psycopg.connect(self.url_of(name), **kw)

    def create_database(self, name: str) -> str:
        """Create the empty database `name` and return its URL."""
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_of(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name`, closing the connections a test left open to it."""
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def init(self) -> None:
        """Create the cluster (trust authentication) and write the settings of a test server."""
        self._pg("initdb", "-D", str(self.data), "-U", PG_USER, "-A", "trust", "-E", "UTF8",
                 "--locale=C", "--no-sync", "--no-instructions")
        lines = [f"{key} = {value}" for key, value in SETTINGS.items()]
        lines.append(f"unix_socket_directories = '{self.root}'")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# pixmill tests\n" + "\n".join(lines) + "\n")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        # The port is an option of the postmaster rather than a setting, so that a retry on another port
        # needs no new configuration; pg_ctl restart reuses the options it was started with.
        self._pg("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-o", f"-p {self.port}",
                 "-w", "-t", str(int(READY_TIMEOUT)))
        self.wait_ready()

    def start_on_free_port(self, attempts: int = 3) -> None:
        """Start on a free port, taking another one if something else bound it between the choice and the start."""
        for attempt in range(attempts):
            try:
                self.start()
                return
            except RuntimeError:
                if attempt == attempts - 1 or "could not bind" not in self.log_tail(50):
                    raise
            self.port = free_port()
            self.url = self.url_of("postgres")

    def restart(self, mode: str = "immediate") -> None:
        """Restart the server (by default without a clean shutdown, as a crash would), then wait for it."""
        self._pg("pg_ctl", "restart", "-D", str(self.data), "-l", str(self.log), "-m", mode, "-w",
                 "-t", str(int(READY_TIMEOUT)))
        self.wait_ready()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until a psycopg connection gets an answer (pg_ctl -w may return before the port does)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.connect(connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL on port {self.port} not ready after {timeout} s: {error}\n"
                                       f"{self.log_tail()}") from error
                time.sleep(0.1)

    def postmaster_pid(self) -> int | None:
        """The pid of the running postmaster, from postmaster.pid, or None."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            return None if ended(psutil.Process(pid)) else pid
        except psutil.NoSuchProcess:
            return None

    def stop(self) -> None:
        """Stop the server with a fast shutdown; kill the postmaster and its children if that did not end it."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        try:
            family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        try:
            self._pg("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT)))
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        alive = [proc for proc in family if not ended(proc)]
        for proc in alive:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        while not all(ended(proc) for proc in alive) and time.monotonic() < deadline:
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _pg(self, program: str, *args: str) -> None:
        """Run a PostgreSQL program, as the postgres user when we are root; raise with its output if it fails."""
        cmd = [str(self.bindir / program), *args]
        if _as_root():
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        # Output goes to a file, not a pipe: the postmaster that pg_ctl forks must not hold our pipe open.
        with tempfile.TemporaryFile() as out:
            # The working directory must be one the postgres user can enter, or pg_ctl refuses to run.
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  cwd=self.root, timeout=COMMAND_TIMEOUT)
            if proc.returncode != 0:
                out.seek(0)
                raise RuntimeError(f"{program} {' '.join(args)} failed ({proc.returncode}):\n"
                                   f"{out.read().decode(errors='replace')}\n{self.log_tail()}")


def _make_root() -> Path:
    """A fresh directory for a cluster that initdb and the postgres user can use."""
    root = Path(tempfile.mkdtemp(prefix="pixmill-pg-"))
    if _as_root():
        user = pwd.getpwnam(PG_USER)
        os.chown(root, user.pw_uid, user.pw_gid)
        # The postgres user must also pass through every parent (mkdtemp's own folder is 0700 to its owner).
        for parent in root.parents:
            if not os.stat(parent).st_mode & 0o001:
                shutil.rmtree(root)
                raise RuntimeError(f"{parent} is closed to the {PG_USER} user: set TMPDIR to a folder it can reach")
    return root


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started PostgreSQL on a free port of 127.0.0.1, always stopped and its directory removed at the end."""
    root = _make_root()
    try:
        server = PostgresServer(root, free_port())
        try:
            server.init()
            server.start_on_free_port()
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
