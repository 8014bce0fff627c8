"""What chat-cli keeps in ``$XDG_CONFIG_HOME/chat-cli`` (``~/.config/chat-cli`` by default):
its device id, and the session tokens of ``--remember``.

The device id (protocol 1.2) tells the server which of a user's logins this
client is: messages are kept per device, and a session token belongs to the
device whose login issued it. chat-cli makes one random id (``cli-`` and 8 hex
digits) the first time it needs one and keeps it in ``device``, so it stays the
same across restarts; ``--device NAME`` picks another, for a second chat-cli on
the same machine.

A token logs its user in without the password, so it is kept like a password
would be: in ``tokens.json``, one per server address and device, mode 0600 in a
folder of mode 0700, written to a temporary file of that mode first and renamed
over the old one, so it is never readable by others, not even for a moment, and
never half written. A file from before devices (one token per server, no
device) is read as tokens of the device ``""``, which is what those logins were.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import unicodedata
from pathlib import Path

import attrs

DEVICE_MAX = 64
"""The longest device name the protocol allows (code points)."""


def default_config_dir() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(config) / "chat-cli"


def default_tokens_path() -> Path:
    return default_config_dir() / "tokens.json"


def default_device_path() -> Path:
    return default_config_dir() / "device"


def check_device(name: str) -> str:
    """``name`` if the protocol accepts it as a login's ``device``; raises ``ValueError``."""
    if not 1 <= len(name) <= DEVICE_MAX:
        raise ValueError(f"a device name has 1 to {DEVICE_MAX} characters, not {len(name)}")
    for char in name:
        if unicodedata.category(char) == "Cc":
            raise ValueError(f"a device name has no control characters (found U+{ord(char):04X})")
    return name


def new_device_id() -> str:
    return f"cli-{secrets.token_hex(4)}"


def stable_device(path: Path) -> str:
    """This machine's device id for chat-cli: the one kept in ``path``, or a new one, kept
    there from now on. Raises ``OSError`` when there is none and none can be kept.

    Two chat-cli starting at once for the first time agree on one id: each writes
    its own to a temporary file and links it into place, which fails if the other
    was first; the loser reads the winner's.
    """
    for _ in range(3):
        try:
            return check_device(path.read_text(encoding="utf-8").strip())
        except FileNotFoundError:
            pass
        except (ValueError, UnicodeDecodeError):
            path.unlink(missing_ok=True)  # not ours to keep: make a good one
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        device = new_device_id()
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(device + "\n", encoding="utf-8")
        try:
            os.link(temporary, path)
        except FileExistsError:
            continue  # another chat-cli was first: read its id
        finally:
            temporary.unlink(missing_ok=True)
        return device
    raise OSError(f"{path}: cannot read or keep a device id there")


@attrs.frozen
class Remembered:
    name: str
    token: str
    device: str = ""
    """The device the token belongs to: a token login must name it again."""


@attrs.define
class TokenFile:
    path: Path

    def get(self, server: str, device: str) -> Remembered | None:
        entry = self._devices(self._read(), server).get(device)
        if not isinstance(entry, dict):
            return None
        name, token = entry.get("name"), entry.get("token")
        if not isinstance(name, str) or not isinstance(token, str):
            return None
        return Remembered(name, token, device)

    def put(self, server: str, remembered: Remembered) -> None:
        entries = self._read()
        devices = self._devices(entries, server)
        devices[remembered.device] = {"name": remembered.name, "token": remembered.token}
        entries[server] = devices
        self._write(entries)

    def forget(self, server: str, device: str) -> None:
        entries = self._read()
        devices = self._devices(entries, server)
        if devices.pop(device, None) is None:
            return
        if devices:
            entries[server] = devices
        else:
            del entries[server]
        self._write(entries)

    @staticmethod
    def _devices(entries: dict[str, object], server: str) -> dict[str, object]:
        """The server's tokens by device; a file from before devices held one token
        per server, issued to the device ``""``."""
        found = entries.get(server)
        if not isinstance(found, dict):
            return {}
        if isinstance(found.get("token"), str):
            return {"": found}
        return dict(found)

    def _read(self) -> dict[str, object]:
        try:
            value = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def _write(self, entries: dict[str, object]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(entries, out, indent=1)
            os.chmod(temporary, 0o600)  # also if it existed with another mode
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
