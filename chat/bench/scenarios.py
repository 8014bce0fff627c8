"""Each scenario from the parent's side: the barrier sequence, then merged figures.

A scenario returns a dict of figures (numbers, latency summaries as dicts, and
``ok``). ``ok`` is false on any lost, duplicated or reordered delivery, on a
wrong offline count, or on failed requests: a fast wrong answer is no result.

The one-to-one scenarios (``direct``, ``open``, ``burst``) also report
``route`` (the ``--route`` asked for) and, when ``--ports`` names more than one
port, ``routes``: for ``same`` and ``cross`` each, ``delivered``,
``delivered_per_second`` (from the common start to that route's last
delivery), ``latency`` (send->receipt) and ``ack_latency`` (send->``ok``).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import attrs

from .model import ROUTES, BenchConfig, PresencePlan
from .runner import Load
from .stats import LatencySummary, Verdict

Figures = dict[str, Any]

PING_SECONDS = 0.02
"""presence: the pause between two pings of the probe."""


def _floats(blobs: Iterable[bytes]) -> list[float]:
    values = array("d")
    for blob in blobs:
        values.frombytes(blob)
    return list(values)


def _latency(blobs: Iterable[bytes]) -> dict[str, Any]:
    return attrs.asdict(LatencySummary.of(_floats(blobs)))


def _rate(count: float, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def _verdict(results: list[dict[str, Any]]) -> Verdict:
    verdict = Verdict()
    for result in results:
        verdict.merge(result["verdict"])
    return verdict


def _finish(figures: Figures, verdict: Verdict, *extra_problems: str) -> Figures:
    problems = [problem for problem in extra_problems if problem]
    figures["checks"] = attrs.asdict(verdict)
    figures["problems"] = problems
    figures["ok"] = verdict.ok and not problems
    return figures


@attrs.frozen
class CpuTimes:
    """CPU seconds so far of some server processes: all their threads, and their main
    threads alone (a chat-server's trio thread is its main thread)."""

    total: float
    main_threads: float


def _stat_fields(path: Path) -> list[str] | None:
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(pids: tuple[int, ...]) -> CpuTimes | None:
    """User + system CPU time so far of these local processes and all their descendants
    (from /proc); None without pids or where /proc cannot be read."""
    if not pids:
        return None
    parents: dict[int, int] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(entry / "stat")) is not None:
            parents[int(entry.name)] = int(fields[1])
    if not any(pid in parents for pid in pids):
        return None
    chosen = set(pids)
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in chosen} - chosen
        chosen |= more
        grew = bool(more)
    total = main = 0.0
    for pid in chosen:
        process = _stat_fields(Path(f"/proc/{pid}/stat"))
        thread = _stat_fields(Path(f"/proc/{pid}/task/{pid}/stat"))
        if process is not None:
            total += (int(process[11]) + int(process[12])) / ticks
        if thread is not None:
            main += (int(thread[11]) + int(thread[12])) / ticks
    return CpuTimes(total, main)


