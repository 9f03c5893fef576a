"""``linetap check``: every precondition of a working appliance, one line each.

The checks themselves are small functions in :mod:`firmware.tools._checks`; this module
wires them to the appliance (the configured capture device and GPIO backend, the
kernel clock, the data partition, the key files, the broker), prints each result as
soon as it is known and picks the exit code. ``_DESCRIPTION`` below is what the
installer reads in ``--help``.

Exit code: 0 when nothing FAILs (WARNs allowed), 1 when something FAILs (with
``--strict`` a WARN too), 2 when the config is invalid (the checks that need it are
skipped, the clock is still checked). ``--json`` prints one object instead:
``{"config", "status", "exit_code", "checks": [{"id", "status", "message", "fix",
"details"?}]}`` (``fix`` is null when there is nothing to do; ``details`` lists the
config's problems).

While the recorder runs (its status file is fresh) it holds the GPIO pins, and usually
the audio device: the hook lines then show what the recorder sees and the LEDs are left
alone. The broker check briefly takes over the uploader's MQTT session (the broker ties
the client id to the certificate CN): the uploader reconnects within a second and asks
again for what it had in flight, and the office sees its "offline" will in between.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drivers.gpio import PinFactory
from drivers.gpio.factory import make_pin_factory
from firmware.announce import tone_spec
from firmware.announce_config import announcing_lines
from firmware.app import announce_playback, capture_source, device_key_path, pin_script
from firmware.cli_options import config_arg
from firmware.clock import ClockSync, read_clock_sync
from firmware.config import LinetapConfig, config_path
from firmware.errors import LinetapError
from firmware.runstate import (
    UPLOADER_MAX_AGE_S,
    read_daemon_status,
    read_recorder_status,
    uploader_status_path,
)
from firmware.tlsfiles import tls_file_problems
from firmware.tools import _checks as c
from firmware.tools._checks import Check, Status, worst
from runtime.process import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK

# Groups of checks --skip accepts (a group covers e.g. every signal.LINE).
SKIPPABLE = (
    "audio",
    "signal",
    "announce",
    "gpio",
    "leds",
    "clock",
    "storage",
    "keys",
    "recipients",
    "tls",
    "broker",
)

_ID_WIDTH = 14

_DESCRIPTION = """\
Checks every precondition of a working appliance and prints one line each:
STATUS  ID  what was found; fix: what to do.

  PASS  fine
  INFO  look for yourself (each LED lights up for a second)
  WARN  works, but not as it should
  FAIL  will not record, seal or upload right: fix it before leaving the site
  SKIP  not run: it needs something that failed, the recorder holds it, or --skip

Checks: config, hook.LINE, audio.card (the sound card behind audio.device and its row
in the hardware table), audio, signal.LINE (silence, clipping, mains hum),
announce.LINE (a 0.3 s test tone on each line that announces: listen for it), leds,
clock, storage.free, storage.write, keys.device, recipients, tls.ca, tls.cert, tls.key,
broker (a real MQTT CONNECT with the device certificate).

While the recorder runs, the hook inputs and LEDs are left to it (its view is shown) and
the audio device is usually busy: stop it (systemctl stop linetap-recorder) to test the
hardware itself. The broker check briefly takes over the uploader's MQTT session: the
uploader reconnects within a second (the office sees it "offline" in between).
"""

_EPILOG = """\
exit status: 0 nothing FAILs (WARNs allowed), 1 something FAILs (with --strict: or
WARNs), 2 the config is invalid (one line per problem; the checks that need it are
skipped).
"""


def register(p: argparse.ArgumentParser) -> None:
    """``linetap check``'s options (its name and help are in :data:`firmware.cli.COMMANDS`)."""
    p.description = _DESCRIPTION
    p.epilog = _EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    config_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object for scripts")
    p.add_argument("--strict", action="store_true", help="exit 1 on a WARN too")
    p.add_argument(
        "--skip",
        action="append",
        choices=SKIPPABLE,
        default=[],
        metavar="GROUP",
        help=f"do not run these checks (repeatable): {', '.join(SKIPPABLE)}",
    )
    p.set_defaults(func=cmd_check)


def format_check(check: Check) -> list[str]:
    """The printed line(s) of one check: one per detail (config problems), else one."""
    head = f"{check.status.value:<4}  {check.id:<{_ID_WIDTH}} "
    if check.details:
        return [head + detail for detail in check.details]
    fix = f"; fix: {check.fix}" if check.fix else ""
    return [head + check.message + fix]


