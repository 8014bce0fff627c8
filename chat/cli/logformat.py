"""Log line formats: ``text`` for people (the default) and ``json`` for log shippers.

``json`` writes one JSON object per line with ``time`` (UTC, ISO 8601, in
milliseconds), ``level``, ``node``, ``logger``, ``event`` (the message, formatted)
and, when there are any, ``fields`` (values given with ``extra=``) and ``error``
(the traceback). A line never spans two lines: newlines inside values are escaped
by JSON itself.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(node_id)s] %(name)s: %(message)s"

_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "node_id", "taskName"}
)
"""Attributes every record has: anything else came with ``extra=``."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "node": getattr(record, "node_id", None),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        if fields:
            line["fields"] = fields
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["error"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(kind: str) -> logging.Formatter:
    """The formatter for ``--log-format`` ``text`` or ``json``."""
    return JsonFormatter() if kind == "json" else logging.Formatter(TEXT_FORMAT)
