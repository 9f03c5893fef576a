"""linetap appliance firmware: config, call state, DSP, sealing, daemons and CLI."""

__version__ = "0.1.0"
