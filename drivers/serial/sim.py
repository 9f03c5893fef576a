"""Simulated serial port: bytes a test feeds by hand or a script plays on a timeline.

As with :class:`drivers.gpio.sim.SimPinFactory`, code above the driver (the caller-ID reader,
the recorder, ``linetap replay``) runs unchanged: a test calls :meth:`SimSerialPort.feed`,
:meth:`~SimSerialPort.unplug` and :meth:`~SimSerialPort.replug` as the outside world would,
and reads what was sent to the unit in :attr:`~SimSerialPort.written`. A script
(:class:`ScriptedBytes`, in seconds from :meth:`SimSerialPort.start`) plays a unit's output on
the recorder's own clock: each chunk carries its scripted time, not the time it was read.

Like a real port, hand-fed bytes that arrive while the port is closed or unplugged are
lost. A script plays on regardless: each chunk comes out at the first read at or after its
time (replays do not unplug their port).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from drivers.errors import EventsFileError
from drivers.serial import Received, SerialPortError

NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ScriptedBytes:
    """The unit prints ``data`` at ``t_s`` seconds after :meth:`SimSerialPort.start`."""

    t_s: float
    data: bytes


class SimSerialPort:
    """Serial port with no hardware. Thread-safe: tests may feed bytes from any thread.

    ``clock`` stamps hand-fed bytes; without one they carry the time of the read that
    collects them (what a real port does).
    """

    backend = "sim"

    def __init__(
        self,
        device: str = "sim",
        *,
        script: Iterable[ScriptedBytes] = (),
        clock: Callable[[], int] | None = None,
    ) -> None:
        self._device = device
        self._clock = clock
        self._lock = threading.Lock()
        self._script = sorted(script, key=lambda s: s.t_s)
        self._next = 0
        self._t0_ns: int | None = None
        self._open = False
        self._plugged = True
        self._broken = False  # unplugged while open: reads fail until closed
        self._inbox: list[tuple[int | None, bytes]] = []  # (stamp or "at read", data)
        self.written = bytearray()  # every byte the port sent to the unit
        self.opens = 0  # successful opens, for tests

    @property
    def device(self) -> str:
        return self._device

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def script_done(self) -> bool:
        return self._next >= len(self._script)

    # -- SerialPort -------------------------------------------------------------------
    def start(self, t0_ns: int) -> None:
        self._t0_ns = t0_ns

    def open(self) -> None:
        with self._lock:
            if self._open:
                return
            if not self._plugged:
                raise SerialPortError(
                    f"serial port {self._device}: cannot open (No such file or directory)"
                )
            self._open, self._broken = True, False
            self.opens += 1

    def read(self, now_ns: int) -> list[Received]:
        with self._lock:
            self._check_usable()
            due = self._due_script(now_ns)
            fed, self._inbox = self._inbox, []
        chunks = due + [Received(data, now_ns if t_ns is None else t_ns) for t_ns, data in fed]
        return sorted(chunks, key=lambda c: c.t_ns)  # stable: same-time chunks keep order

    def write(self, data: bytes) -> int:
        with self._lock:
            self._check_usable()
            self.written += data
        return len(data)

    def close(self) -> None:
        with self._lock:
            self._open = self._broken = False
            self._inbox.clear()

    # -- the outside world ----------------------------------------------------------------
    def feed(self, data: bytes, t_ns: int | None = None) -> None:
        """The unit prints ``data`` (stamped ``t_ns``, else by the clock or at the read)."""
        with self._lock:
            if self._open and not self._broken:
                stamp = t_ns if t_ns is not None or self._clock is None else self._clock()
                self._inbox.append((stamp, bytes(data)))

    def unplug(self) -> None:
        """The device goes away: reads and writes on an open port fail, opening fails."""
        with self._lock:
            self._plugged = False
            self._broken = self._open
            self._inbox.clear()

    def replug(self) -> None:
        """The device is back; an open port that failed stays failed until reopened."""
        with self._lock:
            self._plugged = True

    # -- internals ------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if not self._open:
            raise SerialPortError(f"serial port {self._device}: not open")
        if self._broken:
            raise SerialPortError(f"serial port {self._device}: read failed (Input/output error)")

    def _due_script(self, now_ns: int) -> list[Received]:
        """Scripted chunks whose time has come."""
        due: list[Received] = []
        if self._t0_ns is None:
            return due
        while self._next < len(self._script):
            step = self._script[self._next]
            t_ns = self._t0_ns + round(step.t_s * NS_PER_S)
            if t_ns > now_ns:
                break
            self._next += 1
            due.append(Received(step.data, t_ns))
        return due


def load_serial_script(path: Path) -> list[ScriptedBytes]:
    """A caller-ID unit's output on a timeline, for ``backend = "sim"``::

        # TIME  OUTPUT  (seconds from the start of the audio; escapes: \\r \\n \\t \\\\ \\xNN)
        1.0     RING\\r\\n
        1.4     DATE = 1125\\r\\nTIME = 1405\\r\\nNMBR = 5551234\\r\\nNAME = JOHN DOE\\r\\n

    Raises :class:`~drivers.errors.EventsFileError` naming the file and line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EventsFileError(f"serial script {path}: cannot read ({exc})") from None
    out: list[ScriptedBytes] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        time_text, _, output = line.partition(" ")
        try:
            t_s = float(time_text)
            if not t_s >= 0:
                raise ValueError("negative")
            data = output.strip().encode("latin-1").decode("unicode_escape").encode("latin-1")
        except (ValueError, UnicodeError) as exc:
            raise EventsFileError(
                f"{path}:{number}: expected 'SECONDS OUTPUT' with OUTPUT in Latin-1 and "
                f"escapes like \\r\\n ({exc})"
            ) from None
        out.append(ScriptedBytes(t_s, data))
    return out
