"""The root of linetap's error hierarchy.

Every error the product raises on purpose derives from :class:`LinetapError`; each leaf
also inherits the built-in it resembles, so callers that only know Python's built-ins
still catch it. Messages name the key, pin or device and say how to fix the problem.
The device's leaves are in :mod:`firmware.errors`, the drivers' in :mod:`drivers.errors`.
"""

from __future__ import annotations


class LinetapError(Exception):
    """Base of every error linetap raises on purpose."""
