"""One line of figures from a chat-bench load (burst unless named; for scripts/bench-scale-out
and scripts/bench-hot-path) and, if the
run was profiled, where the servers' trio threads spent their samples.

py-spy's raw output has one line per distinct stack with its sample count. The trio
thread's stacks pass through ``unrolled_run``; worker threads' (database, Redis,
password hashing) do not. Each trio-thread sample is put in the first bucket whose
pattern appears in its stack.
"""

import collections
import glob
import json
import sys

BUCKETS = [
    ("TLS (trio's SSLStream, ssl)", ("_ssl.py", "/ssl.py")),
    ("waiting in epoll", ("EpollIOManager.get_events",)),
    ("socket send/recv", ("_nonblocking_helper", "SocketStream.send_all", "receive_some")),
    (
        "thread hand-offs",
        ("start_thread_soon", "to_thread_run_sync", "run_sync_soon", "WakeupSocketpair"),
    ),
    ("JSON and cattrs", ("json/", "cattrs", "codec.py")),
    ("Redis relay/broker", ("relay.py", "broker/redis.py")),
]
"""Matched anywhere in a stack, in this order; then "trio scheduling" when the innermost
frame is trio's own run loop, else "chat logic" (sessions, handlers, store calls)."""

label, name, out, work = sys.argv[1:5]
scenario = sys.argv[5] if len(sys.argv) > 5 else "burst"
with open(out) as lines:
    found = [row for row in lines if row.startswith('{"chat_bench"')]
burst = json.loads(found[-1])["results"].get(scenario, {}) if found else {}
if scenario == "resume" and "reconnect" in burst:  # token logins: one line per phase
    for phase in ("reconnect", "relogin"):
        part = burst[phase]
        lat = part["latency"]
        print(
            f"{label:8} {name:8} {phase:9} ok={burst.get('ok')!s:5}"
            f" logins/s={part['per_second']:>7,.0f}  p50={lat['p50_ms']:>5.0f} ms"
            f"  p99={lat['p99_ms']:>5.0f} ms"
            f"  server CPU/round={part.get('server_cpu_us_per_login') or 0:>6,.0f} us",
            flush=True,
        )
    sys.exit(0)
if "latency" not in burst:  # the load failed (its output says why): no figures
    print(f"{label:8} {name:8} failed: no figures (see {out})", flush=True)
    sys.exit(0)
data = json.loads(found[-1])
lat = burst["latency"]
routes = burst.get("routes") or {}
extra = " ".join(
    f"{route}: {part['delivered_per_second']:,.0f}/s p99 {part['latency']['p99_ms']:.0f} ms"
    for route, part in routes.items()
    if part.get("delivered")
)
cpu = burst.get("server_cpu_us_per_delivered") or 0
trio_cpu = burst.get("trio_thread_us_per_delivered") or 0
busy = burst.get("machine_cpu_busy") or 0
print(
    f"{label:8} {name:8} ok={data['ok']!s:5} delivered/s={burst['delivered_per_second']:>8,.0f}"
    f"  p50={lat['p50_ms']:>6.0f} ms  p99={lat['p99_ms']:>6.0f} ms"
    f"  server CPU/msg={cpu:>5.0f} us (trio {trio_cpu:>4.0f})  machine {busy:4.0%} busy  {extra}",
    flush=True,
)
buckets: collections.Counter[str] = collections.Counter()
own: collections.Counter[str] = collections.Counter()
trio_total = 0
for path in glob.glob(f"{work}/{name}-*.txt"):
    with open(path) as rows:
        for row in rows:
            stack, _, count = row.rstrip().rpartition(" ")
            if not count.isdigit() or "unrolled_run" not in stack:
                continue
            samples = int(count)
            trio_total += samples
            own[stack.split(";")[-1]] += samples
            leaf = stack.split(";")[-1]
            bucket = next(
                (title for title, marks in BUCKETS if any(mark in stack for mark in marks)),
                "trio scheduling" if "trio/" in leaf or "outcome" in leaf else "chat logic",
            )
            buckets[bucket] += samples
if trio_total:
    shares = ", ".join(
        f"{title} {100 * count / trio_total:.0f}%" for title, count in buckets.most_common()
    )
    print(f"    trio threads ({trio_total} samples): {shares}")
    for frame, count in own.most_common(8):
        print(f"      {100 * count / trio_total:5.1f}%  {frame[:100]}")
