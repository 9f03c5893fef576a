"""A real terminal for tests of the terminal tools: a private tmux server (own socket,
120x40) running bash, driven with send-keys and read with capture-pane."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest


class TmuxPane:
    """bash in a 120x40 pane of a private tmux server; :meth:`close` kills the server."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("tmux") is None:
            pytest.fail("tmux is missing: `make test` installs it (Debian package tmux)")
        self.socket = workdir / "tmux.sock"
        subprocess.run(
            [
                *self._base(),
                "new-session",
                "-d",
                "-x",
                "120",
                "-y",
                "40",
                "-s",
                "t",
                "-c",
                str(workdir),
                "env PS1='$ ' HISTFILE=/dev/null bash --norc --noprofile -i",
            ],
            check=True,
            capture_output=True,
            timeout=10,
        )
        try:
            self.wait_for(lambda s: s.rstrip().endswith("$"), what="the shell prompt")
        except BaseException:
            self.close()
            raise

    def _base(self) -> list[str]:
        return ["tmux", "-S", str(self.socket), "-f", "/dev/null"]

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            [*self._base(), *args], check=True, capture_output=True, text=True, timeout=10
        ).stdout

    def run(self, command: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", command)
        self.tmux("send-keys", "-t", "t", "Enter")

    def key(self, key: str) -> None:
        self.tmux("send-keys", "-t", "t", key)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def cursor(self) -> tuple[bool, int, int]:
        """(visible, x, y) of the pane's cursor."""
        flag, x, y = self.tmux(
            "display", "-p", "-t", "t", "#{cursor_flag} #{cursor_x} #{cursor_y}"
        ).split()
        return flag == "1", int(x), int(y)

    def command_pid(self) -> int:
        """The pid of the command the shell is running in the foreground."""
        shell = int(self.tmux("display", "-p", "-t", "t", "#{pane_pid}").strip())
        children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
        assert len(children) == 1, f"expected one command under the shell, got {children}"
        return int(children[0])

    def wait_for(self, ready: Callable[[str], bool], *, what: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if ready(screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; the pane shows:\n{screen}")
            time.sleep(0.03)

    def wait_exit(self) -> tuple[str, list[str]]:
        """Wait for ``EXIT=<code>`` (the test's ``; echo EXIT=$?``); the screen's lines."""
        screen = self.wait_for(lambda s: "EXIT=" in s, what="the command to exit")
        screen = self.wait_for(
            lambda s: s.rstrip().endswith("$"), what="the prompt after the command"
        )
        return screen, screen.rstrip().splitlines()

    def close(self) -> None:
        subprocess.run([*self._base(), "kill-server"], capture_output=True, timeout=10, check=False)


def assert_clean_exit(pane: TmuxPane) -> None:
    """Exit code 0, "EXIT=0" at the start of its own line, then a prompt with the cursor
    visible right after it (no escape sequences, ^C or traceback left behind)."""
    screen, lines = pane.wait_exit()
    assert "Traceback" not in screen
    exit_line = next(i for i, line in enumerate(lines) if "EXIT=" in line)
    assert lines[exit_line] == "EXIT=0", lines[exit_line]
    assert lines[exit_line + 1 :] == ["$"], lines[exit_line + 1 :]
    visible, x, y = pane.cursor()
    assert visible, "the cursor was left hidden"
    assert (x, y) == (2, exit_line + 1)
