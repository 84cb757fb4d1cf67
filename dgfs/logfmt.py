"""Log formatting. Key names come from the bucket and may hold control characters: every
message is escaped so that a key cannot forge log lines or drive a terminal (log injection)."""

from __future__ import annotations

import logging
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """`text` with control characters (C0, DEL, C1, line separators, lone surrogates) escaped."""
    return _CONTROL.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


class EscapingFormatter(logging.Formatter):
    """A Formatter whose messages never contain control characters (tracebacks are appended
    after this, unchanged)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))


def log_to_stderr(fmt: str = "%(levelname)s: %(message)s", level: int = logging.WARNING) -> None:
    """Escaped log lines on stderr (the maintenance commands: stats, gc, verify)."""
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
