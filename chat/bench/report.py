"""The human summary and the one JSON line of figures."""

from __future__ import annotations

import json
from typing import Any

Figures = dict[str, Any]


def _lat(summary: dict[str, Any]) -> str:
    return (
        f"p50 {summary['p50_ms']:.1f} / p95 {summary['p95_ms']:.1f} / "
        f"p99 {summary['p99_ms']:.1f} / max {summary['max_ms']:.1f} ms (n={summary['count']})"
    )


def _p50_p99(summary: dict[str, Any]) -> str:
    return f"p50 {summary['p50_ms']:.1f} / p99 {summary['p99_ms']:.1f} ms"


def _route_lines(routes: dict[str, Any]) -> list[str]:
    """One line per route: a cross-node message next to a same-node one."""
    lines = []
    for route, part in routes.items():
        if not part["delivered"]:
            lines.append(f"  {route + ' port':<10}{'-':>10}     none delivered")
            continue
        lines.append(
            f"  {route + ' port':<10}{part['delivered_per_second']:>8,.1f}/s   delivered"
            f" {part['delivered']}; send->receipt {_p50_p99(part['latency'])};"
            f" send->ok {_p50_p99(part['ack_latency'])}"
        )
    return lines


def describe(name: str, figures: Figures) -> list[str]:
    """A few lines a person can read, for one scenario."""
    lines = [f"== {name}"]
    if name == "auth":
        for phase in ("register", "login"):
            part = figures[phase]
            lines.append(
                f"  {phase:<8} {part['per_second']:>9,.1f}/s   {part['count']} accounts,"
                f" latency {_lat(part['latency'])}"
            )
    elif name == "resume":
        lines.append(
            f"  {figures['users']} users, each logging in with its token {figures['rounds']}"
            " times per phase (login + logout)"
        )
        for phase, what in (("reconnect", "new connection each"), ("relogin", "one connection")):
            part = figures[phase]
            cpu = part.get("server_cpu_us_per_login")
            lines.append(
                f"  {phase:<9} {part['per_second']:>9,.1f}/s   ({part['logins']}, {what})"
                f" latency {_lat(part['latency'])}"
                + (f"; server CPU {cpu:,.0f} us per round" if cpu is not None else "")
            )
    elif name in ("direct", "open", "burst"):
        if name == "open":
            lines.append(
                f"  offered  {figures['offered_rate']:,.0f}/s for {figures['duration']} s"
                f" ({figures['offered']} sends; generator lag max {figures['generator_lag_ms']} ms)"
            )
        if name == "burst":
            lines.append(
                f"  burst    {figures['users']} users x {figures['messages']} messages at once,"
                f" pipelined (all written in {figures['written_seconds']} s)"
            )
        route = "" if figures["route"] == "any" else f", route {figures['route']}"
        lines.append(
            f"  sent     {figures['sends_per_second']:>9,.1f}/s   ({figures['sent']} ok,"
            f" {figures['users']} users{route})"
        )
        lines.append(
            f"  delivered {figures['delivered_per_second']:>8,.1f}/s   ({figures['delivered']})"
        )
        lines.append(f"  send->receipt  {_lat(figures['latency'])}")
        lines.append(f"  send->ok       {_lat(figures['ack_latency'])}")
        if figures.get("server_cpu_us_per_delivered") is not None:
            lines.append(
                f"  server CPU     {figures['server_cpu_us_per_delivered']:,.0f} us per delivered"
                f" message ({figures['server_cpu_seconds']:.2f} s in all), of which the trio"
                f" threads {figures['trio_thread_us_per_delivered']:,.0f} us"
            )
        if figures.get("machine_cpu_busy") is not None:
            lines.append(f"  machine CPU    {figures['machine_cpu_busy']:.0%} busy (all cores)")
        if "routes" in figures:
            lines.extend(_route_lines(figures["routes"]))
    elif name == "group":
        lines.append(
            f"  group of {figures['member_count']} members ({figures['recipients']} recipients"
            " online),"
            f" {figures['messages']} messages"
            + (f" at {figures['group_rate']:g}/s" if figures["group_rate"] else " (closed loop)")
        )
        lines.append(
            f"  delivered {figures['deliveries_per_second']:>8,.1f}/s   ({figures['delivered']})"
        )
        lines.append(f"  to last member {_lat(figures['last_member_latency'])}")
        lines.append(f"  to any member  {_lat(figures['any_member_latency'])}")
        if figures.get("server_cpu_us_per_delivered") is not None:
            lines.append(
                f"  server CPU     {figures['server_cpu_us_per_delivered']:,.0f} us per delivery"
                f" ({figures['server_cpu_seconds']:.2f} s in all)"
            )
    elif name == "offline":
        lines.append(
            f"  drained  {figures['drained_per_second']:>9,.1f}/s   ({figures['delivered']} of"
            f" {figures['stored']} kept for {figures['recipients']} users,"
            f" {figures['seconds']} s)"
        )
    elif name == "capacity":
        lines.append(
            f"  held     {figures['connections']:,} logged-in idle connections"
            f" (logins {figures['login_per_second']:,.1f}/s)"
        )
        if figures["kib_per_connection"] is not None:
            lines.append(
                f"  server memory {figures['rss_base_kib'] / 1024:,.1f} ->"
                f" {figures['rss_held_kib'] / 1024:,.1f} MiB:"
                f" {figures['kib_per_connection']:.2f} KiB per connection"
            )
        else:
            lines.append("  server memory: unknown (give --server-pid of a local server)")
        lines.append(f"  ping on all   {_lat(figures['ping_latency'])}")
    elif name == "presence":
        lines.append(
            f"  {figures['changers']} users with {figures['friends']} friends each log out and"
            f" in, {figures['rounds']} times, all at once ({figures['users']} users in all)"
        )
        for kind in ("logout", "login"):
            part = figures[kind]
            told = part["all_told_seconds"]
            lines.append(
                f"  {kind:<7} every friend told after p50 {told['p50_ms'] / 1000:.2f} /"
                f" max {told['max_ms'] / 1000:.2f} s ({part['events_told']} of"
                f" {part['events_expected']} events)"
            )
            lines.append(f"          each event after its reply {_lat(part['after_reply'])}")
            lines.append(f"          ping meanwhile {_lat(part['ping_meanwhile'])}")
    elif name == "flood":
        lines.extend(_flood_lines(figures))
    elif name == "stall":
        lines.extend(_stall_lines(figures))
    elif name == "multidevice":
        lines.append(
            f"  {figures['users']} users x {figures['devices']} devices; sent"
            f" {figures['sends_per_second']:,.1f}/s ({figures['sent']} ok)"
        )
        lines.append(
            f"  delivered {figures['delivered_per_second']:>8,.1f}/s   ({figures['delivered']}"
            f" of {figures['expected']} expected, own copies included)"
        )
        lines.append(f"  to recipients  {_lat(figures['to_recipients'])}")
        lines.append(f"  own copies     {_lat(figures['own_copies'])}")
        lines.append(f"  send->ok       {_lat(figures['ack_latency'])}")
        if figures.get("server_cpu_us_per_delivered") is not None:
            lines.append(
                f"  server CPU     {figures['server_cpu_us_per_delivered']:,.0f} us per delivery"
                f" ({figures['server_cpu_seconds']:.2f} s in all)"
            )
    checks = figures["checks"]
    if figures["ok"]:
        checked = name not in ("auth", "capacity", "resume", "presence")
        note = " (every delivery exactly once, in order)" if checked else ""
        if name == "presence":
            note = " (every friend told every change)"
        lines.append("  check: ok" + note)
    else:
        lines.append(
            f"  check: FAILED: {checks['lost']} lost, {checks['duplicates']} duplicated,"
            f" {checks['out_of_order']} out of order, {checks['unexpected']} unexpected"
        )
        lines.extend(f"    {problem}" for problem in figures["problems"])
        lines.extend(f"    e.g. {example}" for example in checks["examples"])
    return lines


