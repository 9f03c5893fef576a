"""Where recordings go: the sink interface and the development WAV sink.

The recorder hands each recording to a :class:`RecordingSink`; the sealing sink
(encrypted journal + outbox) implements the same interface. A recording is a stream of
int16 mono frames plus events, closed with an end record or discarded.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import soundfile

from firmware.errors import StorageError
from sealedrec.durable import replace_file_via


@dataclass(frozen=True, slots=True)
class RecordingStart:
    recording_id: str
    device_id: str
    line: str
    channel: int
    sample_rate: int
    trigger: str
    started_utc: str  # ISO 8601 UTC of the first frame (pre-roll included)
    start_frame: int  # first frame on the capture stream's timeline
    trigger_frame: int  # the edge that caused the recording
    preroll_s: float  # audio before the trigger actually kept
    continues: str | None = None  # the recording this one continues (rollover)
    started_mono_ns: int = 0  # first frame on the capture clock (CLOCK_MONOTONIC on a device)
    caller_id: dict[str, Any] | None = None  # as heard before the off-hook (see RecordingEnd)
    direction: str = "unknown"  # as known at the start: inbound or unknown


@dataclass(frozen=True, slots=True)
class RecordingEnd:
    reason: str
    ended_utc: str
    end_frame: int
    duration_s: float  # stream time from first frame to end, cut spans included
    audio_frames: int  # frames actually written (cut spans excluded)
    ended_mono_ns: int = 0
    direction: str = "unknown"  # inbound (caller ID before off-hook) / outbound / unknown
    caller_id: dict[str, Any] | None = None  # number, name, time, absence_*, source, format
    dialled_digits: str = ""  # key presses after off-hook, masked ones as "*"
    # Masked audio, guard included, in whole ms on the call's timeline (like events' at_ms),
    # rounded outwards: {"start_ms", "end_ms"}.
    masked_spans: list[dict[str, int]] = field(default_factory=list)


# Progress kept only so a recording cut short by a crash (no end record) still carries
# what its end record would have: "digit" (a key press as listed in dialled_digits, with
# the call's direction), "mask" (a masked span as listed in masked_spans). They are not
# reported as events: the end record's dialled_digits and masked_spans say it all.
PROGRESS_EVENTS = frozenset({"digit", "mask"})


@dataclass(slots=True)
class RecordingEvent:
    # pause / resume / discard / flash / gap / announce (a recording announcement started:
    # kind tone {hz, ms} or prompt {file, sha256, ms}, n, played, error when not played);
    # digit / mask (PROGRESS_EVENTS)
    type: str
    at_s: float  # stream seconds since the recording's first frame
    audio_s: float  # position in the recorded audio
    data: dict[str, Any] = field(default_factory=dict)


class RecordingWriter(Protocol):
    @property
    def recording_id(self) -> str: ...

    def write(self, samples: npt.NDArray[np.int16]) -> None: ...

    def event(self, event: RecordingEvent) -> None: ...

    def discard(self) -> None:
        """Drop the audio written so far and any to come; metadata is still kept."""
        ...

    def close(self, end: RecordingEnd) -> None: ...


class RecordingSink(Protocol):
    def open(self, start: RecordingStart) -> RecordingWriter: ...

    def poll(self) -> None:
        """A slice of background work (sealing, retries after a full disk), once a period."""
        ...

    def close(self) -> None:
        """The recorder is stopping; every recording has been closed."""
        ...


def write_json_atomic(path: Path, payload: Any, *, indent: int | None = 2) -> None:
    """Replace ``path`` with ``payload`` as JSON, durably: temp file, fsync, rename, fsync
    of the directory. A crash leaves the old file or the new one, never half of one. The
    file's mode follows the umask (the daemons' ``UMask=0077``)."""
    text = json.dumps(payload, indent=indent, sort_keys=True) + ("\n" if indent is not None else "")
    replace_file_via(
        path,
        text.encode("utf-8"),
        tmp=path.with_name(path.name + ".tmp"),
        mode=None,
        create_mode=0o666,
    )


class WavWriter:
    """``{id}.wav.partial`` while recording, renamed to ``{id}.wav`` beside ``{id}.json``."""

    def __init__(self, directory: Path, start: RecordingStart) -> None:
        self._dir = directory
        self._start = start
        self._events: list[RecordingEvent] = []
        self._discarded = False
        self._partial = directory / f"{start.recording_id}.wav.partial"
        try:
            self._file: soundfile.SoundFile | None = soundfile.SoundFile(
                self._partial,
                "w",
                samplerate=start.sample_rate,
                channels=1,
                subtype="PCM_16",
                format="WAV",
            )
        except (OSError, RuntimeError) as exc:  # libsndfile reports errors as RuntimeError
            raise StorageError(
                f"storage.out_dir {directory}: cannot create {self._partial.name} ({exc})"
            ) from exc

    @property
    def recording_id(self) -> str:
        return self._start.recording_id

    def write(self, samples: npt.NDArray[np.int16]) -> None:
        if self._file is None or samples.size == 0:
            return
        try:
            self._file.write(samples)
        except (OSError, RuntimeError) as exc:
            raise StorageError(f"storage.out_dir {self._dir}: write failed ({exc})") from exc

    def event(self, event: RecordingEvent) -> None:
        if event.type not in PROGRESS_EVENTS:  # plain files are written whole at the end
            self._events.append(event)

    def discard(self) -> None:
        self._discarded = True
        if self._file is not None:
            self._file.close()
            self._file = None
        self._partial.unlink(missing_ok=True)

    def close(self, end: RecordingEnd) -> None:
        audio: str | None = None
        if self._file is not None:
            self._file.close()
            self._file = None
            final = self._dir / f"{self.recording_id}.wav"
            os.replace(self._partial, final)
            audio = final.name
        meta: dict[str, Any] = {
            **asdict(self._start),
            **asdict(end),
            "discarded": self._discarded,
            "audio_file": audio,
            "events": [asdict(e) for e in self._events],
        }
        try:
            write_json_atomic(self._dir / f"{self.recording_id}.json", meta)
        except OSError as exc:
            raise StorageError(
                f"storage.out_dir {self._dir}: cannot write metadata ({exc})"
            ) from exc


class WavSink:
    """Development sink: plain WAV + JSON per recording (never on a deployed device)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def poll(self) -> None:
        """Nothing to retry: a failed WAV write is reported at once."""

    def close(self) -> None:
        """Nothing held."""

    def open(self, start: RecordingStart) -> WavWriter:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"storage.out_dir {self.directory}: cannot create ({exc})") from exc
        return WavWriter(self.directory, start)
