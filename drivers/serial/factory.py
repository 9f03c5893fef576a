"""Pick the serial port backend named by a config setting.

There is no fallback from ``pyserial`` to ``sim``: a unit that silently ended up simulated
would deliver no caller IDs and hide a wiring or setup problem.
"""

from __future__ import annotations

from collections.abc import Sequence

from drivers.serial import SerialPort, SerialPortError
from drivers.serial.pyserial_port import PySerialPort
from drivers.serial.sim import ScriptedBytes, SimSerialPort

BACKENDS = ("pyserial", "sim")


def make_serial_port(
    backend: str,
    *,
    device: str,
    baudrate: int,
    script: Sequence[ScriptedBytes] = (),
    setting: str = "caller_id_serial.backend",
) -> SerialPort:
    """The backend ``backend`` ("pyserial" or "sim") for ``device``.

    ``baudrate`` is for pyserial only (sim ignores it), ``script`` (a unit's timed output)
    for sim only. ``setting`` is the config key that chose the backend, named in errors.
    """
    if backend not in BACKENDS:
        raise SerialPortError(
            f"{setting} '{backend}' is unknown; use one of: {', '.join(BACKENDS)}"
        )
    if backend == "sim":
        return SimSerialPort(device, script=script)
    if script:
        # A real unit prints what the line brings; a script given here would be ignored.
        raise SerialPortError(
            f'a caller-ID script plays only with {setting} = "sim", not "{backend}"'
        )
    return PySerialPort(device, baudrate=baudrate)
