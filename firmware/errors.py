"""The one error hierarchy of linetap.

Every error the product raises on purpose derives from :class:`LinetapError`; each leaf
also inherits the built-in it resembles, so callers that only know Python's built-ins
still catch it. Messages name the key, pin or device and say how to fix the problem.
"""

from __future__ import annotations


class LinetapError(Exception):
    """Base of every error linetap raises on purpose."""


class ConfigError(LinetapError, ValueError):
    """The configuration file is missing, unreadable or invalid.

    ``problems`` holds one human-readable line per problem
    (``file:line: key: what is wrong; how to fix``).
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class AudioDeviceError(LinetapError, OSError):
    """The capture device cannot be opened or has gone away."""


class AudioDeviceBusyError(AudioDeviceError):
    """The capture device exists but another process holds it (usually the recorder)."""


class GpioError(LinetapError, OSError):
    """A GPIO backend, chip or pin cannot be used."""


class SerialPortError(LinetapError, OSError):
    """A serial port cannot be opened, read or written (missing device, unplugged USB
    adapter, EIO), or its backend setting is wrong. The message names the port or setting."""


class EventsFileError(LinetapError, ValueError):
    """An events script (hook / opt-out timeline) is malformed."""


class AudioFileError(LinetapError, ValueError):
    """An audio file given on the command line cannot be used as a line capture."""


class StorageError(LinetapError, OSError):
    """Recordings cannot be written (disk full, read-only, permissions)."""
