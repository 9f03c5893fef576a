"""Serial caller-ID units: a modem or caller-ID box on a serial port, as a second caller-ID
source beside the FSK / DTMF decoder that listens to the line audio.

Such units print one block of text lines per incoming call (Rockwell / Conexant
``AT#CID=1`` / ``AT+VCID=1`` formatted output)::

    RING
    DATE = 0612
    TIME = 1423
    NMBR = 5551234
    NAME = JOHN DOE
    RING

Layers, each swappable the way :mod:`drivers.gpio` is:

* a :class:`SerialPort` backend moves bytes: ``pyserial`` (:mod:`drivers.serial.pyserial_port`,
  any tty device incl. USB adapters and pty slaves) or ``sim`` (:mod:`drivers.serial.sim`,
  bytes a test feeds or a script plays on the recorder's clock), picked by
  :func:`drivers.serial.factory.make_serial_port`;
* :mod:`drivers.serial.cid_text` turns bytes into caller-ID records (pure, incremental);
* :class:`drivers.serial.reader.SerialCallerIdReader` ties them together for the recorder's
  capture loop: non-blocking polls, the modem's init string, and reconnecting with backoff
  when the device goes away, without ever stopping the recorder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from drivers.errors import SerialPortError

__all__ = ["Received", "SerialPort", "SerialPortError"]


@dataclass(frozen=True, slots=True)
class Received:
    """Bytes that came in on a port and when (monotonic ns, or the replay's virtual clock).

    Real ports cannot tell when a byte arrived between two polls, so they stamp the poll's
    time; scripted ports stamp each chunk with its scripted time.
    """

    data: bytes
    t_ns: int


class SerialPort(Protocol):
    """A byte stream to a serial device. No method blocks."""

    @property
    def backend(self) -> str:
        """The backend's name ("pyserial", "sim")."""
        ...

    @property
    def device(self) -> str:
        """The device this port talks to (a path such as /dev/ttyUSB0), for logs and records."""
        ...

    @property
    def is_open(self) -> bool: ...

    def start(self, t0_ns: int) -> None:
        """The recorder's timeline starts at ``t0_ns`` (scripted backends count from it)."""
        ...

    def open(self) -> None:
        """Open the device; a no-op when open. Raises :class:`SerialPortError`."""
        ...

    def read(self, now_ns: int) -> list[Received]:
        """Everything that arrived since the last call, oldest first; ``[]`` when nothing did.

        Raises :class:`SerialPortError` when the port is not open or the device failed.
        """
        ...

    def write(self, data: bytes) -> int:
        """Queue ``data`` for sending; returns how many bytes were taken (maybe fewer than
        given when the device's buffer is full). Raises :class:`SerialPortError`."""
        ...

    def close(self) -> None:
        """Release the device. Safe to call when closed or after a failure."""
        ...
