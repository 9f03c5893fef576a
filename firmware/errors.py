"""The device's errors: one hierarchy under :class:`sealedrec.errors.LinetapError`.

Every error the product raises on purpose derives from :class:`LinetapError`; each leaf
also inherits the built-in it resembles, so callers that only know Python's built-ins
still catch it. Messages name the key, pin or device and say how to fix the problem.
The hardware edge's errors live in :mod:`drivers.errors` and the buffers' in
:mod:`buffers.errors` (they import nothing above them); they are re-exported here so
device code names every error from one place.
"""

from __future__ import annotations

from buffers.errors import StorageError
from drivers.errors import (
    AudioDeviceBusyError,
    AudioDeviceError,
    AudioFileError,
    EventsFileError,
    GpioError,
    SerialPortError,
)
from runtime.errors import ConfigError
from sealedrec.errors import LinetapError

__all__ = [
    "AudioDeviceBusyError",
    "AudioDeviceError",
    "AudioFileError",
    "ConfigError",
    "EventsFileError",
    "GpioError",
    "LinetapError",
    "SerialPortError",
    "StorageError",
]
