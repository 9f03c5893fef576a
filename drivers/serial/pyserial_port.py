"""Real serial ports through pyserial: USB adapters, on-board UARTs, pty slaves.

The port is opened with ``timeout=0`` and ``write_timeout=0`` (pyserial's non-blocking
mode), so :meth:`PySerialPort.read` returns what the kernel holds and never waits, and
:meth:`PySerialPort.write` takes what fits. ``exclusive=True`` (an advisory flock) stops a
second linetap, or anything else that honours the lock, from stealing the unit's bytes.
"""

from __future__ import annotations

import errno
import logging
import os

import serial

from drivers.serial import Received, SerialPortError

log = logging.getLogger(__name__)

READ_SIZE = 4096
MAX_READS_PER_POLL = 16  # a runaway device cannot keep one poll busy forever


def _reason(exc: BaseException) -> str:
    """A short reason: the OS's words for the errno if there is one anywhere in the chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and isinstance(seen.errno, int) and seen.errno > 0:
            if seen.errno == errno.EAGAIN:  # what flock says when another process holds it
                return "locked by another program"
            return os.strerror(seen.errno)
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


class PySerialPort:
    """A serial device by path (a symlink such as /dev/serial/by-id/... is fine)."""

    backend = "pyserial"

    def __init__(self, device: str, *, baudrate: int) -> None:
        if baudrate <= 0:
            raise SerialPortError(f"serial port {device}: baud rate must be > 0, got {baudrate}")
        self._device = device
        self.baudrate = baudrate
        self._serial: serial.Serial | None = None

    @property
    def device(self) -> str:
        return self._device

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def start(self, t0_ns: int) -> None:
        """Nothing to do: a real port's bytes come when they come."""

    def open(self) -> None:
        if self._serial is not None:
            return
        try:
            self._serial = serial.Serial(
                port=self._device,
                baudrate=self.baudrate,
                timeout=0,
                write_timeout=0,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise SerialPortError(
                f"serial port {self._device}: cannot open ({_reason(exc)}); "
                "check the device path, that the adapter is plugged in, and that nothing "
                "else holds the port"
            ) from exc

    def read(self, now_ns: int) -> list[Received]:
        port = self._require_open()
        data = bytearray()
        try:
            for _ in range(MAX_READS_PER_POLL):
                chunk = port.read(READ_SIZE)
                data += chunk
                if len(chunk) < READ_SIZE:
                    break
        except (serial.SerialException, OSError) as exc:
            raise SerialPortError(
                f"serial port {self._device}: read failed ({_reason(exc)})"
            ) from exc
        return [Received(bytes(data), now_ns)] if data else []

    def write(self, data: bytes) -> int:
        port = self._require_open()
        try:
            written = port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise SerialPortError(
                f"serial port {self._device}: write failed ({_reason(exc)})"
            ) from exc
        return int(written or 0)

    def close(self) -> None:
        port, self._serial = self._serial, None
        if port is None:
            return
        try:
            port.close()
        except (serial.SerialException, OSError) as exc:
            # A vanished device can refuse the close; its file descriptor is gone either way.
            log.debug("serial port %s: close failed: %s", self._device, _reason(exc))

    def _require_open(self) -> serial.Serial:
        if self._serial is None:
            raise SerialPortError(f"serial port {self._device}: not open")
        return self._serial