def exit_code(checks: list[Check], *, strict: bool) -> int:
    if any(c.id == "config" and c.status is Status.FAIL for c in checks):
        return EXIT_CONFIG
    if any(c.status is Status.FAIL for c in checks):
        return EXIT_FAILURE
    if strict and any(c.status is Status.WARN for c in checks):
        return EXIT_FAILURE
    return EXIT_OK


def run_checks(
    config: Path | None,
    *,
    skip: frozenset[str] = frozenset(),
    emit: Callable[[Check], None] = lambda _check: None,
    clock_sync: Callable[[], ClockSync] | None = None,
    led_wait: Callable[[float], object] | None = None,
) -> list[Check]:
    """Run every check against the appliance ``config`` describes; ``emit`` each result
    as soon as it is known (the installer sees progress)."""
    out: list[Check] = []

    def add(check: Check) -> None:
        out.append(check)
        emit(check)

    cfg, config_check = c.check_config(config)
    add(config_check)
    if cfg is None:
        if "clock" not in skip:
            add(c.check_clock((clock_sync or read_clock_sync)()))
        for group in ("hook", "audio", "signal", "leds", "storage", "keys", "recipients"):
            add(c.skipped(group, "needs a valid config"))
        for group in ("tls", "broker"):
            add(c.skipped(group, "needs a valid config"))
        return out
    _hardware(cfg, skip, add, led_wait or threading.Event().wait)
    if "clock" in skip:
        add(c.skipped("clock", "--skip clock"))
    else:
        add(c.check_clock((clock_sync or read_clock_sync)()))
    _files(cfg, skip, add)
    _network(cfg, skip, add)
    return out


def _hardware(
    cfg: LinetapConfig,
    skip: frozenset[str],
    add: Callable[[Check], None],
    led_wait: Callable[[float], object],
) -> None:
    """GPIO inputs, the capture device and its lines, the LEDs.

    While the recorder runs (fresh status file) its view of the lines is reported
    instead of claiming pins it holds (and LEDs it drives).
    """
    status = read_recorder_status(cfg.storage.status_file)
    recorder = status if c.recorder_running(status) else None
    pins: PinFactory | None = None
    try:
        if "gpio" in skip:
            add(c.skipped("gpio", "--skip gpio"))
            off_hook: dict[str, bool | None] = {}
        elif recorder is not None:
            off_hook = _report(add, c.hooks_from_recorder(cfg.lines, recorder))
        else:
            pins = _pin_factory(cfg, add)
            hooks = [] if pins is None else c.check_hooks(cfg.lines, pins, cfg.call.opt_out_mode)
            off_hook = _report(add, hooks)
        _audio(cfg, skip, add, recorder, off_hook)
        _announce(cfg, skip, add, recorder)
        if "leds" in skip or "gpio" in skip:
            add(c.skipped("leds", f"--skip {'leds' if 'leds' in skip else 'gpio'}"))
        elif recorder is not None:
            add(c.leds_from_recorder(recorder))
        elif pins is None:
            add(c.skipped("leds", "needs the GPIO backend"))
        else:
            add(c.check_leds(cfg, pins, led_wait))
    finally:
        if pins is not None:
            pins.close()


def _report(
    add: Callable[[Check], None], hooks: list[tuple[Check, bool | None]]
) -> dict[str, bool | None]:
    """Emit the hook checks; return each line's off-hook state (None: unknown)."""
    off_hook: dict[str, bool | None] = {}
    for check, state in hooks:
        add(check)
        off_hook[check.id.removeprefix("hook.")] = state
    return off_hook


def _pin_factory(cfg: LinetapConfig, add: Callable[[Check], None]) -> PinFactory | None:
    try:
        return make_pin_factory(cfg.gpio.backend, chip=cfg.gpio.chip, script=pin_script(cfg))
    except LinetapError as exc:  # GpioError, or a bad gpio.script for "sim"
        message, fix = c.split_fix(str(exc))
        add(c.Check("gpio", c.Status.FAIL, message, fix or "check the [gpio] settings"))
        return None


