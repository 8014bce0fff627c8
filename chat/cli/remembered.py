"""The session tokens chat-cli keeps (``--remember``): one per server, in a file only
the user may read.

A token logs its user in without the password, so it is kept like a password
would be: in ``$XDG_CONFIG_HOME/chat-cli/tokens.json`` (``~/.config/...`` by
default), mode 0600 in a folder of mode 0700, written to a temporary file of
that mode first and renamed over the old one, so it is never readable by
others, not even for a moment, and never half written.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import attrs


def default_tokens_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(config) / "chat-cli" / "tokens.json"


@attrs.frozen
class Remembered:
    name: str
    token: str


@attrs.define
class TokenFile:
    path: Path

    def get(self, server: str) -> Remembered | None:
        entry = self._read().get(server)
        if not isinstance(entry, dict):
            return None
        name, token = entry.get("name"), entry.get("token")
        if not isinstance(name, str) or not isinstance(token, str):
            return None
        return Remembered(name, token)

    def put(self, server: str, remembered: Remembered) -> None:
        entries = self._read()
        entries[server] = {"name": remembered.name, "token": remembered.token}
        self._write(entries)

    def forget(self, server: str) -> None:
        entries = self._read()
        if entries.pop(server, None) is not None:
            self._write(entries)

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
