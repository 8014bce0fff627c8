"""The parent's side of a scenario: start the load processes and walk them through barriers.

Each load process gets an equal share of the users and of every port
(``model.split_users``; user 0 always goes to process 0, which matters for the
group sender). Between barriers the parent prints a progress line from the
shared counters.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from typing import Any, TextIO

from .model import BenchConfig, Job, split_users
from .worker import worker_main

START_DELAY = 0.3
"""Seconds between the parent's "go" and the common start time: every process hears it first."""
PROGRESS_SECONDS = 1.0


class LoadFailed(Exception):
    """A load process failed; the message carries its traceback."""


class Load:
    """The load processes of one scenario; use as a context manager."""

    def __init__(
        self,
        scenario: str,
        config: BenchConfig,
        users: Sequence[int],
        progress: TextIO | None = sys.stderr,
        shares: Sequence[tuple[int, ...]] | None = None,
    ) -> None:
        """``shares``: each load process's users, when the scenario deals them itself."""
        self.scenario = scenario
        self.config = config
        shares = split_users(config, users) if shares is None else shares
        context = multiprocessing.get_context("spawn")
        self.counters = context.Array("q", 2 * len(shares), lock=False)
        self.pipes: list[Connection] = []
        self.processes: list[SpawnProcess] = []
        self.progress = progress
        self.started = time.monotonic()
        self._last_line = 0.0
        for worker, share in enumerate(shares):
            parent_end, child_end = context.Pipe(duplex=True)
            job = Job(scenario, config, worker, share)
            process = context.Process(
                target=worker_main,
                args=(job, child_end, self.counters),
                name=f"chat-bench-{scenario}-{worker}",
                daemon=True,
            )
            process.start()
            child_end.close()
            self.pipes.append(parent_end)
            self.processes.append(process)

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._end_progress()

    def gather(self, kind: str = "sync", timeout: float | None = None) -> list[Any]:
        """Wait until every process sent ``kind`` (``sync`` or ``result``); return their words."""
        deadline = time.monotonic() + (timeout or self.config.setup_seconds)
        answers: dict[int, Any] = {}
        while len(answers) < len(self.pipes):
            waiting = [p for i, p in enumerate(self.pipes) if i not in answers]
            for pipe in wait(waiting, timeout=PROGRESS_SECONDS):
                assert isinstance(pipe, Connection)
                index = self.pipes.index(pipe)
                try:
                    got, payload = pipe.recv()
                except EOFError:
                    raise LoadFailed(f"load process {index} exited without a word") from None
                if got == "error":
                    raise LoadFailed(f"load process {index} failed:\n{payload}")
                if got != kind:
                    raise LoadFailed(f"load process {index} sent {got!r}, expected {kind!r}")
                answers[index] = payload
            self._show_progress()
            if time.monotonic() > deadline:
                raise LoadFailed(f"{self.scenario}: load processes did not reach {kind} in time")
        return [answers[i] for i in range(len(self.pipes))]

    def go(self, payload: Any = None) -> None:
        for pipe in self.pipes:
            pipe.send(("go", payload))

    def go_at(self) -> float:
        """Start every process at one moment, a little from now; returns that moment."""
        start = time.monotonic() + START_DELAY
        self.go(start)
        self.started = start
        return start

    def step(self, payload: Any = None) -> list[Any]:
        """Release the processes from a barrier and wait for them at the next one."""
        self.go(payload)
        return self.gather()

    def results(self) -> list[Any]:
        return self.gather("result", timeout=self.config.setup_seconds)

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.close()
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)

    def totals(self) -> tuple[int, int]:
        sent = sum(self.counters[i] for i in range(0, len(self.counters), 2))
        received = sum(self.counters[i] for i in range(1, len(self.counters), 2))
        return sent, received

    def _show_progress(self) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        interactive = self.progress.isatty()
        if not interactive and now - self._last_line < 5 * PROGRESS_SECONDS:
            return
        self._last_line = now
        sent, received = self.totals()
        elapsed = max(now - self.started, 1e-9)
        line = (
            f"[{self.scenario}] {elapsed:6.1f} s  sent {sent:>9,}  received {received:>9,}"
            f"  ({received / elapsed:,.0f}/s)"
        )
        self.progress.write(("\r" + line) if interactive else line + "\n")
        self.progress.flush()

    def _end_progress(self) -> None:
        if self.progress is not None and self.progress.isatty():
            self.progress.write("\n")
            self.progress.flush()
