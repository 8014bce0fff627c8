"""``chat-server serve --workers N``: N node processes on the same ports, supervised.

A node is one trio thread, so it uses one core. Workers use the others: each is
a full cluster node of its own (``NODE-w1``, ``NODE-w2``, ...; they reach each
other through Redis like separate machines would), listening on the same ports
with ``SO_REUSEPORT``, so the kernel spreads new connections over them.

The parent only supervises:

- it starts every worker and waits until each says it is ready (a byte on a
  pipe, written once the worker listens); a worker that exits before it was
  ever ready means the settings are wrong (a port in use, a database that does
  not answer): the parent stops the others and exits 1;
- a worker that dies later is started again after a short, growing delay; its
  users are free to log in again once their leases expire;
- SIGINT or SIGTERM to the parent is passed to every worker (each stops
  gracefully, releasing its users); once they have all exited the parent exits
  0. A second signal kills them at once.
- SIGHUP to the parent (reload the TLS certificate) is passed to every worker
  that is ready; to one still starting once it is ready (before, it would die
  of it).
- every worker holds the read end of a *lifeline* pipe whose only write end is
  the parent's: if the parent dies (even by ``kill -9``), the workers read EOF
  and stop gracefully, so nothing is left running. (``PR_SET_PDEATHSIG`` would
  not do: it fires when the *thread* that started the child ends, and trio
  starts processes from worker threads that end when idle.)
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence

import attrs
import trio

log = logging.getLogger("chat.server.workers")

READY_FD_ENV = "CHAT_READY_FD"
"""The pipe a worker writes to once it listens (set by the parent for each worker)."""
LIFELINE_FD_ENV = "CHAT_LIFELINE_FD"
"""A pipe a worker reads: EOF means the supervising parent is gone."""
RESTART_DELAY_FIRST = 0.5
RESTART_DELAY_MAX = 10.0
"""A worker that keeps dying is restarted after a delay doubling up to this."""
HEALTHY_SECONDS = 30.0
"""A worker that ran this long before dying is restarted after the first delay again."""
STOP_SECONDS = 20.0
"""How long the workers get to stop gracefully before they are killed."""
READY_SECONDS = 120.0
"""How long a worker may take to become ready (migrations, Redis) before it counts as failed."""


def cpu_count() -> int:
    """The CPUs this process may run on (``--workers auto``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def reserve_port(host: str, port: int) -> tuple[int, socket.socket | None]:
    """A concrete port for ``port`` 0: bound with ``SO_REUSEPORT`` but not listening
    (it receives no connections), held by the parent so nobody else takes it."""
    if port != 0:
        return port, None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return int(sock.getsockname()[1]), sock


async def watch_parent(stop: Callable[[], None]) -> None:
    """In a worker: call ``stop`` when the supervising parent is gone (its end of the
    lifeline pipe closed); returns at once in a process that is not a worker."""
    fd = os.environ.pop(LIFELINE_FD_ENV, None)
    if fd is None:
        return
    async with trio.lowlevel.FdStream(int(fd)) as lifeline:
        while await lifeline.receive_some(16):
            pass
    log.error("the --workers parent is gone: stopping")
    stop()


def announce_ready() -> None:
    """In a worker: tell the parent this node listens now."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    try:
        os.write(int(fd), b"ready\n")
        os.close(int(fd))
    except OSError:
        pass


@attrs.define(eq=False)
class _Worker:
    number: int
    node_id: str
    process: trio.Process | None = None
    ready: trio.Event = attrs.field(factory=trio.Event)
    """Set once this worker has been ready at least once."""
    listening: bool = False
    """Its current process said it is ready (it handles SIGHUP from then on)."""
    hangup_pending: bool = False
    """A SIGHUP came while its current process was starting: passed on once it is ready."""


class Supervisor:
    """Runs ``count`` workers; ``command(worker_node_id)`` is a worker's argv."""

    def __init__(self, count: int, node_id: str, command: Callable[[str], Sequence[str]]) -> None:
        self.node_id = node_id
        self.command = command
        self.workers = [_Worker(n, f"{node_id}-w{n}") for n in range(1, count + 1)]
        self.failure: str | None = None
        self._stopping = trio.Event()
        self._lifeline, self._lifeline_keep = os.pipe()
        """Workers read the first; the parent alone holds the second until it exits."""

    async def run(self) -> int:
        """Until a signal (or a worker that cannot start); the exit status."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            try:
                async with trio.open_nursery() as nursery:
                    for worker in self.workers:
                        nursery.start_soon(self._keep_running, worker, nursery.cancel_scope)
                    nursery.start_soon(self._report_ready)
                    nursery.start_soon(self._pass_on_sighup)
                    async for signum in signals:
                        log.info(
                            "%s: stopping %d workers gracefully (again to stop at once)",
                            signal.Signals(signum).name,
                            len(self.workers),
                        )
                        break
                    await self._stop(signals)
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    for worker in self.workers:
                        if worker.process is not None and worker.process.returncode is None:
                            worker.process.kill()
                            await worker.process.wait()
                os.close(self._lifeline)
                os.close(self._lifeline_keep)
        if self.failure is not None:
            log.error("%s; stopped every worker", self.failure)
            return 1
        log.info("all %d workers stopped", len(self.workers))
        return 0

    async def _stop(self, signals: AsyncIterator[int]) -> None:
        """SIGTERM every worker and wait for them; a second signal or the deadline kills."""
        self._stopping.set()
        self._signal_all(signal.SIGTERM)
        async with trio.open_nursery() as nursery:

            async def kill_on_second_signal() -> None:
                async for _ in signals:
                    self._signal_all(signal.SIGKILL)

            nursery.start_soon(kill_on_second_signal)
            with trio.move_on_after(STOP_SECONDS) as waiting:
                for worker in self.workers:
                    if worker.process is not None:
                        await worker.process.wait()
            if waiting.cancelled_caught:
                log.error("workers did not stop within %.0fs: killing them", STOP_SECONDS)
                self._signal_all(signal.SIGKILL)
            nursery.cancel_scope.cancel()

    async def _pass_on_sighup(self) -> None:
        """SIGHUP (reload the TLS certificate) goes to every worker; to one still
        starting only once it is ready: until it listens for SIGHUP, the signal's
        default action would end it (a handler set in the parent does not survive
        exec), and a worker that has not read its certificate yet reads the new one."""
        with trio.open_signal_receiver(signal.SIGHUP) as hangups:
            async for _ in hangups:
                log.info("SIGHUP: passing it on to %d workers", len(self.workers))
                for worker in self.workers:
                    if worker.process is None or worker.process.returncode is not None:
                        continue
                    if worker.listening:
                        worker.process.send_signal(signal.SIGHUP)
                    else:
                        worker.hangup_pending = True

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signum)

    async def _report_ready(self) -> None:
        for worker in self.workers:
            await worker.ready.wait()
        log.info("node %s: all %d workers ready", self.node_id, len(self.workers))

    async def _keep_running(self, worker: _Worker, everything: trio.CancelScope) -> None:
        delay = RESTART_DELAY_FIRST
        while not self._stopping.is_set():
            worker.listening = worker.hangup_pending = False
            read_end, write_end = os.pipe()
            try:
                process = await trio.lowlevel.open_process(
                    list(self.command(worker.node_id)),
                    stdin=subprocess.DEVNULL,
                    pass_fds=(write_end, self._lifeline),
                    env=os.environ
                    | {READY_FD_ENV: str(write_end), LIFELINE_FD_ENV: str(self._lifeline)},
                    # Its own session: a Ctrl-C at the terminal reaches the parent only,
                    # which then stops each worker once (a second signal would mean "now").
                    start_new_session=True,
                )
            except BaseException:
                os.close(read_end)
                raise
            finally:
                os.close(write_end)
            worker.process = process
            if self._stopping.is_set():  # the signal came while it was starting
                process.send_signal(signal.SIGTERM)
            started = trio.current_time()
            if await _wait_ready(read_end, process):
                worker.ready.set()
                worker.listening = True
                if worker.hangup_pending and process.returncode is None:
                    worker.hangup_pending = False
                    process.send_signal(signal.SIGHUP)
            status = await process.wait()
            if self._stopping.is_set():
                return
            if not worker.ready.is_set():
                # Its first start failed: the settings are wrong for every worker.
                self.failure = f"worker {worker.node_id} exited with status {status} at start"
                everything.cancel()
                return
            if trio.current_time() - started > HEALTHY_SECONDS:
                delay = RESTART_DELAY_FIRST
            log.error(
                "worker %s (pid %d) exited with status %s: starting it again in %.1fs",
                worker.node_id,
                process.pid,
                status,
                delay,
            )
            with trio.move_on_after(delay):
                await self._stopping.wait()
            delay = min(delay * 2, RESTART_DELAY_MAX)


async def _wait_ready(read_end: int, process: trio.Process) -> bool:
    """True once the worker wrote to its pipe; False if it exited (or closed it) first.
    A worker not ready within ``READY_SECONDS`` is killed: it counts as failed."""
    async with trio.lowlevel.FdStream(read_end) as stream:
        with trio.move_on_after(READY_SECONDS):
            return bool(await stream.receive_some(16))
    log.error("worker pid %d is not ready after %.0fs: killing it", process.pid, READY_SECONDS)
    process.kill()
    return False
