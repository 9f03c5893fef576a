"""Installer and field-tech subcommands of ``linetap`` (check, levels, hooktest, status, ...).

Each module here is one subcommand and exposes ``register(sub)``, which adds its parser to
the ``linetap`` subparsers and sets ``func`` to a function ``(argparse.Namespace) -> int``.
``firmware.cli`` finds the modules by listing this package, so adding a tool touches
nothing else. Shared option helpers live in ``firmware.cli`` (``config_arg``).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil


def register_all(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register every tool module's subcommand, in name order (stable ``--help``)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue  # private helpers shared by the tools
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)
