"""One boot of the power-cut test's VM, and the moment its power is cut.

The guest reports on its serial console (tests/powercut/guest.sh): heartbeats with the
recorder's capture position and the linetap units' journal. The test reads the console
file qemu writes every 20 ms, stamps each new line with the host's clock, and SIGKILLs
qemu when the boot's :class:`CutPlan` says so. Cuts "during a call" are placed on the
line's own timeline (an audio position), the others a seeded delay after the event that
starts what they cut into.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Phase = Literal["provisioning", "call", "sealing", "upload", "acked", "retention"]
PHASES: tuple[Phase, ...] = ("provisioning", "call", "sealing", "upload", "acked", "retention")
POLL_S = 0.02

HEARTBEAT_RE = re.compile(r"\bPC (?:HB|START) g=([\d.]+)(?: f=(\d+) p=(\d+))?")
RECORDING_STARTED_RE = re.compile(r"recording started line=\S+ id=(\S+)")
RECORDING_ENDED_RE = re.compile(r"recording ended line=\S+ id=(\S+)")
SEALED_RE = re.compile(r"sealed recording id=(\S+) seq=(\d+)")
ACKED_RE = re.compile(r"seq (\d+) stored by the head office: (\S+) \(")
RETENTION_RE = re.compile(r"retention deleted (\d+)")
RECORDER_STARTING_RE = re.compile(r"recorder starting device=")
PROVISIONING_RE = re.compile(r"Starting .*linetap-(?:grow-data|firstboot)\.service")
PROVISIONED_RE = re.compile(r"Finished .*linetap-firstboot\.service")


@dataclass(frozen=True)
class Stamped:
    host_s: float  # host wall clock (time.time()) when the test read the line
    text: str


class Tail:
    """The complete lines another process has appended to a file since the last poll."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0
        self._partial = b""

    def poll(self) -> list[Stamped]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._pos)
                data = fh.read()
        except FileNotFoundError:
            return []
        now = time.time()
        self._pos += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        return [Stamped(now, raw.decode(errors="replace").rstrip("\r")) for raw in complete]


