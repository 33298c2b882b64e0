"""Executors: both engines run process() alike, and an idle MPI pool does not burn CPU."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, process
from pixmill.worker.backoff import DEFAULT_BACKOFF, FAST_SECONDS
from pixmill.worker.engine import make_executor, threads_per_worker
from support.idle import measure

REAL = Path(__file__).parents[1] / "data" / "real"


def test_engine_and_worker_count_are_validated() -> None:
    with pytest.raises(ValueError, match="engine must be one of mpi, local"):
        make_executor("threads", 2)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        make_executor("local", 0)


def test_workers_share_the_cores_between_them() -> None:
    cores = psutil.cpu_count() or 1
    assert threads_per_worker(1) == cores
    assert threads_per_worker(cores) == 1
    assert threads_per_worker(cores * 4) == 1


@pytest.mark.parametrize("kind", ["local", pytest.param("mpi", marks=pytest.mark.mpi)])
def test_pool_results_equal_in_process_results(kind: str) -> None:
    data = [(REAL / name).read_bytes() for name in ("pil_flower.jpg", "sk_coins.png", "pil_hopper.bmp")]
    pipeline = parse_pipeline("grayscale | blur(ksize=3)")
    expected = [process(d, pipeline, Output("png")) for d in data]
    with make_executor(kind, 2) as executor:
        got = list(executor.map(process, data, [pipeline] * 3, [Output("png")] * 3, timeout=120))
    assert got == expected


@pytest.mark.mpi
def test_an_idle_mpi_pool_ends_its_quick_polling_and_does_not_spin() -> None:
    with make_executor("mpi", 2) as executor:
        assert list(executor.map(abs, [-1, -2, -3, -4], timeout=120)) == [1, 2, 3, 4]
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
        burst = measure(procs, 5)  # the workers' fast and warm spells after their last task, and beyond
        idle = measure(procs, 5)
    # The fast and warm spells poll MPI often for a while after a task, so a job then is noticed at
    # once; after them a rank wakes once per back-off cap.  A spinning rank uses a core.
    assert FAST_SECONDS + DEFAULT_BACKOFF.warm_seconds < 5
    print("the 5 s after the last task:", *burst, "the next 5 s:", *idle, sep="\n")
    assert sum("mpi4py.futures.server" in use.command for use in idle) == 2
    for use in burst:
        assert use.cpu < 0.25, f"{use} in the 5 s after the last task"
    for use in idle:
        if use.pid != me.pid:  # this process's threads are pytest's too, not only the pool's manager
            assert use.wakeups < 150, f"{use}: polls faster than the 20 ms back-off once idle"
        assert use.cpu < 0.05, f"{use}: more than 5% of a core while idle"
