"""Caller IDs from a serial unit, for the recorder's single capture loop.

:meth:`SerialCallerIdReader.poll` never blocks and never raises for a device problem: the
recorder keeps recording calls when the caller-ID unit is missing, unplugged or broken
(the audio's own FSK / DTMF caller ID still works). A failure logs one warning naming the
port; the reader then retries opening with exponential backoff, timed by the ``now_ns``
values the recorder passes in (no threads, no sleeping), and logs one line when the unit is
back. After every (re)open the modem's init string (e.g. ``AT#CID=1\\r``) is sent again,
since an unplugged modem forgets it.
"""

from __future__ import annotations

import logging

from drivers.serial import SerialPort, SerialPortError
from drivers.serial.cid_text import CidTextParser, SerialCallerId

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000


class SerialCallerIdReader:
    """Reads caller-ID records from ``port`` for the phone line ``line_name``.

    ``init`` is written after each open. ``idle_gap_s`` ends a record that has no NAME line
    (see :mod:`drivers.serial.cid_text`). After a failure, reopening is tried
    ``retry_initial_s`` later, the wait doubling up to ``retry_max_s``; a reopen counts as a
    recovery only once a read works, so a device that opens but fails at once backs off too.
    """

    def __init__(
        self,
        port: SerialPort,
        *,
        line_name: str,
        init: bytes | None = None,
        idle_gap_s: float = 0.5,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
    ) -> None:
        if not 0 < retry_initial_s <= retry_max_s:
            raise ValueError(
                f"need 0 < retry_initial_s <= retry_max_s, got {retry_initial_s}, {retry_max_s}"
            )
        self.port = port
        self.line_name = line_name
        self.init = init
        self._parser = CidTextParser(port.device, idle_gap_s=idle_gap_s)
        self._retry_initial_ns = round(retry_initial_s * NS_PER_S)
        self._retry_max_ns = round(retry_max_s * NS_PER_S)
        self._retry_wait_ns = self._retry_initial_ns
        self._next_open_ns: int | None = None  # None: open at the next poll
        self._failing = False  # a warning was logged and no read has worked since
        self._unsent = b""  # the part of the init string the port did not take yet

    @property
    def connected(self) -> bool:
        """True while the port is open and its last read or write worked."""
        return self.port.is_open and not self._failing

    def start(self, t0_ns: int) -> None:
        """The recorder's timeline starts at ``t0_ns`` (a scripted port counts from it)."""
        self.port.start(t0_ns)

    def poll(self, now_ns: int) -> list[SerialCallerId]:
        """Caller IDs completed since the last call, oldest first. Never blocks or raises for
        a device problem; call it every capture period."""
        records: list[SerialCallerId] = []
        try:
            if not self.port.is_open:
                if self._next_open_ns is not None and now_ns < self._next_open_ns:
                    return self._parser.idle(now_ns)
                self._open()
            self._send()
            for chunk in self.port.read(now_ns):
                records += self._parser.feed(chunk.data, chunk.t_ns)
        except SerialPortError as exc:
            records += self._parser.end_of_stream()
            self._fail(exc, now_ns)
            return records
        if self._failing:
            self._failing = False
            self._retry_wait_ns = self._retry_initial_ns
            log.info("line %s: caller-ID unit on %s is back", self.line_name, self.port.device)
        return records + self._parser.idle(now_ns)

    def close(self) -> None:
        """Release the port. A record still waiting for more lines is dropped."""
        self._parser.end_of_stream()
        self.port.close()
        self._unsent = b""
        self._next_open_ns = None

    def _open(self) -> None:
        self.port.open()
        self._unsent = self.init or b""

    def _send(self) -> None:
        if self._unsent:
            taken = self.port.write(self._unsent)
            self._unsent = self._unsent[max(taken, 0) :]

    def _fail(self, exc: SerialPortError, now_ns: int) -> None:
        self.port.close()
        self._unsent = b""
        self._next_open_ns = now_ns + self._retry_wait_ns
        if not self._failing:
            self._failing = True
            log.warning(
                "line %s: caller-ID unit unavailable: %s; recording goes on without it, retrying",
                self.line_name,
                exc,
            )
        else:
            log.debug("line %s: caller-ID unit still unavailable: %s", self.line_name, exc)
        self._retry_wait_ns = min(self._retry_wait_ns * 2, self._retry_max_ns)
