"""Executors: both engines run process() alike, and an idle MPI pool does not burn CPU."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from pixmill.engine import FAST_SECONDS, WARM_SECONDS, make_executor, threads_per_worker
from pixmill.pipeline import parse_pipeline
from pixmill.process import Output, process

REAL = Path(__file__).parent / "data" / "real"


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
def test_an_idle_mpi_pool_uses_almost_no_cpu() -> None:
    with make_executor("mpi", 2) as executor:
        assert list(executor.map(abs, [-1, -2, -3, -4], timeout=120)) == [1, 2, 3, 4]
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]

        def cpu() -> float:
            return sum(sum(p.cpu_times()[:2]) for p in procs if p.is_running())
        start = cpu()
        time.sleep(5)                  # the workers' fast and warm spells after their last task, and beyond
        after_burst = cpu()
        time.sleep(5)                  # idle
        idle = cpu() - after_burst
    # A spinning rank would use ~5 s of CPU in each window.  The spells poll MPI every 0.5 and
    # 2 ms for FAST_SECONDS + WARM_SECONDS after a task, so a job then is noticed at once.
    assert FAST_SECONDS + WARM_SECONDS < 5
    burst = after_burst - start
    print(f"the 5 s after the last task: {burst / 5:.1%} of a core; the next 5 s: {idle / 5:.1%}")
    assert burst / 5 < 0.10, f"the pool used {burst / 5:.1%} of a core in the 5 s after its last task"
    assert idle / 5 < 0.05, f"idle pool used {idle / 5:.1%} of a core"
