"""Seconds per stage for the run report, kept in ``stage_times.json`` and summed over every invocation."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from clinkd.engine.distributed import is_main_process
from clinkd.io import atomic_write_json
from clinkd.markdown import table
from clinkd.progress import console

STAGE_TIMES_FILE = "stage_times.json"


class StageClock:
    """Seconds per stage for the report, summed over every invocation on one run folder.

    With ``path`` (``<run>/stage_times.json``) the sums are saved while a stage runs (every ``save_every``
    seconds), when a SIGTERM ends it, and when it ends, failed or not, and read back by the next invocation: a
    resumed run reports what its outputs cost in all, a killed stage included, not the seconds of the last restart;
    a stage whose outputs are reused adds almost nothing.
    """

    def __init__(self, path: Path | None = None, save_every: float = 30.0):
        self.path = path
        self.save_every = save_every
        self.seconds: dict[str, float] = self._recorded(path) if path is not None else {}

    @staticmethod
    def _recorded(path: Path) -> dict[str, float]:
        if not path.is_file():
            return {}
        try:
            return {str(stage): float(seconds) for stage, seconds in json.loads(path.read_text()).items()}
        except (ValueError, AttributeError, TypeError):
            console.print(f"[yellow]{path}: unreadable stage times, counting from zero[/]")
            return {}

    def time(self, stage: str, work: Callable):
        before, started = self.seconds.get(stage, 0.0), time.perf_counter()

        def record() -> None:
            self.seconds[stage] = before + time.perf_counter() - started
            if self.path is not None and is_main_process():
                atomic_write_json(self.path, self.seconds)

        ticker = _Ticker(self.save_every, record) if self.path is not None else None  # a killed stage keeps its time
        try:
            with _saving_on_sigterm(record) if self.path is not None else nullcontext():
                return work()
        finally:
            if ticker is not None:
                ticker.stop()
            record()

    def markdown(self) -> str:
        rows = [[stage, f"{seconds:.1f}"] for stage, seconds in self.seconds.items()]
        total = ["**total**", f"**{sum(self.seconds.values()):.1f}**"]
        note = (
            "Summed over every invocation on this run folder (`stage_times.json`); a reused stage adds almost nothing."
        )
        return f"## Stage times\n\n{note}\n\n" + table(["stage", "seconds"], [*rows, total], "lr")


@contextmanager
def _saving_on_sigterm(save: Callable[[], None]) -> Iterator[None]:
    """Call ``save`` when a SIGTERM arrives, then let the signal end the process as it would have (its default action
    runs no ``finally``, so a stage killed before its first periodic save would lose its time)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    previous = signal.SIG_DFL if previous is None else previous  # None: set outside Python, i.e. the default

    def handler(signum, frame) -> None:
        save()
        signal.signal(signal.SIGTERM, previous)
        signal.raise_signal(signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Ticker:
    """Calls ``tick`` every ``every`` seconds on a daemon thread until :meth:`stop`."""

    def __init__(self, every: float, tick: Callable[[], None]):
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every, tick), daemon=True)
        self._thread.start()

    def _run(self, every: float, tick: Callable[[], None]) -> None:
        while not self._stopped.wait(every):
            tick()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
