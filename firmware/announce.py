"""The recording announcement's schedule: what each line plays, on the capture timeline.

Pure and deterministic, like the call machine: everything counts in frames of the
capture stream, so the same calls give the same announcements on the Pi, in a replay
and in a test. No I/O here; :mod:`firmware.announce_output` plays the blocks and
:class:`firmware.line.LineRunner` turns the announcements into recording events.

A line announces while its recording runs, in *segments*:

- the call's segment starts at the Start action's trigger frame (the off-hook edge the
  debounce confirmed; never the pre-roll's first frame). In a file mode the prompt plays
  from there; "file+tone" plays its first tone right after the prompt, "tone" at once;
  then a tone every ``period``, for as long as the segment lasts;
- a segment stops at once, mid-tone or mid-prompt, when the recording ends, is paused or
  discarded: a caller who opted out is not told again that the call is recorded, because
  it no longer is. A caller who had opted out before the call was answered hears nothing;
- a resume starts a new segment at the resume frame: tones from there, no prompt (the
  caller heard it at the start). A rollover changes nothing: the call goes on.

A tone is a sine at ``level_dbfs`` (a full-scale sine being 0 dBFS) with raised-cosine
ramps of :data:`RAMP_S` at both ends, inside its length, so it starts and stops without a
click. Every tone restarts at phase 0, so all bursts are the same samples.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from firmware.announce_config import PROMPT_MODES, TONE_MODES, PromptFile, playback_channel

if TYPE_CHECKING:
    from firmware.config import LineConfig, LinetapConfig

Int16 = npt.NDArray[np.int16]
Kind = Literal["tone", "prompt"]

RAMP_S = 0.005  # raised-cosine fade in and out of each tone
FULL_SCALE = 32767


@dataclass(frozen=True, slots=True)
class ToneSpec:
    """One tone burst, repeated every ``period_frames``."""

    hz: int
    frames: int
    period_frames: int
    level_dbfs: float
    rate: int

    @property
    def ms(self) -> int:
        return round(self.frames * 1000 / self.rate)


@dataclass(frozen=True, slots=True)
class Prompt:
    """The prompt of a line, as played: int16 mono at the capture rate."""

    name: str  # the file's base name, as the events name it
    sha256: str  # of the WAV file
    samples: Int16

    @property
    def frames(self) -> int:
        return int(self.samples.shape[0])

    @classmethod
    def of(cls, prompt: PromptFile) -> Prompt:
        samples = np.frombuffer(prompt.pcm, dtype="<i2").astype(np.int16)
        samples.setflags(write=False)
        return cls(prompt.path.name, prompt.sha256, samples)


@dataclass(frozen=True, slots=True)
class LineProgram:
    """What one line plays: its playback channel, its tone (None: no tones) and prompt."""

    line: str
    channel: int
    tone: ToneSpec | None
    prompt: Prompt | None


@dataclass(frozen=True, slots=True)
class Announcement:
    """An announcement that starts at stream frame ``frame`` and lasts ``frames``."""

    line: str
    kind: Kind
    frame: int
    frames: int


@dataclass(slots=True)
class Segment:
    """Stream frames ``[start, stop)`` during which a line announces (``stop`` None: on)."""

    start: int
    stop: int | None
    prompt: bool  # the prompt plays at ``start``
    emitted: int  # announcements starting before this frame were reported


def tone_spec(cfg: LinetapConfig, *, seconds: float | None = None) -> ToneSpec:
    """``[announce]``'s tone (``seconds``: another length, for ``linetap check``)."""
    a, rate = cfg.announce, cfg.audio.sample_rate
    return ToneSpec(
        hz=a.tone_hz,
        frames=round((a.tone_s if seconds is None else seconds) * rate),
        period_frames=round(a.period_s * rate),
        level_dbfs=a.level_dbfs,
        rate=rate,
    )


def line_program(line: LineConfig, tone: ToneSpec, prompt: Prompt | None) -> LineProgram:
    if line.announce in PROMPT_MODES and prompt is None:
        raise ValueError(f"line {line.name}: announce = {line.announce!r} needs its prompt")
    return LineProgram(
        line=line.name,
        channel=playback_channel(line),
        tone=tone if line.announce in TONE_MODES else None,
        prompt=prompt if line.announce in PROMPT_MODES else None,
    )


