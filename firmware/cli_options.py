"""Options that several ``linetap`` subcommands share (``--config``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from firmware.config import DEFAULT_CONFIG_PATH


def config_arg(p: argparse.ArgumentParser) -> None:
    """The ``--config/-c`` option every config-reading subcommand takes."""
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        help=f"config file (default: $LINETAP_CONFIG or {DEFAULT_CONFIG_PATH})",
    )
