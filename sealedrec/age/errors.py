"""The age error hierarchy: every error is an :class:`AgeError` (a ``LinetapError`` and a
``ValueError``); its leaves say whether a key, the header, the payload or the armor is at fault.
"""

from __future__ import annotations

from sealedrec.errors import LinetapError


class AgeError(LinetapError, ValueError):
    """Base of every age error: a key, header, payload or armor problem."""


class AgeKeyError(AgeError):
    """A recipient (``age1…``) or identity (``AGE-SECRET-KEY-1…``) string is malformed."""


class AgeHeaderError(AgeError):
    """The age header is malformed (or, for :class:`AgeMacError`, fails its MAC)."""


class AgeMacError(AgeHeaderError):
    """The header parsed and a file key was unwrapped, but the header MAC does not verify."""


class NoIdentityMatch(AgeError):
    """The header is well-formed but none of our identities can unwrap any stanza."""


class AgePayloadError(AgeError):
    """The encrypted payload is truncated, altered, or has data after its final chunk."""


class AgeArmorError(AgeError):
    """An ASCII-armored (PEM) age file is not strictly encoded."""