def _audio(
    cfg: LinetapConfig,
    skip: frozenset[str],
    add: Callable[[Check], None],
    recorder: Mapping[str, Any] | None,
    off_hook: Mapping[str, bool | None],
) -> None:
    if "audio" in skip:
        add(c.skipped("audio", "--skip audio"))
        return
    add(c.check_card(cfg.audio))
    capture = capture_source(cfg.audio, stop=threading.Event())
    audio_check, samples = c.check_audio(capture, cfg.audio, recorder)
    add(audio_check)
    for line in cfg.lines:
        check_id = f"signal.{line.name}"
        if "signal" in skip:
            add(c.skipped(check_id, "--skip signal"))
        elif samples is None:
            add(c.skipped(check_id, "needs audio from the capture device"))
        else:
            channel = samples[:, line.channel]
            add(c.check_signal(line, channel, cfg.audio.sample_rate, off_hook.get(line.name)))


def _announce(
    cfg: LinetapConfig,
    skip: frozenset[str],
    add: Callable[[Check], None],
    recorder: Mapping[str, Any] | None,
) -> None:
    """A short tone on every line that announces (nothing when none does)."""
    lines = announcing_lines(cfg)
    playback = announce_playback(cfg, blocking=True)
    if playback is None:
        return
    if "announce" in skip:
        for line in lines:
            add(c.skipped(f"announce.{line.name}", "--skip announce"))
        return
    tone = tone_spec(cfg, seconds=c.CHECK_TONE_S)
    for check in c.check_announce(lines, playback, tone, recorder):
        add(check)


def _files(cfg: LinetapConfig, skip: frozenset[str], add: Callable[[Check], None]) -> None:
    """The data partition, the signing key, the office's age keys."""
    if "storage" in skip:
        add(c.skipped("storage", "--skip storage"))
    else:
        add(c.check_free_space(cfg.storage.data_dir, cfg.storage.min_free_mb))
        add(c.check_write_speed(cfg.storage.data_dir))
    if "keys" in skip:
        add(c.skipped("keys.device", "--skip keys"))
    elif cfg.storage.format != "sealed":
        add(c.skipped("keys.device", 'storage.format = "wav": recordings are not signed'))
    else:
        add(c.check_device_key(device_key_path(cfg)))
    if "recipients" in skip:
        add(c.skipped("recipients", "--skip recipients"))
    else:
        add(c.check_recipients(cfg.sealing, cfg.storage.format))


def _running_uploader_link(cfg: LinetapConfig) -> dict[str, Any] | None:
    """The running uploader's broker link from its status file (None: not running)."""
    status = read_daemon_status(
        uploader_status_path(cfg.storage.runtime_dir), UPLOADER_MAX_AGE_S, time.time()
    )
    link = (status.get("data") or {}).get("link") if status["running"] else None
    return link if isinstance(link, dict) else None


def _network(cfg: LinetapConfig, skip: frozenset[str], add: Callable[[Check], None]) -> None:
    """The TLS files and the broker."""
    device = cfg.device_id
    if "tls" in skip:
        add(c.skipped("tls", "--skip tls"))
    else:
        for check in c.check_tls(cfg.upload, device, datetime.now(UTC)):
            add(check)
    uploader_link = _running_uploader_link(cfg)
    if "broker" in skip:
        add(c.skipped("broker", "--skip broker"))
    elif uploader_link is not None and uploader_link.get("state") == "connected":
        # A probe would log in with the device's certificate (client id = CN) and take the
        # running uploader's session over; its own connection already answers the question.
        add(
            c.Check(
                "broker",
                c.Status.PASS,
                f"the running uploader is connected to {uploader_link.get('broker')} "
                f"since {uploader_link.get('since_utc')} (TLS, certificate accepted)",
            )
        )
    elif tls_file_problems(cfg.upload):
        add(c.skipped("broker", "needs readable upload.ca_file, cert_file and key_file"))
    else:
        add(c.check_broker(cfg.upload, device))


def cmd_check(args: argparse.Namespace) -> int:
    def emit(check: Check) -> None:
        for line in format_check(check):
            print(line, flush=True)

    checks = run_checks(
        args.config, skip=frozenset(args.skip), emit=(lambda _c: None) if args.json else emit
    )
    code = exit_code(checks, strict=args.strict)
    if args.json:
        report = {
            "config": str(config_path(args.config)),
            "status": worst([c.status for c in checks]).value,
            "exit_code": code,
            "checks": [c.as_dict() for c in checks],
        }
        print(json.dumps(report, indent=2))
        return code
    counts = {s: sum(1 for c in checks if c.status is s) for s in Status}
    summary = ", ".join(f"{n} {s.value}" for s, n in counts.items() if n)
    print(f"linetap check: {summary} (exit {code})")
    return code
