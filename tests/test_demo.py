"""`make demo` stays true: record, seal, upload over mTLS, store, verify and decrypt the sample call;
in a terminal it then serves the web review until Ctrl-C."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import socket
import subprocess
import sys
import termios
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile

from firmware.dsp.dtmf import detect
from tests.conftest import REPO


def test_demo_end_to_end(tmp_path: Path):
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "demo", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verify (signatures, hashes, chain, audio): OK" in run.stdout
    assert "the office received, verified and decrypted every recording" in run.stdout
    # The office CLI acted as the demo account, whose name and password the demo prints.
    assert "[office]  account demo (supervisor + auditor), password " in run.stdout
    [wav] = (out / "office" / "exports").glob("*.wav")
    decrypted, rate = soundfile.read(wav, dtype="int16")
    source, _ = soundfile.read(REPO / "firmware" / "samples" / "sample_call.flac", dtype="int16")
    # Off-hook at 2.5 s with 5 s pre-roll (clamped to 0), hang-up known at 16.5 s; the
    # card number keyed at 9.6-12.3 s is masked (and only that).
    assert decrypted.shape[0] == round(16.5 * rate)
    assert "".join(e.digit for e in detect(decrypted, rate)) == ""
    assert "".join(e.digit for e in detect(source, rate)) == "4111111111111111#"
    differs = np.flatnonzero(decrypted != source[: decrypted.shape[0]])
    assert round(9.5 * rate) < differs[0] and differs[-1] < round(12.4 * rate)
    assert "inbound call from 02079460123 BRANCH 12; dialled *****************" in run.stdout


def _session_processes(sid: int) -> list[str]:
    """The processes of session ``sid`` still alive (zombies included): ``pid name``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
        if int(rest.split()[3]) == sid:
            found.append(f"{stat.parent.name} {name}")
    return found


def _tty_child() -> None:
    # Runs in the child after setsid (start_new_session): the pty becomes its controlling
    # terminal, so ^C written to it is SIGINT to the foreground process group, as typed.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_demo_in_a_terminal_serves_the_web_ui(tmp_path: Path):
    """In a terminal, the demo ends by serving the web review with the demo account printed,
    until Ctrl-C; then it exits 0 and leaves no process behind."""
    out = tmp_path / "demo"
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo", "--out", str(out)],
        cwd=REPO,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=_tty_child,  # noqa: PLW1509 - a test, no threads here
    )
    os.close(slave)
    seen = b""

    def read_until(done: Callable[[str], bool], timeout: float) -> str:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while not done(seen.decode(errors="replace")) and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:  # EIO: every holder of the terminal closed it
                    break
        return seen.decode(errors="replace").replace("\r\n", "\n")

    try:
        text = read_until(lambda s: "Ctrl-C to stop" in s or "demo: FAILED" in s, 150)
        assert "Ctrl-C to stop" in text, text
        [url] = re.findall(r"^ +(http://127\.0\.0\.1:\d+/)$", text, re.MULTILINE)
        password = re.search(r"account demo \(supervisor \+ auditor\), password (\S+):", text)
        assert password, text
        assert re.search(
            rf"^  account +demo\b.*\n  password +{re.escape(password[1])}$", text, re.M
        )
        assert "No one-time code" in text and "Plain HTTP on" in text, text
        assert len(_session_processes(proc.pid)) >= 2, "the demo and its web server"
        with urllib.request.urlopen(url + "login", timeout=10) as page:
            assert page.status == 200
            assert b"<form" in page.read()
        os.write(master, b"\x03")  # Ctrl-C
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            read_until(lambda _s: False, 0.2)
        text = read_until(lambda _s: False, 0.2)
        assert proc.poll() == 0, text
        assert "stopping the web review" in text, text
        port = int(url.rsplit(":", 1)[1].strip("/"))
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "the web server still listens"
        assert _session_processes(proc.pid) == [], "processes left behind"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
