"""``chat-cli``: the terminal client.

In a terminal it is interactive (line editing, history, Tab completion, events
printed above the prompt). With stdin or stdout not a terminal it runs the
commands from stdin in order, prints events as lines, and its exit status says
whether every command succeeded: 0 yes, 1 some command failed, 2 bad
arguments, 3 no connection (or it was lost).

trio owns the program; prompt_toolkit runs in a worker thread that a trio task
owns (see ``chat.cli.terminal``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from .app import App, Exit
from .connection import Target, check_url
from .remembered import (
    TokenFile,
    check_device,
    default_device_path,
    default_tokens_path,
    new_device_id,
    stable_device,
)
from .terminal import PipedConsole, TerminalConsole, colour_wanted, default_history_path

STOP_SIGNALS = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])


INSECURE_WARNING = (
    "chat-cli: WARNING: --insecure: the server's certificate is NOT checked; anyone "
    "between you and the server can read and change everything, your password included"
)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1-65535)")
    return value


def _url(text: str) -> str:
    try:
        return check_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _device(text: str) -> str:
    try:
        return check_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-cli",
        description="Chat from a terminal. Type /help once connected. "
        "With commands piped on stdin it runs them in order and exits with 0 if all "
        "succeeded, 1 if one failed, 3 if the connection failed.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="server address (127.0.0.1)")
    parser.add_argument("--port", type=_port, default=6000, help="server TCP port (6000)")
    parser.add_argument(
        "--url",
        type=_url,
        help="connect over WebSocket instead, e.g. ws://127.0.0.1:6080/ or wss://..., or "
        "TLS over TCP with tls://HOST:PORT (overrides --host/--port)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="TLS to --host/--port, verifying the server's certificate (a wss:// or "
        "tls://HOST:PORT --url implies it)",
    )
    parser.add_argument(
        "--ca-file",
        help="PEM file of the authority to trust for the server's certificate (default: "
        "the system's certificate store)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="TLS without checking the server's certificate: anyone in between can read "
        "and change the conversation (a warning says so)",
    )
    parser.add_argument(
        "--colour",
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="colour output: auto (when stdout is a terminal and NO_COLOR is unset)",
    )
    parser.add_argument(
        "--history",
        type=Path,
        default=None,
        help=f"command history file (default {default_history_path()})",
    )
    parser.add_argument("--no-history", action="store_true", help="keep no history file")
    parser.add_argument(
        "--remember",
        action="store_true",
        help=f"keep the login's session token in {default_tokens_path()} (mode 0600, one per"
        " server and device), so the next start logs in by itself; /logout forgets it. In a"
        " terminal a kept token is"
        " always used; with commands piped in, only with --remember",
    )
    parser.add_argument(
        "--device",
        type=_device,
        help="the name this client logs in as, among your devices (default: a random id made"
        f" once and kept in {default_device_path()}); give a second chat-cli on this machine"
        " another one",
    )
    return parser


def choose_device(chosen: str | None) -> str:
    """``--device``, or this machine's stable id; a fresh one for this run (with a
    warning) if none can be kept."""
    if chosen is not None:
        return chosen
    path = default_device_path()
    try:
        return stable_device(path)
    except OSError as exc:
        device = new_device_id()
        print(
            f"chat-cli: cannot keep a device id in {path} ({exc.strerror or exc});"
            f" this run is the device {device}",
            file=sys.stderr,
        )
        return device


async def _run(
    target: Target,
    console: TerminalConsole | PipedConsole,
    remember: bool,
    device: str,
    device_chosen: bool,
) -> int:
    """Run the app; SIGTERM or SIGHUP (the terminal closed) end it like /quit.

    Ending through trio, rather than by the default action, lets the terminal
    thread take the terminal out of raw mode before the process exits.
    """
    status: int = Exit.OK
    async with console.running():
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    nonlocal status
                    async for signum in signals:
                        status = 128 + signum
                        nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                tokens = TokenFile(default_tokens_path())
                app = App(
                    target,
                    console,
                    tokens,
                    remember=remember,
                    device=device,
                    device_chosen=device_chosen,
                )
                status = await app.run()
                nursery.cancel_scope.cancel()
    return status


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    target = Target(args.host, args.port, args.url, args.tls, args.ca_file, args.insecure)
    if args.insecure:
        print(INSECURE_WARNING, file=sys.stderr)
    choice = {"always": True, "never": False}.get(args.colour)
    colour = colour_wanted(sys.stdout, choice)
    console: TerminalConsole | PipedConsole
    if sys.stdin.isatty() and sys.stdout.isatty():
        history = None if args.no_history else (args.history or default_history_path())
        console = TerminalConsole(colour=colour, history=history)
    else:
        console = PipedConsole(colour=colour)
    try:
        device = choose_device(args.device)
        return trio.run(_run, target, console, args.remember, device, args.device is not None)
    except BaseException as exc:  # the last line of defence: a message, never a traceback
        leaves = _leaves(exc)
        if all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            return 130
        if any(isinstance(leaf, SystemExit) for leaf in leaves):
            raise
        if os.environ.get("CHAT_CLI_DEBUG"):
            raise
        first = next((leaf for leaf in leaves if not isinstance(leaf, KeyboardInterrupt)), exc)
        print(
            f"chat-cli: unexpected error: {first!r} (CHAT_CLI_DEBUG=1 shows more)", file=sys.stderr
        )
        return int(Exit.COMMAND_FAILED)


if __name__ == "__main__":
    sys.exit(main())
