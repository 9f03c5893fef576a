"""``linetap-office``: the head-office command line (receiver, store, search)."""

from __future__ import annotations

import argparse
import sys

from firmware import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="linetap-office",
        description="linetap head office: receive, verify, index and keep recordings",
    )
    parser.add_argument("--version", action="version", version=f"linetap-office {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
