"""mpi4py.futures' polling back-off, made quick after a hand-off and cheap when idle.

Every loop of mpi4py.futures (the pool's manager thread, each worker) polls MPI and, while nothing
arrives, sleeps for a back-off that doubles from a thousandth of one fixed cap (MPI4PY_FUTURES_BACKOFF)
and drops to 0 at each hand-off. With one cap an idle pool either wakes often (a small cap) or notices
a task late (a large cap). quick_backoff_after_handoff replaces the private Backoff.sleep so that the cap
is `fast` for FAST_SECONDS after each hand-off, then (in workers) `warm` for `warm_seconds` more, and only
then the configured cap; in the pool's own process it also makes a submit end the manager's sleep at once
and hands each task to the worker that finished last, which is still polling quickly. It relies on the
private classes of mpi4py.futures._core, hence the pin on mpi4py 4 in pyproject.toml.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..config import Settings

if TYPE_CHECKING:  # mpi4py only once a pool needs it: this module patches it if it is loaded
    from mpi4py.futures._core import Pool as MpiPool
    from mpi4py.futures._core import _Item

    class _Polling(Protocol):
        """mpi4py's Backoff as the patched sleep sees it: its three times and the two deadlines it adds."""

        tval: float
        tmax: float
        tmin: float
        quick_until: float
        warm_until: float

__all__ = ["Backoff", "DEFAULT_BACKOFF", "FAST_SECONDS", "quick_backoff_after_handoff"]

# Long enough to cover the gap between tasks of one batch, short enough that the quick polling ends
# soon after it.
FAST_SECONDS = 0.3


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """The polling caps of an MPI pool, in seconds (the back-off fields of Settings)."""

    manager: float              # the pool's manager thread, once idle
    worker: float               # each worker, once idle
    fast: float                 # for FAST_SECONDS after a hand-off
    warm: float                 # in a worker, for warm_seconds after that
    warm_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Backoff:
        """The caps configured in settings (PIXMILL_MANAGER_BACKOFF and the others)."""
        return cls(manager=settings.manager_backoff, worker=settings.worker_backoff, fast=settings.fast_backoff,
                   warm=settings.warm_backoff, warm_seconds=settings.warm_seconds)


DEFAULT_BACKOFF = Backoff.from_settings(Settings())


def quick_backoff_after_handoff(caps: Backoff = DEFAULT_BACKOFF, *, wake_on_submit: bool = False) -> bool:
    """Patch mpi4py.futures (if imported) so polling is quick after each hand-off; False if not possible.

    The cap is caps.fast for FAST_SECONDS after a hand-off, then (without wake_on_submit) caps.warm for
    caps.warm_seconds more. With wake_on_submit, in the pool's own process, a submit ends the manager's
    sleep at once and the worker that finished last takes the next task."""
    core = sys.modules.get("mpi4py.futures._core")
    backoff, pool = getattr(core, "Backoff", None), getattr(core, "Pool", None)
    if backoff is None or not callable(getattr(backoff, "sleep", None)) or not callable(getattr(pool, "push", None)):
        return False
    if getattr(backoff, "pixmill_patched", False):
        return True
    # The manager sleeps by acquiring a lock that is always held, so that a submit can release it;
    # a timed acquire costs no more than time.sleep, where an Event's wait costs more.
    gate = threading.Lock()
    gate.acquire()
    pause = gate.acquire if wake_on_submit else None
    fast, warm = caps.fast, caps.warm
    warm_seconds = 0.0 if wake_on_submit else caps.warm_seconds  # a submit wakes the manager: no warm spell

    def sleep(self: _Polling) -> None:  # mpi4py's own, plus the caps while a hand-off is recent
        if self.tval == 0.0:  # reset() at a hand-off sets tval to 0
            self.quick_until = time.monotonic() + FAST_SECONDS
            self.warm_until = self.quick_until + warm_seconds
        if pause is None or self.tval == 0.0:
            time.sleep(self.tval)
        else:
            pause(timeout=self.tval)
        cap, now = self.tmax, time.monotonic()
        if cap > fast and now < getattr(self, "quick_until", 0.0):
            cap = fast
        elif cap > warm and now < getattr(self, "warm_until", 0.0):
            cap = warm
        self.tval = min(cap, max(self.tmin, self.tval * 2))

    push = pool.push

    def push_and_wake(self: MpiPool, item: _Item[Any]) -> None:
        push(self, item)
        try:
            gate.release()
        except RuntimeError:  # already released by another submit, not yet taken
            pass

    backoff.sleep, backoff.pixmill_patched = sleep, True
    if wake_on_submit:
        pool.push = push_and_wake
        # mpi4py hands a task to the worker that has waited longest (a FIFO); the one that finished
        # last is still in its fast or warm spell, so a job now and then goes to it, and the others
        # stay cold and cheap.  Busy pools are unaffected: every worker gets the next task it can.
        workers = getattr(core, "WorkerSet", None)
        if workers is not None and issubclass(workers, collections.deque):
            workers.pop = collections.deque.pop
    return True
