"""Installer and field-tech subcommands of ``linetap`` (check, levels, hooktest, status, ...).

Each module here is one subcommand and exposes ``register(parser)``, which adds the
command's options to the parser it is given and sets ``func`` to a function
``(argparse.Namespace) -> int``; :data:`firmware.cli.COMMANDS` lists them with their
one-line help. Modules whose name starts with ``_`` are helpers the tools share.
"""