@functools.lru_cache(maxsize=16)
def tone_burst(spec: ToneSpec) -> Int16:
    """The samples of one tone: sine from phase 0, raised-cosine ramps inside its length."""
    n = np.arange(spec.frames)
    ramp = max(1, min(round(RAMP_S * spec.rate), spec.frames // 2))
    # 0.5 (1 - cos(pi (k + 0.5) / ramp)) rises from ~0 to ~1 over the first `ramp` samples;
    # mirrored at the end. The half-sample offset makes rise and fall exact mirrors.
    edge = np.minimum(n, spec.frames - 1 - n)
    window = np.where(edge < ramp, 0.5 * (1 - np.cos(np.pi * (edge + 0.5) / ramp)), 1.0)
    amplitude = FULL_SCALE * 10 ** (spec.level_dbfs / 20)
    burst = np.round(amplitude * window * np.sin(2 * np.pi * spec.hz * n / spec.rate))
    out = burst.astype(np.int16)
    out.setflags(write=False)
    return out


def _window(seg: Segment, a: int, b: int) -> tuple[int, int]:
    """The part of ``[a, b)`` the segment covers (empty when lo >= hi)."""
    return max(a, seg.start), min(b, seg.stop if seg.stop is not None else b)


def _first_tone(program: LineProgram, seg: Segment) -> int:
    if seg.prompt and program.prompt is not None:
        return seg.start + program.prompt.frames
    return seg.start


def segment_announcements(program: LineProgram, seg: Segment, a: int, b: int) -> list[Announcement]:
    """The announcements of ``seg`` that start inside ``[a, b)``, in order."""
    lo, hi = _window(seg, a, b)
    out: list[Announcement] = []
    if lo >= hi:
        return out
    if seg.prompt and program.prompt is not None and lo <= seg.start < hi:
        out.append(Announcement(program.line, "prompt", seg.start, program.prompt.frames))
    tone = program.tone
    if tone is not None:
        first = _first_tone(program, seg)
        k = max(0, math.ceil((lo - first) / tone.period_frames))
        for frame in range(first + k * tone.period_frames, hi, tone.period_frames):
            out.append(Announcement(program.line, "tone", frame, tone.frames))
    return out


def render_segment(program: LineProgram, seg: Segment, out: Int16, a: int) -> None:
    """Write ``seg``'s samples into ``out`` (1-D, stream frames ``[a, a + len(out))``)."""
    lo, hi = _window(seg, a, a + out.shape[0])
    if lo >= hi:
        return
    frames = np.arange(lo, hi)
    prompt = program.prompt if seg.prompt else None
    if prompt is not None:
        rel = frames - seg.start
        on = rel < prompt.frames
        out[frames[on] - a] = prompt.samples[rel[on]]
    tone = program.tone
    if tone is not None:
        rel = frames - _first_tone(program, seg)
        phase = rel % tone.period_frames
        on = (rel >= 0) & (phase < tone.frames)
        out[frames[on] - a] = tone_burst(tone)[phase[on]]


@dataclass
class LineAnnouncer:
    """One line's announcement state: its program and segments.

    The line runner starts and stops segments as the recording's actions come, and asks
    for the announcements that became due (:meth:`due`); the output renders the stream
    (:meth:`render`), which runs behind the capture. A segment that would start in frames
    already rendered (an edge reported very late) starts at the first frame not yet
    played, so an announcement is never cut at its head.
    """

    program: LineProgram
    segments: list[Segment] = field(default_factory=list)
    rendered_upto: int | None = None

    @property
    def active(self) -> bool:
        return bool(self.segments) and self.segments[-1].stop is None

    def begin(self, frame: int, *, prompt: bool) -> None:
        """Announce from stream frame ``frame`` on (the prompt first, if ``prompt``)."""
        if self.active:
            self.stop(frame)
        if self.rendered_upto is not None:
            frame = max(frame, self.rendered_upto)
        self.segments.append(Segment(frame, None, prompt, frame))

    def stop(self, frame: int) -> None:
        """Nothing more from ``frame`` on (a segment not yet started is dropped)."""
        if not self.active:
            return
        seg = self.segments[-1]
        seg.stop = max(frame, seg.start)

    def due(self, upto: int) -> list[Announcement]:
        """Announcements starting before ``upto`` not reported yet, in order."""
        out: list[Announcement] = []
        for seg in self.segments:
            if seg.emitted < upto:
                out += segment_announcements(self.program, seg, seg.emitted, upto)
                seg.emitted = upto
        self._prune()
        return out

    def render(self, a: int, b: int) -> Int16:
        """This line's samples for stream frames ``[a, b)`` (silence where it is quiet)."""
        out = np.zeros(b - a, dtype=np.int16)
        for seg in self.segments:
            render_segment(self.program, seg, out, a)
        self.rendered_upto = b
        self._prune()
        return out

    def skip(self, upto: int) -> None:
        """Frames before ``upto`` will never be played (the device is faulted, a gap)."""
        self.rendered_upto = upto if self.rendered_upto is None else max(self.rendered_upto, upto)
        self._prune()

    def playing(self) -> Kind | None:
        """What the line announces at the render position: "prompt" while the prompt
        plays, "tone" while the tones run (between beeps too), else None."""
        if not self.active:
            return None
        seg = self.segments[-1]
        now = self.rendered_upto if self.rendered_upto is not None else seg.start
        if now < seg.start:
            return None
        prompt = self.program.prompt
        if seg.prompt and prompt is not None and now < seg.start + prompt.frames:
            return "prompt"
        return "tone" if self.program.tone is not None else None

    def _prune(self) -> None:
        """Forget segments fully played and reported."""
        done = self.rendered_upto
        if done is None:
            return
        self.segments = [
            s for s in self.segments if s.stop is None or s.stop > done or s.emitted < s.stop
        ]


def render_block(
    announcers: Sequence[LineAnnouncer], a: int, b: int, channels: int
) -> tuple[Int16, list[Announcement]]:
    """The output block for stream frames ``[a, b)``: shape (frames, channels), each line
    on its playback channel, silence elsewhere; and the announcements that start in it.

    Pure in what it returns; it moves each announcer's render position to ``b``.
    """
    block = np.zeros((b - a, channels), dtype=np.int16)
    started: list[Announcement] = []
    for announcer in announcers:
        for seg in announcer.segments:
            started += segment_announcements(announcer.program, seg, a, b)
        block[:, announcer.program.channel] = announcer.render(a, b)
    started.sort(key=lambda x: (x.frame, x.line))
    return block, started
