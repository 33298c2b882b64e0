"""The patch of mpi4py.futures' polling back-off, pinned without MPI: on a stand-in of mpi4py.futures._core
with the same names, on a fake clock, and once on the real module in a process that never starts MPI."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from pixmill.worker import backoff as patch
from pixmill.worker.backoff import FAST_SECONDS, Backoff, quick_backoff_after_handoff

CAPS = Backoff(manager=0.02, worker=0.02, fast=0.0005, warm=0.002, warm_seconds=2.0)
IDLE = 0.02  # MPI4PY_FUTURES_BACKOFF: the cap mpi4py gives each Backoff


class FakeClock:
    """time.monotonic and time.sleep for the patch's module: sleeping only moves the clock on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeGate:
    """threading.Lock for the patch's module: a timed acquire that times out moves the fake clock on."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.held = clock, False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self.held:
            self.held = True
            return True
        self.clock.now += max(timeout, 0.0)
        return False

    def release(self) -> None:
        if not self.held:
            raise RuntimeError("release unlocked lock")
        self.held = False


def stand_in_core() -> types.ModuleType:
    """Fresh classes with the names and the behaviour of mpi4py 4's mpi4py.futures._core."""
    core = types.ModuleType("mpi4py.futures._core")
    core.time = time

    class Backoff:
        def __init__(self, seconds: float = 0.001) -> None:
            self.tval = 0.0
            self.tmax = max(float(seconds), 0.0)
            self.tmin = self.tmax / (1 << 10)

        def reset(self) -> None:
            self.tval = 0.0

        def sleep(self) -> None:
            core.time.sleep(self.tval)
            self.tval = min(self.tmax, max(self.tmin, self.tval * 2))

    class Pool:
        def __init__(self) -> None:
            self.queue: collections.deque = collections.deque()

        def push(self, item: object) -> None:
            self.queue.append(item)

    class WorkerSet(collections.deque):
        add = collections.deque.append
        pop = collections.deque.popleft

    core.Backoff, core.Pool, core.WorkerSet = Backoff, Pool, WorkerSet
    return core


def trace(core: types.ModuleType, clock: FakeClock, seconds: float) -> list[tuple[float, float]]:
    """(seconds since the hand-off, back-off after that sleep) for each sleep of an idle loop."""
    backoff = core.Backoff(IDLE)
    backoff.reset()  # a hand-off
    start, seen = clock.now, []
    while clock.now - start < seconds:
        backoff.sleep()
        seen.append((clock.now - start, backoff.tval))
    return seen


def spells(seen: list[tuple[float, float]]) -> tuple[list[float], list[float], list[float]]:
    """The back-offs during the fast spell, during the warm spell (in a worker), and after both."""
    fast = [tval for at, tval in seen if at < FAST_SECONDS]
    warm = [tval for at, tval in seen if FAST_SECONDS <= at < FAST_SECONDS + CAPS.warm_seconds]
    after = [tval for at, tval in seen if at >= FAST_SECONDS + CAPS.warm_seconds]
    return fast, warm, after


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(patch, "time", fake)
    return fake


