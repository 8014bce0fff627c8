"""One line of figures from a chat-bench burst (for scripts/bench-scale-out), and the
top functions by own time from py-spy's raw output, if the run was profiled."""

import collections
import glob
import json
import sys

label, name, out, work = sys.argv[1:]
with open(out) as lines:
    line = [row for row in lines if row.startswith('{"chat_bench"')][-1]
data = json.loads(line)
burst = data["results"]["burst"]
lat = burst["latency"]
routes = burst.get("routes") or {}
extra = " ".join(
    f"{route}: {part['delivered_per_second']:,.0f}/s p99 {part['latency']['p99_ms']:.0f} ms"
    for route, part in routes.items()
    if part.get("delivered")
)
cpu = burst.get("server_cpu_us_per_delivered") or 0
print(
    f"{label:8} {name:8} ok={data['ok']!s:5} delivered/s={burst['delivered_per_second']:>8,.0f}"
    f"  p50={lat['p50_ms']:>6.0f} ms  p99={lat['p99_ms']:>6.0f} ms"
    f"  server CPU/msg={cpu:>5.0f} us  {extra}",
    flush=True,
)
own: collections.Counter[str] = collections.Counter()
total = 0
for path in glob.glob(f"{work}/{name}-*.txt"):
    with open(path) as rows:
        for row in rows:
            stack, _, count = row.rstrip().rpartition(" ")
            if count.isdigit():
                total += int(count)
                own[stack.split(";")[-1]] += int(count)
for frame, count in own.most_common(15):
    print(f"    {100 * count / max(total, 1):5.1f}%  {frame[:110]}")
