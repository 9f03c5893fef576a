"""One phone line inside the recorder: its ring, call machine, analyser and recording.

:class:`LineRunner` takes each capture block of its channel, lets the call machine
decide, runs the line's detectors (:class:`~firmware.dsp.analyser.LineAnalyser`) and writes
the decided audio from the pre-roll ring into the recording — masking key presses on the
way (audio is held back until the DTMF detector has settled it). :class:`Timeline` maps
stream frames to the capture clock and to UTC.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from buffers.ring import PrerollRing
from drivers.audio import AudioBlock
from drivers.gpio.devices import SwitchInput
from firmware.announce import Announcement, LineAnnouncer
from firmware.callstate import (
    Action,
    CallMachine,
    CallTiming,
    Discard,
    End,
    EndReason,
    Flash,
    Input,
    LineState,
    Pause,
    Resume,
    Start,
    Trigger,
)
from firmware.config import LineConfig, LinetapConfig
from firmware.dsp.analyser import LineAnalyser, caller_id_record
from firmware.dsp.dtmf import MASK_CHAR, MaskMode, mask_spans
from firmware.errors import StorageError
from firmware.sinks import (
    RecordingEnd,
    RecordingEvent,
    RecordingSink,
    RecordingStart,
    RecordingWriter,
)

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
# How long after off-hook a caller ID may still arrive (serial units report when decoded).
CALLER_ID_LATE_S = 3.0


def iso_utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / NS_PER_S, tz=UTC).isoformat(timespec="milliseconds")


@dataclass(slots=True)
class Timeline:
    """Maps frames of the capture stream to the clock the blocks were stamped with.

    Anchored on the newest block, so a sound card clock that drifts against the CPU's
    never accumulates error. ``wall_offset_ns`` turns that clock into UTC.
    """

    rate: int
    wall_offset_ns: int
    anchor_frame: int = 0
    anchor_ns: int = 0

    def update(self, block: AudioBlock) -> None:
        self.anchor_frame = block.start_frame
        self.anchor_ns = block.t_start_ns

    def frame_at(self, t_ns: int) -> int:
        return self.anchor_frame + round((t_ns - self.anchor_ns) * self.rate / NS_PER_S)

    def ns_at(self, frame: int) -> int:
        return self.anchor_ns + round((frame - self.anchor_frame) * NS_PER_S / self.rate)

    def utc_at(self, frame: int) -> str:
        return iso_utc(self.ns_at(frame) + self.wall_offset_ns)


@dataclass(frozen=True, slots=True)
class Telephony:
    """What the recorder does with what a line's analyser hears (from ``[telephony]``)."""

    mask_dtmf: bool
    mask_after_n: int  # digits dialled after off-hook left readable before masking starts
    mask_mode: MaskMode
    guard_frames: int  # masked before and after each digit's detected span
    caller_id_window_frames: int  # how long before off-hook a caller ID still counts
    caller_id_after_frames: int  # ... and how long after (a serial unit reports late)
    outbound_window_frames: int  # a digit this soon after off-hook makes the call outbound


@dataclass(slots=True)
class _CallInfo:
    """Facts about the call as a whole, carried over to a rollover's next recording."""

    caller_id: dict[str, object] | None = None
    direction: str = "unknown"
    announced: dict[str, int] = field(default_factory=dict)  # announcements made, per kind


@dataclass(slots=True)
class _Recording:
    writer: RecordingWriter
    first_frame: int
    cursor: int  # next stream frame to write
    trigger_frame: int = 0
    decided_frame: int = 0  # where the Start was decided (the debounce after the trigger)
    call: _CallInfo = field(default_factory=_CallInfo)
    audio_frames: int = 0
    paused: bool = False
    discarded: bool = False
    digit_seq: int = 0  # the analyser's number of the next key press to take
    digits: list[str] = field(default_factory=list)  # dialled, masked ones as MASK_CHAR
    masked: list[tuple[int, int]] = field(default_factory=list)  # detected spans, frames


