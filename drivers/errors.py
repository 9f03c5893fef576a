"""The errors of the hardware edge: audio capture, GPIO, serial caller-ID units and the
simulated backends' input files. Each derives from linetap's root error, so callers that
catch :class:`sealedrec.errors.LinetapError` catch these too; :mod:`firmware.errors`
re-exports them for the rest of the device. Messages name the device, pin or port and
say how to fix the problem.
"""

from __future__ import annotations

from sealedrec.errors import LinetapError


class AudioDeviceError(LinetapError, OSError):
    """The capture device cannot be opened or has gone away."""


class AudioDeviceBusyError(AudioDeviceError):
    """The capture device exists but another process holds it (usually the recorder)."""


class AudioFileError(LinetapError, ValueError):
    """An audio file given on the command line cannot be used as a line capture."""


class GpioError(LinetapError, OSError):
    """A GPIO backend, chip or pin cannot be used."""


class SerialPortError(LinetapError, OSError):
    """A serial port cannot be opened, read or written (missing device, unplugged USB
    adapter, EIO), or its backend setting is wrong. The message names the port or setting."""


class EventsFileError(LinetapError, ValueError):
    """An events script (hook / opt-out timeline) is malformed."""