class AudioClock:
    """Where the recorder's playback of the line's file is, in seconds of audio.

    The file backend returns each block when its last frame "has been spoken", so a
    status written when ``f`` frames were captured says the playback started at
    ``g - f/rate`` or before (g: guest clock when the heartbeat saw the status change,
    ``PC HB`` lines); the smallest such value over many heartbeats is the start. The
    guest clock maps to the host's by the smallest (host read time - guest time) of all
    console lines. Both estimates err late by a few ms at most, so a position computed
    from them is slightly early: what it says was captured, was.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.offset_s = math.inf  # host clock - guest clock
        self.started_g: dict[int, float] = {}  # playback start (guest clock) per recorder pid
        self.beats: dict[int, int] = {}
        self.pid: int | None = None
        self.last: tuple[float, int] = (0.0, 0)  # guest clock and frames of the last status

    def feed(self, line: Stamped) -> None:
        m = HEARTBEAT_RE.search(line.text)
        if not m:
            return
        guest_s = float(m.group(1))
        self.offset_s = min(self.offset_s, line.host_s - guest_s)
        if m.group(2) is None:
            return
        frames, pid = int(m.group(2)), int(m.group(3))
        start = guest_s - frames / self.rate
        self.started_g[pid] = min(self.started_g.get(pid, math.inf), start)
        self.beats[pid] = self.beats.get(pid, 0) + 1
        self.pid = pid
        self.last = (guest_s, frames)

    def lag_s(self) -> float | None:
        """How far the recorder's reading was behind the line's real time at its last
        status: emulated on a busy host it falls behind and catches up in bursts (a real
        card's ALSA buffer would overrun instead)."""
        if self.pid is None:
            return None
        guest_s, frames = self.last
        return guest_s - self.started_g[self.pid] - frames / self.rate

    def position_s(self, host_s: float) -> float | None:
        """Seconds of the file the current recorder had captured at ``host_s``; None
        before it has reported a few times."""
        if self.pid is None or self.beats[self.pid] < 3:
            return None
        return host_s - self.offset_s - self.started_g[self.pid]


@dataclass(frozen=True)
class CutPlan:
    """When one boot's power is cut, and what the card keeps of its volatile cache."""

    phase: Phase
    call: int = 0  # call: the call cut into; sealing: the call whose sealing is cut
    at_s: float = 0.0  # call: audio position (s of the file); others: delay after trigger
    nth: int = 0  # upload: cut when the broker has this many upload messages
    keep_unflushed: float = 0.0  # share of the writes after the last flush the card keeps

    def describe(self) -> str:
        what = {
            "provisioning": f"{self.at_s:.1f} s into provisioning",
            "call": f"call {self.call + 1} at {self.at_s:.2f} s of the line",
            "sealing": f"{self.at_s:.2f} s after call {self.call + 1} ended",
            "upload": f"at upload message {self.nth}",
            "acked": f"{self.at_s:.2f} s after the ack of a call it recorded",
            "retention": f"{self.at_s:.2f} s after the recorder started (retention)",
        }[self.phase]
        return f"{self.phase}: {what}, card keeps {self.keep_unflushed:.0%} of unflushed writes"


@dataclass
class BootRecord:
    number: int
    plan: CutPlan | None
    started_utc: float
    ended_utc: float = 0.0
    console: list[Stamped] = field(default_factory=list)
    broker: list[Stamped] = field(default_factory=list)
    cut_utc: float | None = None  # when the power was cut (host clock)
    cut_position_s: float | None = None  # audio position of the line's file at the cut
    cut_lag_s: float | None = None  # the recorder's lag behind the line at its last status
    replay: tuple[int, int, int] = (0, 0, 0)  # writes kept, writes dropped, flushes
    clock_offset_s: float = math.inf  # host clock - guest clock during this boot

    @property
    def wall_s(self) -> float:
        return self.ended_utc - self.started_utc

    def texts(self) -> list[str]:
        return [line.text for line in self.console]

    def ids(self, pattern: re.Pattern[str], group: int = 1) -> list[str]:
        return [m.group(group) for t in self.texts() if (m := pattern.search(t))]


class CutTrigger:
    """Decides, from what the guest and the broker say, when to cut the power."""

    def __init__(self, plan: CutPlan, upload_topic: str) -> None:
        self.plan = plan
        self.upload_topic = upload_topic
        self.deadline: float | None = None
        self._seen = 0
        self._ended: set[str] = set()  # recordings whose call ended in this boot

    def observe(self, console: list[Stamped], broker: list[Stamped]) -> None:
        if self.deadline is not None:
            return
        phase = self.plan.phase
        if phase == "upload":
            for line in broker:
                if "Received PUBLISH" in line.text and self.upload_topic in line.text:
                    self._seen += 1
                    if self._seen >= self.plan.nth:
                        self.deadline = line.host_s
                        return
            return
        pattern = {
            "provisioning": PROVISIONING_RE,
            "sealing": RECORDING_ENDED_RE,
            "acked": ACKED_RE,
            "retention": RECORDER_STARTING_RE,
        }.get(phase)
        if pattern is None:
            return
        wanted = self.plan.call + 1 if phase == "sealing" else 1
        for line in console:
            if ended := RECORDING_ENDED_RE.search(line.text):
                self._ended.add(ended.group(1))
            m = pattern.search(line.text)
            # The ack cut waits for the ack of a call this boot recorded: it comes between
            # calls, when no other fsync commits the filesystem's journal for it.
            if m and (phase != "acked" or m.group(2) in self._ended):
                self._seen += 1
                if self._seen >= wanted:
                    self.deadline = line.host_s + self.plan.at_s
                    return

    def due(self, now: float, clock: AudioClock) -> bool:
        if self.plan.phase == "call":
            position = clock.position_s(now)
            return position is not None and position >= self.plan.at_s
        return self.deadline is not None and now >= self.deadline


def run_boot(
    record: BootRecord,
    cmd: list[str],
    console_path: Path,
    broker_tail: Tail,
    clock: AudioClock,
    *,
    upload_topic: str,
    timeout_s: float,
) -> None:
    """Boot ``cmd`` and either cut its power as ``record.plan`` says (SIGKILL) or, with
    no plan, wait for the guest to power off. Fills ``record``; raises AssertionError
    (with the console's end) on a timeout or a guest that powers off before its cut."""
    trigger = CutTrigger(record.plan, upload_topic) if record.plan else None
    console = Tail(console_path)
    record.started_utc = time.time()
    qemu = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        while qemu.poll() is None:
            lines, broker = console.poll(), broker_tail.poll()
            for line in lines:
                clock.feed(line)
            record.console += lines
            record.broker += broker
            now = time.time()
            if trigger is not None:
                trigger.observe(lines, broker)
                if trigger.due(now, clock):
                    record.cut_utc = time.time()
                    record.cut_position_s = clock.position_s(record.cut_utc)
                    record.cut_lag_s = clock.lag_s()
                    qemu.kill()  # SIGKILL: the power cut
                    break
            assert now - record.started_utc < timeout_s, (
                f"boot {record.number} ({record.plan.describe() if record.plan else 'final'}): "
                f"nothing to cut or no power-off within {timeout_s:.0f} s; console:\n"
                + "\n".join(record.texts()[-60:])
            )
            time.sleep(POLL_S)
    finally:
        if qemu.poll() is None:
            qemu.kill()
        qemu_out, _ = qemu.communicate()
    record.ended_utc = time.time()
    record.clock_offset_s = clock.offset_s
    record.console += console.poll()
    record.broker += broker_tail.poll()
    if trigger is None:
        assert qemu.returncode == 0, (
            f"qemu: {qemu_out.decode(errors='replace')[-2000:]}\n" + "\n".join(record.texts()[-80:])
        )
    else:
        assert record.cut_utc is not None, (
            f"boot {record.number}: the guest stopped before its cut (qemu exit "
            f"{qemu.returncode})\n" + "\n".join(record.texts()[-80:])
        )
