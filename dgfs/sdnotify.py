"""systemd's notify protocol (sd_notify(3)) without libsystemd: one datagram per message.

Under a unit with `Type=notify`, systemd sets NOTIFY_SOCKET to a unix datagram socket (a path,
or an abstract name written with a leading '@'). `dgfs mount --foreground` sends `READY=1` once
mounted, `STATUS=…` while it serves, `STOPPING=1` when it unmounts, and `WATCHDOG=1` when the
unit asks for a watchdog (WATCHDOG_USEC). Without NOTIFY_SOCKET every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("dgfs.sdnotify")

_warned = False


def enabled() -> bool:
    return bool(os.environ.get("NOTIFY_SOCKET"))


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock:… and other forms are not spoken here


def notify(*fields: str) -> bool:
    """Send `fields` ('READY=1', 'STATUS=…') as one message; whether it was sent."""
    global _warned
    address = _address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None:
        return False
    message = "\n".join(f.replace("\n", " ") for f in fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        if not _warned:  # systemd gone or the socket unusable: say so once, keep serving
            log.warning("NOTIFY_SOCKET %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
            _warned = True
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings the unit asks for (half its WatchdogSec), or None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
