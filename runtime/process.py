"""What every linetap process sets up the same way.

- :func:`setup_logging`: one event per line on stderr, no timestamp (journald adds the
  time and the unit name), for the daemons, the tools and the head office alike.
- :func:`run_command`: a command line's subcommand run with the same exit codes and
  one-line errors (``prog command: what went wrong``) in every linetap program.
- :func:`stop_on_signals`: SIGTERM (systemd stopping the unit) and SIGINT (Ctrl-C) set
  the process's stop event, which every loop waits on; the handlers before are restored
  on the way out, so a process (or a test) can nest or reuse it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from runtime.errors import ConfigError
from sealedrec.errors import LinetapError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2  # systemd units do not restart on it (RestartPreventExitStatus=2)


def setup_logging(level: str) -> None:
    """Log at ``level`` (a name such as ``"info"``, any case) to stderr for journald."""
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )


@contextmanager
def stop_on_signals(
    stop: threading.Event,
    *,
    log: logging.Logger | None = None,
    doing: str = "stopping",
    on_stop: Callable[[], object] | None = None,
) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT set ``stop`` and then call ``on_stop`` (for a loop
    that waits on something else too, such as a network client). With ``log``, each signal
    is logged as ``received SIGTERM: <doing>``."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if log is not None:
            log.info("received %s: %s", signal.Signals(signum).name, doing)
        stop.set()
        if on_stop is not None:
            on_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_command(prog: str, args: argparse.Namespace) -> int:
    """Run ``args.func(args)`` (an argparse subcommand) and return its exit code.

    A config error prints each problem on its own line (they name the file and line) and
    exits 2; any other linetap or OS error prints ``prog command: message`` and exits 1;
    Ctrl-C exits 1 without a traceback.
    """
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except (LinetapError, OSError) as exc:
        print(f"{prog} {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return code
