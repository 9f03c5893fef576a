"""``linetap``: the appliance's command line.

Each subcommand lives in a module that exposes a ``register(parser)`` function: it adds
the command's options (and description) to the parser it is given and sets ``func``, a
function ``(argparse.Namespace) -> int``. :data:`COMMANDS` is the table of them: name,
one-line help, and where its ``register`` is (``module:function``). A command's module
is imported only when that command is named on the command line, so ``linetap --help``
loads neither the config model nor any daemon, and ``linetap upload`` nothing of the
recorder. Adding a command is one line here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from runtime import __version__
from runtime.process import run_command

Register = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    register: str  # "module:function", the function a Register

    def load(self) -> Register:
        """Import the command's module and return its register function."""
        module, _, function = self.register.partition(":")
        found: Register = getattr(importlib.import_module(module), function)
        return found


COMMANDS: tuple[Command, ...] = (
    Command("record", "run the recorder daemon", "firmware.device_commands:register_record"),
    Command(
        "analyze",
        "caller ID, DTMF digits and levels in a WAV/FLAC file",
        "firmware.device_commands:register_analyze",
    ),
    Command(
        "upload",
        "run the uploader daemon (outbox -> head office over MQTT)",
        "uploader.daemon:register",
    ),
    Command(
        "validate-config",
        "check a config file; one line per problem",
        "firmware.device_commands:register_validate_config",
    ),
    Command(
        "replay",
        "run the recorder over a line capture and an events script, as fast as possible",
        "firmware.device_commands:register_replay",
    ),
    Command("keys", "the device signing key", "firmware.device_commands:register_keys"),
    # Installer and field-tech tools (firmware/tools/), in name order.
    Command(
        "check",
        "check every precondition of a working appliance, one line each (installers)",
        "firmware.tools.check:register",
    ),
    Command(
        "hooktest",
        "live hook / opt-out transitions per line and what the recorder makes of them",
        "firmware.tools.hooktest:register",
    ),
    Command(
        "levels",
        "live level meter per line (RMS, peak, clipping, hum, silence, hook state)",
        "firmware.tools.levels:register",
    ),
    Command(
        "provision",
        "device keys, certificate request, certificate install, first-boot setup",
        "firmware.tools.provision:register",
    ),
    Command(
        "status",
        "recorder and uploader state: lines, LEDs, outbox, broker link, disk",
        "firmware.tools.status:register",
    ),
)


def build_parser(full: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``linetap`` parser. The commands named in ``full`` (None: all) get their
    options; the others only their name and help (enough for ``linetap --help``)."""
    wanted = None if full is None else set(full)
    parser = argparse.ArgumentParser(prog="linetap", description="linetap call recorder")
    parser.add_argument("--version", action="version", version=f"linetap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help)
        if wanted is None or command.name in wanted:
            command.load()(p)
    return parser


def named_command(argv: Sequence[str]) -> str | None:
    """The subcommand on a ``linetap`` command line (its first word that is no option)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = named_command(args)
    parser = build_parser(() if command is None else (command,))
    return run_command("linetap", parser.parse_args(args))


if __name__ == "__main__":
    sys.exit(main())