@pytest.fixture
def core(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = stand_in_core()
    monkeypatch.setitem(sys.modules, "mpi4py.futures._core", module)
    return module


def test_a_worker_polls_fast_then_warm_after_a_hand_off_then_backs_off_to_its_cap(core, clock) -> None:
    assert quick_backoff_after_handoff(CAPS)
    fast, warm, after = spells(trace(core, clock, FAST_SECONDS + CAPS.warm_seconds + 1))
    assert max(fast) == CAPS.fast
    assert max(warm) == CAPS.warm
    assert after[-1] == IDLE and max(after) == IDLE
    assert len(fast) > 100 and len(after) < 100  # quick polling, then few wakes in the idle second

    fast, _, _ = spells(trace(core, clock, FAST_SECONDS))  # each hand-off starts the spells anew
    assert max(fast) == CAPS.fast


def test_unpatched_mpi4py_grows_straight_to_its_cap(core, clock) -> None:
    core.time = clock
    assert max(tval for _, tval in trace(core, clock, FAST_SECONDS)) == IDLE  # what the patch is for


def test_the_manager_has_the_fast_spell_but_no_warm_one(core, clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patch, "threading", types.SimpleNamespace(Lock=lambda: FakeGate(clock)))
    assert quick_backoff_after_handoff(CAPS, wake_on_submit=True)
    fast, warm, after = spells(trace(core, clock, FAST_SECONDS + CAPS.warm_seconds + 1))
    assert max(fast) == CAPS.fast
    assert max(warm) == IDLE and max(after) == IDLE


def test_a_submit_wakes_the_sleeping_manager_at_once(core) -> None:
    assert quick_backoff_after_handoff(CAPS, wake_on_submit=True)
    manager, pool = core.Backoff(60.0), core.Pool()
    manager.tval = 30.0  # deep in its back-off: unpatched, it would sleep half a minute
    sleeper = threading.Thread(target=manager.sleep, daemon=True)
    start = time.monotonic()
    sleeper.start()
    time.sleep(0.05)
    assert sleeper.is_alive()
    pool.push("task")
    sleeper.join(timeout=5)
    assert not sleeper.is_alive(), "the push did not wake the manager"
    assert time.monotonic() - start < 5
    assert list(pool.queue) == ["task"]


def test_submits_while_the_manager_is_awake_wake_it_once(core) -> None:
    assert quick_backoff_after_handoff(CAPS, wake_on_submit=True)
    manager, pool = core.Backoff(60.0), core.Pool()
    pool.push("a")
    pool.push("b")  # the gate is open already: no error
    manager.tval = 0.2
    start = time.monotonic()
    manager.sleep()  # takes the open gate at once
    assert time.monotonic() - start < 0.15
    manager.tval = 0.2
    start = time.monotonic()
    manager.sleep()  # closed again: sleeps its back-off
    assert time.monotonic() - start >= 0.19
    assert list(pool.queue) == ["a", "b"]


def test_the_worker_that_finished_last_takes_the_next_task(core) -> None:
    workers = core.WorkerSet()
    for rank in (1, 2, 3):
        workers.add(rank)  # rank 3 finished last
    assert workers.pop() == 1  # mpi4py's own choice: the one that has waited longest
    assert quick_backoff_after_handoff(CAPS, wake_on_submit=True)
    workers.add(1)
    assert workers.pop() == 1
    assert workers.pop() == 3


def test_in_a_worker_the_choice_of_worker_is_left_alone(core) -> None:
    assert quick_backoff_after_handoff(CAPS)
    workers = core.WorkerSet([1, 2, 3])
    assert workers.pop() == 1
    pool = core.Pool()
    pool.push("task")
    assert list(pool.queue) == ["task"]


def test_patching_twice_is_harmless(core, clock) -> None:
    assert quick_backoff_after_handoff(CAPS, wake_on_submit=True)
    sleep, push, pop = core.Backoff.sleep, core.Pool.push, core.WorkerSet.pop
    assert quick_backoff_after_handoff(CAPS, wake_on_submit=True)
    assert quick_backoff_after_handoff(CAPS)
    assert (core.Backoff.sleep, core.Pool.push, core.WorkerSet.pop) == (sleep, push, pop)
    pool = core.Pool()
    pool.push("task")
    assert list(pool.queue) == ["task"]  # pushed once, not once per patch


def test_without_the_backoff_class_nothing_is_patched(core) -> None:
    del core.Backoff
    assert quick_backoff_after_handoff(CAPS, wake_on_submit=True) is False


def test_without_the_pool_class_the_backoff_is_left_alone(core) -> None:
    del core.Pool
    sleep = core.Backoff.sleep
    assert quick_backoff_after_handoff(CAPS, wake_on_submit=True) is False
    assert core.Backoff.sleep is sleep and not hasattr(core.Backoff, "pixmill_patched")


def test_without_mpi4py_futures_imported_nothing_is_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "mpi4py.futures._core", raising=False)
    assert quick_backoff_after_handoff(CAPS) is False


# Importing mpi4py.futures._core imports mpi4py.MPI, which starts MPI unless mpi4py.rc.initialize is
# False; in this process that would be for good, so the real module is tried in a process of its own.
REAL = """
import json, sys
import mpi4py
mpi4py.rc.initialize = mpi4py.rc.finalize = False
import mpi4py.futures._core as core
from mpi4py import MPI
sys.path.insert(0, sys.argv[1])
import test_backoff as t
from pixmill.worker import backoff as patch
clock = patch.time = t.FakeClock()
patched = patch.quick_backoff_after_handoff(t.CAPS, wake_on_submit=False)
seen = t.trace(core, clock, t.FAST_SECONDS + t.CAPS.warm_seconds + 1)
print(json.dumps({"mpi4py": mpi4py.__version__, "started": MPI.Is_initialized(), "patched": patched,
                  "seen": seen, "workers_fifo": core.WorkerSet([1, 2, 3]).pop() == 1}))
"""


def test_the_real_mpi4py_futures_behaves_as_the_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mpi4py")
    done = subprocess.run([sys.executable, "-c", REAL, str(Path(__file__).parent)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    real = json.loads(done.stdout)
    assert real["mpi4py"].startswith("4.")  # the pin in pyproject.toml
    assert real["started"] is False and real["patched"] is True and real["workers_fifo"] is True

    clock = FakeClock()
    monkeypatch.setattr(patch, "time", clock)
    monkeypatch.setitem(sys.modules, "mpi4py.futures._core", stand_in_core())
    assert quick_backoff_after_handoff(CAPS)
    expected = trace(sys.modules["mpi4py.futures._core"], clock, FAST_SECONDS + CAPS.warm_seconds + 1)
    assert [tuple(p) for p in real["seen"]] == expected