def machine_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of every CPU of this machine so far, from /proc/stat."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def read_rss_kib(pid: int) -> int | None:
    """Resident memory of a local process, from /proc (None if it cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


# --- scenarios -----------------------------------------------------------------------


def auth(config: BenchConfig, progress: TextIO | None, server_pid: int | None) -> Figures:
    with Load("auth", config, range(config.users), progress) as load:
        load.gather()
        load.go_at()
        load.gather()
        load.go_at()
        results = load.results()
    figures: Figures = {"users": config.users}
    errors = 0
    for phase in ("register", "login"):
        parts = [result[phase] for result in results]
        done = sum(len(part["latencies"]) // 8 for part in parts)
        seconds = max(part["end"] for part in parts) - min(part["start"] for part in parts)
        errors += sum(part["errors"] for part in parts)
        figures[phase] = {
            "count": done,
            "per_second": _rate(done, seconds),
            "latency": _latency(part["latencies"] for part in parts),
        }
    return _finish(figures, Verdict(), f"{errors} requests failed" if errors else "")


def resume(config: BenchConfig, progress: TextIO | None, server_pid: int | None) -> Figures:
    """Token logins per second: ``--users`` users, each back ``--messages`` times on a
    new connection (``reconnect``), then as often on one kept connection (``relogin``)."""
    with Load("resume", config, range(config.users), progress) as load:
        load.gather()
        cpu = [cpu_seconds(config.cpu_pids)]
        load.go_at()
        load.gather()
        cpu.append(cpu_seconds(config.cpu_pids))
        load.go_at()
        results = load.results()
        cpu.append(cpu_seconds(config.cpu_pids))
    figures: Figures = {"users": config.users, "rounds": config.messages}
    errors = 0
    for number, phase in enumerate(("reconnect", "relogin")):
        parts = [result[phase] for result in results]
        done = sum(len(part["latencies"]) // 8 for part in parts)
        seconds = max(p["end"] for p in parts) - min(p["start"] for p in parts)
        errors += sum(part["errors"] for part in parts)
        figures[phase] = {
            "logins": done,
            "per_second": _rate(done, seconds),
            "latency": _latency(part["latencies"] for part in parts),
        }
        before, after = cpu[number], cpu[number + 1]
        if before is not None and after is not None and done:
            used = after.total - before.total
            figures[phase]["server_cpu_us_per_login"] = round(used / done * 1e6, 1)
    return _finish(figures, Verdict(), f"{errors} token logins failed" if errors else "")


def direct(config: BenchConfig, progress: TextIO | None, server_pid: int | None) -> Figures:
    return _measured_one_to_one("direct", config, progress)


def open_loop(config: BenchConfig, progress: TextIO | None, server_pid: int | None) -> Figures:
    return _measured_one_to_one("open", config, progress)


def burst(config: BenchConfig, progress: TextIO | None, server_pid: int | None) -> Figures:
    return _measured_one_to_one("burst", config, progress)


def _measured_one_to_one(scenario: str, config: BenchConfig, progress: TextIO | None) -> Figures:
    """Run a one-to-one load; the servers' CPU and the machine's are read around the
    loaded window only (after the logins, until the last result)."""
    with Load(scenario, config, range(config.users), progress) as load:
        load.gather()
        cpu_before, machine_before = cpu_seconds(config.cpu_pids), machine_ticks()
        start = load.go_at()
        results = load.results()
        cpu_after, machine_after = cpu_seconds(config.cpu_pids), machine_ticks()
    figures = _one_to_one(config, results, start, scenario)
    return _with_cpu(figures, (cpu_before, cpu_after), (machine_before, machine_after))


def _with_cpu(
    figures: Figures,
    servers: tuple[CpuTimes | None, CpuTimes | None],
    machine: tuple[tuple[int, int] | None, tuple[int, int] | None],
) -> Figures:
    """The servers' CPU time over the loaded window, per delivered message, and how
    busy the whole machine was meanwhile (servers, database, this load, all of it)."""
    start, end = machine
    if start is not None and end is not None:
        busy, total = end[0] - start[0], end[1] - start[1]
        figures["machine_cpu_busy"] = round(busy / total, 3) if total else None
    before, after = servers
    if before is not None and after is not None:
        used = after.total - before.total
        trio_used = after.main_threads - before.main_threads
        delivered = figures["delivered"]
        figures["server_cpu_seconds"] = round(used, 3)
        figures["server_cpu_us_per_delivered"] = (
            round(used / delivered * 1e6, 1) if delivered else None
        )
        figures["trio_thread_us_per_delivered"] = (
            round(trio_used / delivered * 1e6, 1) if delivered else None
        )
    return figures


def _routes(results: list[dict[str, Any]], start: float) -> Figures:
    """Per-route figures, merged over the load processes."""
    routes: Figures = {}
    for route in ROUTES:
        parts = [result["routes"][route] for result in results]
        delivered = sum(part["delivered"] for part in parts)
        last = max(part["last_receipt"] for part in parts)
        routes[route] = {
            "delivered": delivered,
            "delivered_per_second": _rate(delivered, last - start) if delivered else 0.0,
            "latency": _latency(part["latencies"] for part in parts),
            "ack_latency": _latency(part["acks"] for part in parts),
        }
    return routes


def _one_to_one(
    config: BenchConfig, results: list[dict[str, Any]], start: float, scenario: str
) -> Figures:
    sent = sum(result["sent"] for result in results)
    delivered = sum(result["delivered"] for result in results)
    errors = sum(result["errors"] for result in results)
    last = max(result["last_receipt"] for result in results)
    sends_done = max(result["sends_done"] for result in results)
    figures: Figures = {
        "users": config.users,
        "route": config.route,
        "sent": sent,
        "delivered": delivered,
        "send_errors": errors,
        "stale_skipped": sum(result["stale"] for result in results),
        "sends_per_second": _rate(sent, sends_done - start),
        "delivered_per_second": _rate(delivered, last - start),
        "latency": _latency(result["latencies"] for result in results),
        "ack_latency": _latency(result["acks"] for result in results),
    }
    if config.multi_port:
        figures["routes"] = _routes(results, start)
    problems = [f"{errors} sends failed" if errors else ""]
    if scenario == "open":
        offered = sum(result["offered"] for result in results)
        lag = max(result["generator_lag"] for result in results)
        figures.update(
            offered_rate=config.rate,
            offered=offered,
            duration=config.duration,
            generator_lag_ms=round(lag * 1000, 1),
        )
    if scenario == "burst":
        written = max(result["written"] for result in results)
        figures.update(messages=config.messages, written_seconds=round(written - start, 3))
    if scenario in ("open", "burst"):
        unanswered = sum(result["unanswered"] for result in results)
        figures["unanswered"] = unanswered
        problems.append(f"{unanswered} sends never answered" if unanswered else "")
    wrong = sum(result["wrong_kind"] for result in results)
    problems.append(f"{wrong} unexpected events" if wrong else "")
    return _finish(figures, _verdict(results), *problems)


def group(config: BenchConfig, progress: TextIO | None, server_pid: int | None) -> Figures:
    online = min(config.group_size, config.online + 1) if config.online else config.group_size
    with Load("group", config, range(online), progress) as load:
        group_ids = load.gather()
        load.go(max(group_ids))
        load.gather()
        cpu_before, machine_before = cpu_seconds(config.cpu_pids), machine_ticks()
        start = load.go_at()
        acked_lists = load.gather()
        acked = sorted({seq for part in acked_lists for seq in part})
        load.go(acked)
        results = load.results()
        cpu_after, machine_after = cpu_seconds(config.cpu_pids), machine_ticks()
    members = sum(result["members"] for result in results)
    counts: dict[int, int] = defaultdict(int)
    last_member: dict[int, float] = defaultdict(float)
    for result in results:
        for seq, count in result["counts"].items():
            counts[seq] += count
        for seq, latency in result["last_member"].items():
            last_member[seq] = max(last_member[seq], latency)
    verdict = _verdict(results)
    acked_set = set(acked)
    for seq in acked:
        missing = members - counts.get(seq, 0)
        if missing > 0:
            verdict.lost += missing
            verdict.note(f"group message {seq}: {missing} of {members} members never got it")
    for seq in counts:
        if seq not in acked_set:
            verdict.unexpected += counts[seq]
            verdict.note(f"group message {seq} was delivered but never acknowledged")
    delivered = sum(result["delivered"] for result in results)
    last = max(result["last_receipt"] for result in results)
    complete = [latency for seq, latency in last_member.items() if counts.get(seq) == members]
    figures: Figures = {
        "group_size": config.group_size,
        "member_count": max(result["member_count"] for result in results),
        "recipients": members,
        "messages": len(acked),
        "group_rate": config.group_rate,
        "delivered": delivered,
        "deliveries_per_second": _rate(delivered, last - start),
        "last_member_latency": attrs.asdict(LatencySummary.of(complete)),
        "any_member_latency": _latency(result["latencies"] for result in results),
        "ack_latency": _latency(result["acks"] for result in results),
        "stale_skipped": sum(result["stale"] for result in results),
    }
    _with_cpu(figures, (cpu_before, cpu_after), (machine_before, machine_after))
    failed = config.messages - len(acked)
    return _finish(figures, verdict, f"{failed} group sends failed" if failed else "")


def offline(config: BenchConfig, progress: TextIO | None, server_pid: int | None) -> Figures:
    with Load("offline", config, range(config.users), progress) as load:
        load.gather()
        start = load.go_at()
        results = load.results()
    drains = [drain for result in results for drain in result["drains"]]
    expected = sum(result["expected"] for result in results)
    delivered = sum(result["delivered"] for result in results)
    announced = sum(drain["announced"] for drain in drains)
    wrong_counts = sum(1 for drain in drains if drain["announced"] != config.messages)
    first_reply = min((drain["replied"] for drain in drains), default=start)
    last = max(result["last_receipt"] for result in results)
    figures: Figures = {
        "recipients": len(drains),
        "stored": expected,
        "announced": announced,
        "delivered": delivered,
        "drained_per_second": _rate(delivered, last - first_reply),
        "seconds": round(last - first_reply, 3),
    }
    return _finish(
        figures,
        _verdict(results),
        f"{wrong_counts} logins announced a wrong offline count" if wrong_counts else "",
    )


def capacity(config: BenchConfig, progress: TextIO | None, server_pid: int | None) -> Figures:
    with Load("capacity", config, range(config.users), progress) as load:
        load.gather()
        base = read_rss_kib(server_pid) if server_pid else None
        held_info = load.step()
        time.sleep(1.0)  # let the server settle (its writers flush login replies)
        held = read_rss_kib(server_pid) if server_pid else None
        load.step()
        load.go()
        results = load.results()
    count = sum(result["held"] for result in results)
    new = count - sum(result["warm"] for result in results)
    login_start = min(info["login_start"] for info in held_info)
    held_at = max(info["held_at"] for info in held_info)
    figures: Figures = {
        "connections": count,
        "login_per_second": _rate(new, held_at - login_start),
        "login_latency": _latency(result["logins"] for result in results),
        "ping_latency": _latency(result["pings"] for result in results),
        "server_pid": server_pid,
        "rss_base_kib": base,
        "rss_held_kib": held,
        "kib_per_connection": (
            round((held - base) / new, 2) if base is not None and held is not None and new else None
        ),
    }
    failed = sum(result["ping_failed"] for result in results)
    dropped = sum(result["dropped"] for result in results)
    return _finish(
        figures,
        Verdict(),
        f"{failed} pings failed" if failed else "",
        f"{dropped} connections dropped" if dropped else "",
    )


class PingProbe:
    """Pings a server from a thread of the parent, which the load does not keep busy:
    does the server answer while it tells thousands of friends? (A load process's own
    connection would also time that process, busy reading the events.)"""

    def __init__(self, host: str, port: int) -> None:
        self._address = (host, port)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.latencies = array("d")

    def start(self) -> None:
        self._stop.clear()
        self.latencies = array("d")
        self._thread = threading.Thread(target=self._run, name="chat-bench-ping", daemon=True)
        self._thread.start()

    def stop(self) -> bytes:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return self.latencies.tobytes()

    def _run(self) -> None:
        try:
            with socket.create_connection(self._address, timeout=10) as sock:
                reader = sock.makefile("rb")
                while not self._stop.is_set():
                    sent = time.monotonic()
                    sock.sendall(b'{"type":"ping"}\n')
                    reader.readline()
                    self.latencies.append(time.monotonic() - sent)
                    self._stop.wait(PING_SECONDS)
        except OSError:
            return  # the figures show how many pings there were


def presence(config: BenchConfig, progress: TextIO | None, server_pid: int | None) -> Figures:
    """Changers log out, then in, ``rounds`` times; for each phase, how long until every
    watcher friend heard every change, each event after its change's reply, and pings
    of the (first) server meanwhile."""
    plan = PresencePlan.of(config)
    probe = PingProbe(config.host, config.ports[0])
    pings: list[bytes] = []
    with Load("presence", config, range(config.users), progress) as load:
        ids: dict[int, int] = {}
        for part in load.gather():
            ids.update(part)
        load.go(ids)
        load.gather()  # friendships made
        for _ in range(2 * config.rounds):
            load.go_at()
            probe.start()
            load.gather()
            pings.append(probe.stop())
        load.go()
        results = load.results()
    phases: dict[str, Figures] = {}
    missing = 0
    for kind, online in (("logout", False), ("login", True)):
        all_told: list[float] = []
        after_reply: list[float] = []
        phase_pings: list[bytes] = []
        expected = told = 0
        for number in range(config.rounds):
            index = 2 * number + (1 if online else 0)
            parts = [result["phases"][index] for result in results]
            start = parts[0]["start"]
            answered: dict[int, float] = {}
            for part in parts:
                answered.update(part["answered"])
            receipts = [receipt for part in parts for receipt in part["receipts"]]
            expected += sum(part["expected"] for part in parts)
            told += len(receipts)
            if receipts:
                all_told.append(max(at for _, at in receipts) - start)
            after_reply += [max(0.0, at - answered[k]) for k, at in receipts if k in answered]
            phase_pings.append(pings[index])
        missing += expected - told
        phases[kind] = {
            "events_expected": expected,
            "events_told": told,
            "all_told_seconds": attrs.asdict(LatencySummary.of(all_told)),
            "after_reply": attrs.asdict(LatencySummary.of(after_reply)),
            "ping_meanwhile": _latency(phase_pings),
        }
    figures: Figures = {
        "users": config.users,
        "changers": len(plan.changers),
        "friends": len(plan.friends_of[plan.changers[0]]),
        "rounds": config.rounds,
        **phases,
        "repeats": sum(result["repeats"] for result in results),
        "strangers": sum(result["strangers"] for result in results),
    }
    verdict = Verdict()
    verdict.lost = missing
    strangers = figures["strangers"]
    return _finish(
        figures,
        verdict,
        f"{missing} friends were never told a change" if missing else "",
        f"{strangers} presence events about someone not a friend" if strangers else "",
    )


Scenario = Callable[[BenchConfig, "TextIO | None", "int | None"], Figures]
SCENARIOS: dict[str, Scenario] = {
    "auth": auth,
    "resume": resume,
    "direct": direct,
    "open": open_loop,
    "burst": burst,
    "group": group,
    "offline": offline,
    "capacity": capacity,
    "presence": presence,
}
ALL = ("auth", "direct", "open", "group", "offline")
"""What ``--scenario all`` runs; ask for ``burst`` (a second one-to-one load as big as
``direct``), ``capacity`` (thousands of logins), ``resume`` (token logins) and
``presence`` (friends told of logins and logouts) by name."""
ONE_TO_ONE = ("direct", "open", "burst")
"""The scenarios that follow ``--route`` and report per-route figures."""