def _cpu(part: Figures) -> str:
    cpu = part.get("server_cpu_seconds")
    busy = part.get("machine_cpu_busy")
    return (f"; server CPU {cpu:.2f} s" if cpu is not None else "") + (
        f", machine {busy:.0%} busy" if busy is not None else ""
    )


def _flood_lines(figures: Figures) -> list[str]:
    sends = figures["group_sends"]
    refused = ", ".join(f"{count} {code}" for code, count in sends["refused"].items()) or "none"
    retry = sends["retry_after_ms"]
    lines = [
        f"  group of {figures['member_count']} members ({figures['readers']} reading),"
        f" {figures['inflight']} group sends in flight for {figures['duration']:g} s",
        f"  group sends    {sends['stored']} stored, refused: {refused}"
        + (f" (retry_after_ms {retry['min']}-{retry['max']})" if retry else ""),
        f"  stored ok      {_lat(sends['ok_latency'])}",
        f"  to last reader {_lat(sends['to_last_reader'])}",
        f"  after the ok   {_lat(sends['to_last_reader_after_ok'])}",
    ]
    for phase in ("quiet", "flood"):
        part = figures[f"pair_{phase}"]
        lines.append(
            f"  pair, {phase:<6} send->ok {_p50_p99(part['send_ok'])}, send->receipt"
            f" {_p50_p99(part['send_receipt'])} ({part['sent']} ok){_cpu(part)}"
        )
    if figures["pair_p99_ratio"] is not None:
        lines.append(f"  pair send->ok p99 with the flood: {figures['pair_p99_ratio']:.2f} x")
    return lines


def _stall_lines(figures: Figures) -> list[str]:
    acks = "acks" if figures["acks_given"] else "no seq written: version 1, no acks"
    lines = [f"  {figures['sent']} messages ok'd from {figures['senders']} senders ({acks})"]
    for number, login in enumerate(figures["logins"]):
        what = "stopped reading" if number == 0 else "read and acknowledged"
        lines.append(
            f"  login {number + 1}  announced {login['announced']} kept; read {login['read']}"
            f" ({login['offline']} offline), acknowledged {login['acked']}, {what};"
            f" cut by the server: {login['cut_by_server']}"
        )
    lines.append(
        f"  lost {figures['lost']} (never read) + {figures['not_again']} (read unacknowledged,"
        f" never again); unacknowledged on login 1: {figures['unacked_first']}; came again"
        f" after a login without their ack: {figures['came_again']}; acknowledged and came"
        f" again: {figures['acked_again']}; repeats within a login: {figures['repeats']}"
    )
    return lines


def json_line(params: dict[str, Any], results: dict[str, Figures], ok: bool) -> str:
    return json.dumps(
        {"chat_bench": 1, "ok": ok, "params": params, "results": results},
        separators=(",", ":"),
        sort_keys=False,
    )
