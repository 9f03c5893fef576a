"""linetap appliance firmware: config, call state, DSP, sealing, daemons and CLI."""

from runtime import __version__

__all__ = ["__version__"]
