"""runtime.process: the stop event every daemon and tool waits on, set by real signals."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

import pytest

from firmware.errors import ConfigError, LinetapError
from runtime.process import run_command, setup_logging, stop_on_signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_sets_stop_calls_on_stop_and_logs(sig, caplog):
    stop = threading.Event()
    calls: list[str] = []
    log = logging.getLogger("linetap.test")
    with (
        caplog.at_level(logging.INFO, logger="linetap.test"),
        stop_on_signals(stop, log=log, doing="finishing calls", on_stop=lambda: calls.append("x")),
    ):
        os.kill(os.getpid(), sig)
        assert stop.wait(5.0)
    assert calls == ["x"]
    assert [r.getMessage() for r in caplog.records] == [
        f"received {signal.Signals(sig).name}: finishing calls"
    ]


def test_previous_handlers_come_back_even_after_an_error():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stop = threading.Event()
    with pytest.raises(RuntimeError), stop_on_signals(stop):
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
        raise RuntimeError("boom")
    assert {s: signal.getsignal(s) for s in before} == before
    assert not stop.is_set()


def test_setup_logging_one_line_per_event_without_timestamp(capfd):
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        setup_logging("WARNING")
        logging.getLogger("linetap.x").info("hidden")
        logging.getLogger("linetap.x").warning("shown %d", 1)
        err = capfd.readouterr().err
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
    assert err == "WARNING linetap.x: shown 1\n"


def _failing(exc: BaseException):
    def func(_args):
        raise exc

    return func


@pytest.mark.parametrize(
    ("exc", "code", "expected"),
    [
        (
            PermissionError(13, "Permission denied", "/var/lib/linetap"),
            1,
            "linetap record: [Errno 13] Permission denied: '/var/lib/linetap'\n",
        ),
        (
            ConfigError(["linetap.toml:3: audio.rate: too low", "linetap.toml:9: lines: empty"]),
            2,
            "linetap.toml:3: audio.rate: too low\nlinetap.toml:9: lines: empty\n",
        ),
        (LinetapError("outbox: disk full"), 1, "linetap record: outbox: disk full\n"),
        (KeyboardInterrupt(), 1, ""),
    ],
)
def test_run_command_turns_errors_into_one_line_and_an_exit_code(exc, code, expected, capsys):
    args = argparse.Namespace(command="record", func=_failing(exc))
    assert run_command("linetap", args) == code
    captured = capsys.readouterr()
    assert captured.err == expected and captured.out == ""


def test_run_command_returns_the_commands_code():
    assert run_command("linetap", argparse.Namespace(command="x", func=lambda _a: 3)) == 3
