"""One schema per dialect with one query text, or SQLAlchemy Core: what each costs per statement on PostgreSQL.

The store keeps its queries in SQLite's dialect and hands them to psycopg through a thin connection
(`pixmill.store.postgres.Connection`: `?` to `%s`, cached, and rows read by position or name). This
measures, on a throwaway PostgreSQL (Debian's, started as the tests start it), three ways of running
the statements a dispatcher runs most: the look at the queue, a claim's SELECT, one task's UPDATE:
raw psycopg with `%s` text, pixmill's connection, and SQLAlchemy Core's expressions over psycopg.
Usage: python benchmarks/bench_dialect.py [--n 3000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
import psycopg  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from pixmill.config import Settings  # noqa: E402
from pixmill.store import Store  # noqa: E402
from pixmill.store.postgres import Connection  # noqa: E402
from support.postgres import running_postgres  # noqa: E402


def per_call_us(fn, n: int) -> float:
    for _ in range(200):
        fn(0)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, time.perf_counter() - start)
    return 1e6 * best / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()
    with running_postgres() as pg, tempfile.TemporaryDirectory() as scratch:
        url = pg.create_database("dialect")
        with Store.open(Settings(data_dir=Path(scratch), database_url=url)) as store:
            store.database.connection().execute("INSERT INTO jobs (id, created_at, output) VALUES ('j', 0, '{}')")
            store.database.connection().executemany(
                "INSERT INTO tasks (job_id, n, name, pipeline, state, created_at, input_blob) "
                "VALUES ('j', ?, 'x', 'flip', 'queued', 0, 'k')", [(i,) for i in range(1000)])
        raw = psycopg.connect(url, autocommit=True)
        ours = Connection(psycopg.connect(url, autocommit=True))
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
        core = engine.connect()
        tasks = sa.Table("tasks", sa.MetaData(), autoload_with=engine)
        cases = {
            "queue look": (
                lambda i: raw.execute("SELECT 1 FROM tasks WHERE state = 'queued' LIMIT 1").fetchone(),
                lambda i: ours.execute("SELECT 1 FROM tasks WHERE state = 'queued' LIMIT 1").fetchone(),
                lambda i: core.execute(sa.select(sa.literal(1)).select_from(tasks)
                                       .where(tasks.c.state == "queued").limit(1)).fetchone()),
            "claim's select (8 ids)": (
                lambda i: raw.execute("SELECT id FROM tasks WHERE state = 'queued' AND crashes = 0 ORDER BY id "
                                      "LIMIT %s", (8,)).fetchall(),
                lambda i: ours.execute("SELECT id FROM tasks WHERE state = 'queued' AND crashes = 0 ORDER BY id "
                                       "LIMIT ?", (8,)).fetchall(),
                lambda i: core.execute(sa.select(tasks.c.id).where(tasks.c.state == "queued", tasks.c.crashes == 0)
                                       .order_by(tasks.c.id).limit(8)).fetchall()),
            "one task's update": (
                lambda i: raw.execute("UPDATE tasks SET attempts = attempts + 1 WHERE id = %s", (i % 1000 + 1,)),
                lambda i: ours.execute("UPDATE tasks SET attempts = attempts + 1 WHERE id = ?", (i % 1000 + 1,)),
                lambda i: core.execute(sa.update(tasks).where(tasks.c.id == i % 1000 + 1)
                                       .values(attempts=tasks.c.attempts + 1))),
        }
        print(f"µs per statement on PostgreSQL over 127.0.0.1, best of 3 × {args.n}:")
        print(f"{'statement':24} {'psycopg':>9} {'pixmill':>9} {'SQLAlchemy Core':>16}")
        for name, (a, b, c) in cases.items():
            ra, rb, rc = (per_call_us(f, args.n) for f in (a, b, c))
            print(f"{name:24} {ra:9.1f} {rb:9.1f} {rc:16.1f}   (pixmill {rb / ra:.2f}x, Core {rc / ra:.2f}x psycopg)")
        core.close()
        engine.dispose()
        raw.close()
        ours.conn.close()


if __name__ == "__main__":
    main()