@dataclass
class LineRunner:
    """One line: its ring, machine, inputs and current recording."""

    config: LineConfig
    timing: CallTiming
    ring: PrerollRing
    sink: RecordingSink
    hook: SwitchInput
    optout: SwitchInput | None
    device_id: str
    rate: int
    timeline: Timeline
    # Called with the error when storage fails, with None when a recording starts fine.
    storage_status: Callable[[StorageError | None], None]
    analyser: LineAnalyser | None = None
    telephony: Telephony | None = None
    # The recording announcement (None: announce = "off") and the playback's fault now.
    announcer: LineAnnouncer | None = None
    announce_fault: Callable[[], str | None] = field(default=lambda: None)
    machine: CallMachine | None = None
    recording: _Recording | None = None
    recordings_started: int = 0
    last_id: str | None = field(default=None)
    last_call: _CallInfo | None = field(default=None)
    last_end_frame: int | None = field(default=None)  # a caller ID before it was that call's

    @property
    def state(self) -> LineState:
        return self.machine.state if self.machine else LineState.IDLE

    def boot(self, frame: int) -> None:
        self.machine = CallMachine(
            self.timing,
            off_hook=self.hook.is_active,
            opted_out=self.optout.is_active if self.optout else False,
            at_frame=frame,
        )
        self._apply(self.machine.boot())

    def feed(
        self,
        samples: npt.NDArray[np.int16],
        gap_frames: int,
        edges: Sequence[tuple[int, Input, bool]],
        end_frame: int,
    ) -> None:
        assert self.machine is not None, "boot() first"
        if gap_frames:
            self.ring.push_silence(gap_frames)
            self._note_gap(end_frame - samples.shape[0] - gap_frames, gap_frames)
        self.ring.push(samples)
        if self.analyser is not None:
            self.analyser.process(samples, end_frame - samples.shape[0])
        self._apply(self.machine.advance(edges, end_frame))
        self._take_digits()
        self._flush(end_frame)
        if self.recording is not None:
            self._announce_due(self.recording, end_frame)

    def finish(self, frame: int, reason: EndReason) -> None:
        if self.machine is not None:
            self._apply(self.machine.finish(frame, reason))

    # -- applying the machine's decisions ------------------------------------------
    def _apply(self, actions: Sequence[Action]) -> None:
        for action in actions:
            try:
                self._apply_one(action)
                if isinstance(action, Start):
                    self.storage_status(None)
            except StorageError as exc:
                self.storage_status(exc)
                # The recording cannot go on; drop our handle so the line keeps working
                # and the next call gets a fresh try.
                self.recording = None

    def _apply_one(self, action: Action) -> None:
        rec = self.recording
        if isinstance(action, Start):
            self._start(action)
            if self.announcer is not None and action.trigger is not Trigger.ROLLOVER:
                self.announcer.begin(action.trigger_frame, prompt=True)
            return
        self._announce_action(rec, action)
        if rec is None:
            return
        self._take_digits()
        self._flush(action.frame, final=not isinstance(action, Flash))
        if isinstance(action, Pause):
            rec.paused = True
            self._event(rec, "pause", action.frame)
        elif isinstance(action, Resume):
            rec.paused = False
            rec.cursor = max(rec.cursor, action.frame)
            self._event(rec, "resume", action.frame)
        elif isinstance(action, Discard):
            rec.discarded = True
            rec.writer.discard()
            self._event(rec, "discard", action.frame)
        elif isinstance(action, Flash):
            self._event(
                rec,
                "flash",
                action.onhook_frame,
                onhook_ms=round((action.offhook_frame - action.onhook_frame) * 1000 / self.rate),
            )
        elif isinstance(action, End):
            self._end(rec, action)

    def _start(self, action: Start) -> None:
        first = max(action.audio_from, self.ring.start_frame)
        rec_id = str(uuid.uuid4())
        rollover = action.trigger.value == "rollover" and self.last_call is not None
        call = self.last_call if rollover and self.last_call else self._call_info(action)
        writer = self.sink.open(
            RecordingStart(
                recording_id=rec_id,
                device_id=self.device_id,
                line=self.config.name,
                channel=self.config.channel,
                sample_rate=self.rate,
                trigger=action.trigger.value,
                started_utc=self.timeline.utc_at(first),
                start_frame=first,
                trigger_frame=action.trigger_frame,
                preroll_s=max(0, action.trigger_frame - first) / self.rate,
                continues=self.last_id if action.trigger.value == "rollover" else None,
                started_mono_ns=self.timeline.ns_at(first),
                # Known now; kept in the start record so a recording recovered after a
                # crash (no end record) still has them.
                caller_id=call.caller_id,
                direction=call.direction,
            )
        )
        guard = self.telephony.guard_frames if self.telephony else 0
        # Key presses heard in the pre-roll count too: they are in the audio.
        digit_seq = (
            self.analyser.first_digit_seq_ending_after(first - guard) if self.analyser else 0
        )
        self.recording = _Recording(
            writer=writer,
            first_frame=first,
            cursor=first,
            trigger_frame=action.trigger_frame,
            decided_frame=action.frame,
            call=call,
            digit_seq=digit_seq,
        )
        self.last_call = call
        self.recordings_started += 1
        self.last_id = rec_id
        log.info(
            "recording started line=%s id=%s trigger=%s preroll_s=%.2f",
            self.config.name,
            rec_id,
            action.trigger.value,
            max(0, action.trigger_frame - first) / self.rate,
        )

    def _call_info(self, action: Start) -> _CallInfo:
        """Caller ID heard before this off-hook; inbound when there was one."""
        info = _CallInfo()
        self._find_caller_id(info, action.trigger_frame)
        return info

    def _find_caller_id(self, info: _CallInfo, trigger_frame: int) -> None:
        """Fill in the caller ID heard before ``trigger_frame`` (or just after it: a serial
        unit reports once it has decoded), making the call inbound."""
        if self.analyser is None or self.telephony is None or info.caller_id is not None:
            return
        t = self.telephony
        window = t.caller_id_window_frames
        if self.last_end_frame is not None and self.last_end_frame <= trigger_frame:
            # A caller ID heard before the previous call ended belonged to that call.
            window = min(window, trigger_frame - self.last_end_frame)
        message = self.analyser.caller_id_before(
            trigger_frame, window_frames=window, after_frames=t.caller_id_after_frames
        )
        if message is not None:
            info.caller_id = caller_id_record(message)
            if info.direction == "unknown":
                info.direction = "inbound"

    def _take_digits(self) -> None:
        """Move the key presses heard since the last call into the recording, deciding
        which are masked; a call without caller ID whose first digit comes soon after
        off-hook was dialled from here (outbound)."""
        rec = self.recording
        if rec is None or self.analyser is None or self.telephony is None:
            return
        t = self.telephony
        for heard in self.analyser.digits_from(rec.digit_seq):
            rec.digit_seq = heard.seq + 1
            event = heard.event
            if event.start_frame < rec.trigger_frame:
                # In the pre-roll: not dialled on this call (DTMF CLIP, or the end of the
                # previous call), but in the audio, so masked all the same.
                if t.mask_dtmf:
                    self._mask(rec, event.start_frame, event.end_frame)
                continue
            if rec.paused or rec.discarded:
                continue  # consent withdrawn: nothing about this span is kept
            if (
                not rec.digits
                and rec.call.direction == "unknown"
                and event.start_frame - rec.trigger_frame <= t.outbound_window_frames
            ):
                rec.call.direction = "outbound"
            if t.mask_dtmf and len(rec.digits) >= t.mask_after_n:
                self._dial(rec, MASK_CHAR, event.start_frame)
                self._mask(rec, event.start_frame, event.end_frame)
            else:
                self._dial(rec, event.digit, event.start_frame)

    def _dial(self, rec: _Recording, digit: str, frame: int) -> None:
        """List a key press; journalled at once so a crash keeps it (see PROGRESS_EVENTS)."""
        rec.digits.append(digit)
        self._event(rec, "digit", frame, digit=digit, direction=rec.call.direction)

    def _mask(self, rec: _Recording, start: int, end: int) -> None:
        """Mask stream frames ``[start, end)`` (plus the guard) when they are written;
        journalled at once with the span as the manifest will list it."""
        rec.masked.append((start, end))
        self._event(rec, "mask", max(start, rec.first_frame), **self._span_ms(rec, start, end))

    def _span_ms(
        self, rec: _Recording, start: int, end: int, end_frame: int | None = None
    ) -> dict[str, int]:
        """A masked span with its guard, in whole ms since the recording's first frame,
        rounded outwards, cut to the recording (``end_frame``: where it ended, if known)."""
        guard = self.telephony.guard_frames if self.telephony else 0
        last = end + guard if end_frame is None else min(end + guard, end_frame)
        return {
            "start_ms": (max(start - guard, rec.first_frame) - rec.first_frame) * 1000 // self.rate,
            "end_ms": -((rec.first_frame - last) * 1000 // self.rate),
        }

    def _digit_at_end(self, rec: _Recording) -> None:
        """A key still held when the call ends is reported only after it: list it now (its
        audio was masked by the final flush)."""
        if self.analyser is None or self.telephony is None or rec.paused or rec.discarded:
            return
        digit = self.analyser.dtmf.active_digit
        settled = self.analyser.settled_frame
        if digit is None or settled is None or settled < rec.trigger_frame:
            return
        t = self.telephony
        masked = t.mask_dtmf and len(rec.digits) >= t.mask_after_n
        self._dial(rec, MASK_CHAR if masked else digit, settled)

    def _end(self, rec: _Recording, action: End) -> None:
        end_frame = max(action.frame, rec.cursor)
        self._find_caller_id(rec.call, rec.trigger_frame)  # one that came after the start
        self._digit_at_end(rec)
        self.last_end_frame = end_frame
        guard = self.telephony.guard_frames if self.telephony else 0
        rec.writer.close(
            RecordingEnd(
                reason=action.reason.value,
                ended_utc=self.timeline.utc_at(end_frame),
                end_frame=end_frame,
                duration_s=(end_frame - rec.first_frame) / self.rate,
                audio_frames=rec.audio_frames,
                ended_mono_ns=self.timeline.ns_at(end_frame),
                direction=rec.call.direction,
                caller_id=rec.call.caller_id,
                dialled_digits="".join(rec.digits),
                masked_spans=[
                    self._span_ms(rec, s, e, end_frame)
                    for s, e in rec.masked
                    if min(e + guard, end_frame) > max(s - guard, rec.first_frame)
                ],
            )
        )
        log.info(
            "recording ended line=%s id=%s reason=%s duration_s=%.2f audio_s=%.2f discarded=%s",
            self.config.name,
            rec.writer.recording_id,
            action.reason.value,
            (end_frame - rec.first_frame) / self.rate,
            rec.audio_frames / self.rate,
            rec.discarded,
        )
        self.recording = None

    def _flush(self, upto: int, *, final: bool = False) -> None:
        """Write the recording's audio from the ring up to stream frame ``upto``.

        With DTMF masking, audio is held back until the detector has settled it (a key
        press is reported only when it ends): writing stops a guard before the first frame
        a digit could still start at. ``final`` (pause, end) writes up to ``upto`` anyway,
        masking a tone still under way; so does a hold-back about to outgrow the ring.
        """
        rec = self.recording
        if rec is None:
            return
        upto = min(upto, self.ring.end_frame)
        if rec.paused or rec.discarded:
            rec.cursor = max(rec.cursor, upto)
            return
        t = self.telephony
        if t is not None and t.mask_dtmf and self.analyser is not None:
            upto = self._masking_limit(rec, t, upto, final=final)
        if upto <= rec.cursor:
            return
        head, tail = self.ring.read(rec.cursor, upto)
        if t is not None and rec.masked:
            spans = [(s, e) for s, e in rec.masked if e + t.guard_frames > rec.cursor]
            if spans:
                head = mask_spans(head, spans, t.guard_frames, t.mask_mode, offset=rec.cursor)
                if tail.size:
                    tail = mask_spans(
                        tail, spans, t.guard_frames, t.mask_mode, offset=rec.cursor + head.size
                    )
        rec.writer.write(head)
        if tail.size:
            rec.writer.write(tail)
        rec.audio_frames += upto - rec.cursor
        rec.cursor = upto

    def _masking_limit(self, rec: _Recording, t: Telephony, upto: int, *, final: bool) -> int:
        """How far audio may be written now without risking an unmasked digit."""
        assert self.analyser is not None
        if final:
            self.analyser.catch_up()
            self._take_digits()
        settled = self.analyser.settled_frame
        if settled is None:  # nothing analysed yet
            return upto if final else rec.cursor
        safe = settled - t.guard_frames
        if safe >= upto:
            return upto
        # The ring must still hold everything not yet written, with a period to spare.
        outgrowing = upto - rec.cursor > self.ring.capacity - self.timing.debounce - self.rate
        if not (final or outgrowing):
            return max(rec.cursor, safe)
        if self.analyser.tone_pending and len(rec.digits) >= t.mask_after_n:
            # A key press under way that would be masked: mask from its start to here.
            self._mask(rec, settled, upto)
        return upto

    def _announce_action(self, rec: _Recording | None, action: Action) -> None:
        """Report the announcements due before ``action``, then start or stop them (also
        when storage lost the recording: the call goes on)."""
        announcer = self.announcer
        if announcer is None:
            return
        stops = isinstance(action, Pause | Discard) or (
            isinstance(action, End) and action.reason is not EndReason.ROLLOVER
        )
        if rec is not None:
            if stops and action.frame == rec.decided_frame:
                # Opted out before the call was answered: nothing is recorded, nothing told.
                announcer.stop(rec.trigger_frame)
            self._announce_due(rec, action.frame)
        if stops:
            announcer.stop(action.frame)
        elif isinstance(action, Resume):
            announcer.begin(action.frame, prompt=False)

    def _announce_due(self, rec: _Recording, upto: int) -> None:
        """An event for every announcement starting before ``upto`` (consent evidence:
        ``played`` false, with the reason, when the playback is faulted)."""
        if self.announcer is None:
            return
        for item in self.announcer.due(upto):
            self._event(rec, "announce", item.frame, **self._announce_data(rec, item))

    def _announce_data(self, rec: _Recording, item: Announcement) -> dict[str, object]:
        n = rec.call.announced.get(item.kind, 0) + 1
        rec.call.announced[item.kind] = n
        program = self.announcer.program if self.announcer else None
        data: dict[str, object] = {"kind": item.kind}
        if item.kind == "tone" and program is not None and program.tone is not None:
            data |= {"hz": program.tone.hz, "ms": program.tone.ms}
        elif program is not None and program.prompt is not None:
            prompt = program.prompt
            data |= {"file": prompt.name, "sha256": prompt.sha256}
            data["ms"] = round(prompt.frames * 1000 / self.rate)
        fault = self.announce_fault()
        data |= {"n": n, "played": fault is None}
        if fault is not None:
            data["error"] = fault
        return data

    def _event(self, rec: _Recording, kind: str, frame: int, /, **data: object) -> None:
        # Audio may be held back (masking): count the frames up to ``frame`` still to come.
        ahead = 0 if rec.paused or rec.discarded else max(0, frame - rec.cursor)
        rec.writer.event(
            RecordingEvent(
                type=kind,
                at_s=round((frame - rec.first_frame) / self.rate, 4),
                audio_s=round((rec.audio_frames + ahead) / self.rate, 4),
                data=dict(data),
            )
        )

    def _note_gap(self, at_frame: int, frames: int) -> None:
        rec = self.recording
        if rec is not None:
            self._flush(at_frame)
            self._event(rec, "gap", at_frame, frames=frames, ms=round(frames * 1000 / self.rate))


def call_timing(config: LinetapConfig) -> CallTiming:
    """``[call]`` in frames: what the recorder (and ``linetap hooktest``) decide by."""
    call = config.call
    return CallTiming.from_seconds(
        config.audio.sample_rate,
        preroll_s=call.preroll_s,
        debounce_ms=call.debounce_ms,
        flash_max_ms=call.flash_max_ms,
        max_call_s=call.max_call_s,
        opt_out_mode=call.opt_out_mode,
    )


def telephony_settings(config: LinetapConfig) -> Telephony:
    t, rate = config.telephony, config.audio.sample_rate
    return Telephony(
        mask_dtmf=t.mask_dtmf,
        mask_after_n=t.mask_after_n,
        mask_mode=t.mask_mode,
        guard_frames=round(t.mask_guard_ms * rate / 1000),
        caller_id_window_frames=round(t.caller_id_window_s * rate),
        # A serial unit prints the caller ID once it has decoded it, so it may arrive a
        # little after an immediate answer.
        caller_id_after_frames=round(CALLER_ID_LATE_S * rate),
        outbound_window_frames=round(t.outbound_window_s * rate),
    )
