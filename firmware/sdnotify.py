"""systemd's notify protocol (READY, WATCHDOG, STATUS, STOPPING) without a dependency.

Sends datagrams to $NOTIFY_SOCKET when systemd set one (Type=notify units); does nothing
otherwise, so the daemon runs the same from a shell.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self._address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        enabled = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # Ping at half the timeout, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if enabled else None
        self._last_ping = 0.0
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> None:
        if self._address is None:
            return
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            # systemd gone or socket misconfigured: the service still records.
            log.warning("sd_notify to %s failed: %s", self._address, exc)

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """Ping the watchdog if it is due; call from the loop whose liveness it proves."""
        if self.watchdog_interval_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval_s:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
