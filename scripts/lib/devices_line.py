"""The line of figures of one scripts/bench-devices load, with what the store holds
after it (rows counted in its database before it is dropped) and what the servers'
logs say about cut connections.

    python devices_line.py LABEL NAME CHAT-BENCH-OUTPUT DATABASE-URL [SERVER-LOG...]
"""

import json
import sys
from pathlib import Path

from chat.store import dialect_for

label, name, out, url, *logs = sys.argv[1:]
found = [row for row in Path(out).read_text().splitlines() if row.startswith('{"chat_bench"')]
if not found:
    print(f"{label:7} {name:11} failed: no figures (see {out})", flush=True)
    sys.exit(0)
report = json.loads(found[-1])
ok = report["ok"]
(figures,) = report["results"].values()
if "checks" not in figures:  # the load could not be done
    print(f"{label:7} {name:11} failed: {figures.get('error')} (see {out})", flush=True)
    sys.exit(0)


def lat(summary: dict) -> str:
    return f"p50 {summary['p50_ms']:.0f} / p99 {summary['p99_ms']:.0f} ms"


def rows() -> str:
    """Rows of the tables that keep messages for recipients, as they stand now."""
    conn = dialect_for(url).connect()
    counts = []
    with conn.cursor() as cursor:
        cursor.execute("SHOW TABLES")
        tables = {row[0] for row in cursor.fetchall()}
        queries = [
            ("group messages", "SELECT COUNT(*) FROM messages WHERE group_id IS NOT NULL"),
            ("direct messages", "SELECT COUNT(*) FROM messages WHERE group_id IS NULL"),
            ("deliveries", "SELECT COUNT(*) FROM deliveries"),
            ("devices", "SELECT COUNT(*) FROM devices"),
            ("device_groups", "SELECT COUNT(*) FROM device_groups"),
        ]
        for what, query in queries:
            if query.split(" FROM ")[1].split()[0] in tables:
                cursor.execute(query)
                counts.append(f"{what} {cursor.fetchone()[0]:,}")
    conn.close()
    return "rows: " + ", ".join(counts)


def cuts() -> str:
    text = "".join(Path(log).read_text() for log in logs if Path(log).exists())
    acks = text.count("events not acknowledged")
    slow = text.count("client too slow")
    return f"server cut: {acks} for acks, {slow} too slow" if acks or slow else ""


parts = [f"{label:7} {name:11} ok={ok!s:5}"]
if name == "flood":
    sends = figures["group_sends"]
    quiet, flood = figures["pair_quiet"], figures["pair_flood"]
    ratio = figures["pair_p99_ratio"]
    parts += [
        f"group sends stored {sends['stored']}, refused {sends['refused']}",
        f"pair send->ok quiet {lat(quiet['send_ok'])}, flood {lat(flood['send_ok'])}"
        f" (p99 x{ratio})",
        f"send->receipt quiet {lat(quiet['send_receipt'])}, flood {lat(flood['send_receipt'])}",
        f"server CPU quiet {quiet.get('server_cpu_seconds')} s, flood"
        f" {flood.get('server_cpu_seconds')} s"
        f" ({sends.get('server_cpu_ms_per_stored')} ms per stored group message),"
        f" machine {flood.get('machine_cpu_busy', 0):.0%} busy",
        f"to last reader {lat(sends['to_last_reader'])} from the request,"
        f" {lat(sends['to_last_reader_after_ok'])} after the ok;"
        f" sender's ok {lat(sends['ok_latency'])}",
        rows(),
    ]
elif name.startswith("stall"):
    logins = "; ".join(
        f"login {n + 1}: announced {x['announced']} read {x['read']} acked {x['acked']}"
        f"{' (cut by the server)' if x['cut_by_server'] else ''}"
        for n, x in enumerate(figures["logins"])
    )
    parts += [
        f"{figures['sent']} ok'd, acks given {figures['acks_given']}",
        logins,
        f"lost {figures['lost']} never read + {figures['not_again']} read-unacked not again;"
        f" unacked on login 1 {figures['unacked_first']}, came again {figures['came_again']};"
        f" acked and again {figures['acked_again']}; repeats {figures['repeats']};"
        f" acks refused early {figures.get('acks_refused', 0)}",
        cuts(),
    ]
elif name.startswith("group"):
    parts += [
        f"{figures['member_count']} members, {figures['recipients']} online,"
        f" {figures['messages']} messages",
        f"to last member {lat(figures['last_member_latency'])}",
        f"deliveries/s {figures['deliveries_per_second']:,.0f}",
        f"server CPU {figures.get('server_cpu_us_per_delivered')} us per delivery,"
        f" machine {figures.get('machine_cpu_busy', 0):.0%} busy",
        rows(),
    ]
elif name == "multidevice":
    parts += [
        f"delivered/s {figures['delivered_per_second']:,.0f} ({figures['delivered']} of"
        f" {figures['expected']})",
        f"all {lat(figures['latency'])}, to recipients {lat(figures['to_recipients'])},"
        f" own copies {lat(figures['own_copies'])}",
        f"server CPU {figures.get('server_cpu_us_per_delivered')} us per delivery,"
        f" machine {figures.get('machine_cpu_busy', 0):.0%} busy",
    ]
if not ok:
    parts.append(f"problems: {figures.get('problems')} checks: {figures.get('checks')}")
print("\n    ".join(part for part in parts if part), flush=True)
