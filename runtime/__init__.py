"""How a linetap process runs, on the device and at the head office alike: logging for
journald, SIGTERM/SIGINT as a stop event, one-line errors and exit codes, the config
error both ends' config loaders raise, and the version.

A package of its own (beside the fixed layout) because both ends' programs need it and
neither may import the other's: the head office imports nothing of ``firmware/`` or
``buffers/``. It imports nothing of linetap but :mod:`sealedrec.errors`.
"""

__version__ = "0.1.0"
