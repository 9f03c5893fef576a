"""The recording announcement, end to end through real alsa-lib.

The playback device is alsa-lib's ``file`` PCM over the ``null`` slave: everything the
recorder plays is written to a raw file (see tests/test_audio_capture.py's docstring for
why ALSA_CONFIG_PATH points alsa-lib at it). ``linetap replay`` (``run_replay``) runs the
real recorder over a capture file with an events script; the played file is then
measured against the call's own timeline (the trigger frame in the recording's
metadata): tone frequency by FFT, each burst's length, the period, the prompt's samples.
After an open, played sample ``i`` is stream frame ``origin_frame + i`` (logged by
``firmware.announce_output`` at open).

Run with ``-s`` to see the measured errors.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import alsaaudio
import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from buffers.outbox import Outbox
from drivers.audio.playback import AlsaPlayback
from drivers.gpio.factory import make_pin_factory
from firmware.app import (
    announce_playback,
    announce_prompts,
    capture_source,
    pin_script,
    run_replay,
    write_status,
)
from firmware.config import LinetapConfig, load_config
from firmware.leds import LedPattern
from firmware.recorder import Recorder
from firmware.runstate import read_recorder_status
from firmware.sinks import WavSink
from tests.helpers import START_UTC, config_text, espeak_word, write_capture
from uploader.telemetry import UploadStats, status_document

PLAY = "linetap_test_announce"
TONE_HZ = 1400
OFFHOOK_S = 3.2371  # not on a period boundary
CALL_S = 40.0


# ---- the playback device and the config ----------------------------------------------


def playback_pcm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The ALSA PCM ``PLAY``: a ``file`` PCM over ``null``; returns the file it writes."""
    played = tmp_path / "played.raw"
    conf = tmp_path / "announce-test.conf"
    conf.write_text(
        f'pcm.{PLAY} {{\n    type file\n    slave {{ pcm {{ type null }} }}\n    file "{played}"\n'
        '    format "raw"\n}\n'
    )
    system = next(
        (p for p in ("/usr/share/alsa/alsa.conf", "/usr/local/share/alsa/alsa.conf")),
        None,
    )
    paths = [system] if system and Path(system).is_file() else []
    monkeypatch.setenv("ALSA_CONFIG_PATH", ":".join([*paths, str(conf)]))
    return played


def announce_config(
    out: Path,
    *,
    modes: dict[str, str],
    rate: int = 8000,
    device: str = PLAY,
    line_keys: dict[str, str] | None = None,
    announce_keys: str = "",
    **kw: Any,
) -> str:
    """``config_text`` (two lines, sim GPIO) with an ``[announce]`` section and
    ``announce = MODE`` (plus ``line_keys[name]``) in the named lines."""
    text = config_text(out, rate=rate, **kw)
    head, sep, tail = text.partition("\n[[lines]]")
    for name, mode in modes.items():
        key = f'name = "{name}"\n'
        extra = (line_keys or {}).get(name, "")
        tail = tail.replace(key, f'{key}announce = "{mode}"\n{extra}\n', 1)
    return f'{head}\n[announce]\ndevice = "{device}"\n{announce_keys}\n{sep}{tail}'


def prompt_wav(path: Path, rate: int) -> npt.NDArray[np.int16]:
    """A spoken prompt (espeak-ng, resampled by sox), 16-bit mono WAV at ``rate``."""
    samples = espeak_word("this call is recorded", rate)
    soundfile.write(path, samples, rate, subtype="PCM_16")
    return samples


# ---- running and measuring -------------------------------------------------------------


class Played:
    """What one replay played and recorded."""

    def __init__(self, raw: Path, channels: int, origin: int, metas: list[dict[str, Any]]):
        self.samples = np.fromfile(raw, dtype="<i2").reshape(-1, channels)
        self.origin = origin  # stream frame of played sample 0
        self.metas = metas

    def at(self, frame: int) -> int:
        """The played sample index of stream frame ``frame``."""
        return frame - self.origin


def replay(
    tmp_path: Path,
    conf_text: str,
    events: str,
    *,
    rate: int,
    seconds: float,
    caplog: pytest.LogCaptureFixture,
    fmt: str = "wav",
) -> tuple[Played, npt.NDArray[np.int16]]:
    out = tmp_path / "out"
    conf = tmp_path / "linetap.toml"
    conf.write_text(conf_text)
    cfg = load_config(conf)
    audio = tmp_path / "line.wav"
    capture = write_capture(audio, seconds, cfg.audio.channels, rate)
    script = tmp_path / "events.txt"
    script.write_text(events)
    with caplog.at_level(logging.INFO, logger="firmware.announce_output"):
        result = run_replay(
            cfg,
            audio=audio,
            events=script,
            out=out,
            start_utc=datetime.fromisoformat(START_UTC),
            fmt=fmt,
        )
    assert not result.unplayed_events
    opened = [m for r in caplog.records if (m := re.search(r"origin_frame=(-?\d+)", r.message))]
    assert len(opened) == 1, caplog.text  # one open, never a fault
    metas = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    raw = tmp_path / "played.raw"
    return Played(raw, cfg.audio.channels, int(opened[0][1]), metas), capture


def bursts(channel: npt.NDArray[np.int16], rate: int) -> list[tuple[int, int]]:
    """Each run of sound as (first, end) sample index; runs are apart by > 10 ms of
    digital silence (a sine's single zero samples do not split a tone)."""
    sounding = np.flatnonzero(channel)
    if sounding.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(sounding) > rate // 100)
    firsts = sounding[np.r_[0, breaks + 1]]
    ends = sounding[np.r_[breaks, sounding.size - 1]] + 1
    return list(zip(firsts.tolist(), ends.tolist(), strict=True))


def frequency(burst: npt.NDArray[np.int16], rate: int) -> float:
    """The strongest frequency of ``burst``: Hann window, FFT zero-padded to 2^21 points
    (0.004 Hz bins at 8 kHz), parabolic interpolation of the peak."""
    n = 1 << 21
    spectrum = np.abs(np.fft.rfft(burst.astype(np.float64) * np.hanning(burst.size), n))
    k = int(np.argmax(spectrum))
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / n)


def announce_events(meta: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in meta["events"] if e["type"] == "announce"]


def call_events(seconds: float = CALL_S, offhook_s: float = OFFHOOK_S) -> str:
    return f"{offhook_s} line1 offhook\n{offhook_s + seconds} line1 onhook\n"


# ---- the tone --------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000])
def test_tone_frequency_length_and_period_on_the_calls_timeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, rate: int
) -> None:
    playback_pcm(tmp_path, monkeypatch)
    conf = announce_config(tmp_path / "out", modes={"line1": "tone"}, rate=rate)
    played, capture = replay(tmp_path, conf, call_events(), rate=rate, seconds=50, caplog=caplog)
    [meta] = played.metas
    trigger = meta["trigger_frame"]
    assert abs(trigger - OFFHOOK_S * rate) <= 1  # the off-hook edge, not the pre-roll
    tone_frames, period = round(0.5 * rate), 15 * rate
    found = bursts(played.samples[:, 0], rate)
    expected = [trigger + k * period for k in range(3)]  # 0, 15 and 30 s into a 40 s call
    assert len(found) == len(expected), found
    onsets = [played.origin + first for first, _ in found]
    onset_err_ms = [(got - want) * 1000 / rate for got, want in zip(onsets, expected, strict=True)]
    length_err_ms = [((end - first) - tone_frames) * 1000 / rate for first, end in found]
    periods = np.diff(onsets)
    hz = [frequency(played.samples[first:end, 0], rate) for first, end in found]
    print(
        f"\n{rate} Hz: frequency error {max(abs(h - TONE_HZ) for h in hz):.1e} Hz,"
        f" onset error vs trigger {max(map(abs, onset_err_ms)):.3f} ms,"
        f" length error {max(map(abs, length_err_ms)):.3f} ms,"
        f" period error {max(abs(p - period) for p in periods) * 1000 / rate:.3f} ms"
    )
    assert all(abs(h - TONE_HZ) < 0.1 for h in hz), hz  # measured to ~0.01 Hz
    assert all(abs(e) <= 1.0 for e in onset_err_ms), onset_err_ms
    assert all(abs(e) <= 1.0 for e in length_err_ms), length_err_ms
    # Every burst is the same samples, measured the same way: the period comes out exact.
    assert list(periods) == [period] * (len(expected) - 1)
    # Nothing after the recording ended; nothing at all on the line that does not announce.
    assert played.origin + found[-1][1] <= meta["end_frame"]
    assert not played.samples[:, 1].any()
    # The manifest's events say exactly that, and the recording itself is untouched.
    events = announce_events(meta)
    assert [e["data"] for e in events] == [
        {"kind": "tone", "hz": TONE_HZ, "ms": 500, "n": n, "played": True} for n in (1, 2, 3)
    ]
    for event, onset in zip(events, onsets, strict=True):
        assert abs(meta["start_frame"] + event["at_s"] * rate - onset) * 1000 / rate <= 1.0
    audio, _ = soundfile.read(tmp_path / "out" / meta["audio_file"], dtype="int16")
    np.testing.assert_array_equal(audio, capture[meta["start_frame"] : meta["end_frame"], 0])


@pytest.mark.parametrize("rate", [8000, 16000])
def test_prompt_plays_its_samples_then_the_tones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, rate: int
) -> None:
    playback_pcm(tmp_path, monkeypatch)
    wav = tmp_path / "prompt.wav"
    prompt = prompt_wav(wav, rate)
    # line1 announces on playback channel 1 (its capture channel is 0).
    conf = announce_config(
        tmp_path / "out",
        modes={"line1": "file+tone"},
        rate=rate,
        line_keys={"line1": f'announce_file = "{wav}"\nannounce_channel = 1'},
    )
    played, _ = replay(tmp_path, conf, call_events(20.0), rate=rate, seconds=30, caplog=caplog)
    [meta] = played.metas
    trigger = meta["trigger_frame"]
    start = played.at(trigger)
    out = played.samples[:, 1]
    assert not out[:start].any()
    np.testing.assert_array_equal(out[start : start + prompt.size], prompt)
    assert not played.samples[:, 0].any()
    after = bursts(out[start + prompt.size :], rate)
    first_tone = trigger + prompt.size
    onsets = [first_tone + first for first, _ in after]
    # First tone right after the prompt, the next a period later (1 sample: sin(0) = 0).
    assert [o - t for o, t in zip(onsets, (first_tone, first_tone + 15 * rate), strict=True)] == [
        1,
        1,
    ]
    events = announce_events(meta)
    ms = round(prompt.size * 1000 / rate)
    sha = hashlib.sha256(wav.read_bytes()).hexdigest()
    assert [e["data"] for e in events] == [
        {"kind": "prompt", "file": "prompt.wav", "sha256": sha, "ms": ms, "n": 1, "played": True},
        {"kind": "tone", "hz": TONE_HZ, "ms": 500, "n": 1, "played": True},
        {"kind": "tone", "hz": TONE_HZ, "ms": 500, "n": 2, "played": True},
    ]
    assert [round(meta["start_frame"] + e["at_s"] * rate) for e in events] == [
        trigger,
        first_tone,
        first_tone + 15 * rate,
    ]


def test_sealed_manifest_lists_what_was_played(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    office: tuple[Path, str],
) -> None:
    rate = 8000
    playback_pcm(tmp_path, monkeypatch)
    wav = tmp_path / "prompt.wav"
    prompt = prompt_wav(wav, rate)
    conf = announce_config(
        tmp_path / "out",
        modes={"line1": "file+tone"},
        line_keys={"line1": f'announce_file = "{wav}"'},
        storage_format="sealed",
        recipients=(office[1],),
    )
    offhook_s = OFFHOOK_S + 5  # a whole pre-roll before it: first frame = trigger - 5 s
    played, _ = replay(
        tmp_path,
        conf,
        call_events(offhook_s=offhook_s),
        rate=rate,
        seconds=55,
        caplog=caplog,
        fmt="sealed",
    )
    [entry] = sorted((tmp_path / "out" / "outbox" / "sealed").iterdir())
    manifest = json.loads((entry / "manifest.json").read_text())
    events = [e for e in manifest["events"] if e["type"] == "announce"]
    # What was played, measured: the prompt, then each tone burst.
    trigger = round(offhook_s * rate)
    assert manifest["preroll_ms"] == 5000
    first_frame = trigger - 5 * rate
    channel = played.samples[:, 0]
    prompt_at = played.at(trigger)
    np.testing.assert_array_equal(channel[prompt_at : prompt_at + prompt.size], prompt)
    tones = bursts(channel[prompt_at + prompt.size :], rate)
    measured = [("prompt", trigger)] + [
        ("tone", played.origin + prompt_at + prompt.size + first) for first, _ in tones
    ]
    assert [e["kind"] for e in events] == [kind for kind, _ in measured]
    assert len(events) == 4  # the prompt; tones right after it, 15 and 30 s later
    for event, (_, frame) in zip(events, measured, strict=True):
        assert abs(event["at_ms"] - (frame - first_frame) * 1000 / rate) <= 1.0, event
        assert event["played"] is True
    assert events[0]["sha256"] == hashlib.sha256(wav.read_bytes()).hexdigest()
    assert [e["n"] for e in events] == [1, 1, 2, 3]


def test_opt_out_cuts_the_tone_at_once_and_resume_starts_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rate = 8000
    playback_pcm(tmp_path, monkeypatch)
    conf = announce_config(tmp_path / "out", modes={"line1": "tone", "line2": "tone"})
    events = (
        "2 line1 offhook\n2.2 line1 optout-on\n6 line1 optout-off\n14 line1 onhook\n"
        # line2's caller refused before answering: nothing recorded, nothing announced.
        "1 line2 optout-on\n3 line2 offhook\n9 line2 onhook\n"
    )
    played, _ = replay(tmp_path, conf, events, rate=rate, seconds=20, caplog=caplog)
    debounce = 30 * rate // 1000
    line1 = next(m for m in played.metas if m["line"] == "line1")
    pause, resume = round(2.2 * rate) + debounce, 6 * rate + debounce
    found = bursts(played.samples[:, 0], rate)
    assert [(played.origin + a, played.origin + b) for a, b in found] == [
        (2 * rate + 1, pause),  # cut mid-tone, at the pause
        (resume + 1, resume + rate // 2),  # a whole tone at the resume
    ]
    assert [(e["data"]["n"], e["at_s"]) for e in announce_events(line1)] == [
        (1, (2 * rate - line1["start_frame"]) / rate),
        (2, (resume - line1["start_frame"]) / rate),
    ]
    line2 = next(m for m in played.metas if m["line"] == "line2")
    assert not played.samples[:, 1].any()
    assert announce_events(line2) == []


@pytest.mark.parametrize("opt_out_mode", ["pause", "discard"])
def test_opt_out_cuts_the_prompt_and_a_resume_brings_back_the_tones_only(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    opt_out_mode: str,
) -> None:
    rate = 8000
    playback_pcm(tmp_path, monkeypatch)
    wav = tmp_path / "prompt.wav"
    soundfile.write(wav, np.full(rate, 1000, dtype=np.int16), rate, subtype="PCM_16")  # 1 s
    conf = announce_config(
        tmp_path / "out",
        modes={"line1": "file+tone"},
        line_keys={"line1": f'announce_file = "{wav}"'},
        opt_out_mode=opt_out_mode,
    )
    events = "2 line1 offhook\n2.5 line1 optout-on\n6 line1 optout-off\n14 line1 onhook\n"
    played, _ = replay(tmp_path, conf, events, rate=rate, seconds=20, caplog=caplog)
    [meta] = played.metas
    debounce = 30 * rate // 1000
    pause, resume = round(2.5 * rate) + debounce, 6 * rate + debounce
    found = [(played.origin + a, played.origin + b) for a, b in bursts(played.samples[:, 0], rate)]
    kinds = [(e["data"]["kind"], e["data"]["n"], e["at_s"]) for e in announce_events(meta)]
    prompt = ("prompt", 1, (2 * rate - meta["start_frame"]) / rate)
    assert found[0] == (2 * rate, pause)  # the prompt, cut at the opt-out
    if opt_out_mode == "discard":  # nothing is recorded any more: nothing is announced
        assert (found, kinds) == ([found[0]], [prompt])
    else:
        assert found[1:] == [(resume + 1, resume + rate // 2)]
        assert kinds == [prompt, ("tone", 1, (resume - meta["start_frame"]) / rate)]


# ---- a missing device --------------------------------------------------------------------


def record_file(cfg: LinetapConfig, look: Callable[[Recorder], None]) -> None:
    """The Recorder wired as ``run_replay`` wires it (a fast file capture, sim pins, a WAV
    sink, the announcement's playback and prompts); ``look`` sees it every period."""
    stop = threading.Event()
    capture = capture_source(cfg.audio, stop=stop)
    pins = make_pin_factory("sim", script=pin_script(cfg))
    recorder: Recorder | None = None

    def tick() -> None:
        if recorder is not None:
            look(recorder)

    recorder = Recorder(
        cfg,
        capture,
        pins,
        WavSink(cfg.storage.wav_dir),
        stop=stop,
        clock=time.monotonic_ns,
        wall_offset_ns=0,
        device_id=cfg.device_id,
        on_tick=tick,
        playback=announce_playback(cfg),
        prompts=announce_prompts(cfg),
    )
    try:
        recorder.run()
    finally:
        capture.close()
        pins.close()


def test_missing_device_is_a_fault_and_the_call_is_recorded_in_full(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Over a capture file, once without announcement and once announcing to a playback
    PCM name alsa-lib does not know."""
    rate = 8000
    audio = tmp_path / "line.wav"
    capture = write_capture(audio, 30, 2, rate)
    script = tmp_path / "events.txt"
    script.write_text("4 line1 offhook\n24 line1 onhook\n")
    source: dict[str, Any] = {
        "audio_file": audio,
        "extra_audio": "file_realtime = false",
        "extra_gpio": f'script = "{script}"',
    }
    seen: dict[str, Any] = {}

    def look(recorder: Recorder) -> None:
        line = recorder.lines[0]
        mid_call = line.recording is not None and line.ring.end_frame > 10 * rate
        if recorder.announce is not None and mid_call and "status" not in seen:
            seen["status"] = recorder.status()
            seen["leds"] = (list(recorder.leds.patterns), recorder.leds.status)
            write_status(recorder.config, recorder)
            status_file = recorder.config.storage.status_file
            seen["telemetry"] = status_document(
                Outbox(tmp_path / "outbox"),
                "test-device",
                lambda: UploadStats(False, None, 0, 0, 0, 0, 0, None),
                lambda: read_recorder_status(status_file),
            )

    runs: dict[str, Path] = {}
    for name, device in (("plain", None), ("missing", "linetap_no_such_pcm")):
        out = tmp_path / name
        conf = tmp_path / f"{name}.toml"
        conf.write_text(
            config_text(out, **source)
            if device is None
            else announce_config(out, modes={"line1": "tone"}, device=device, **source)
        )
        with caplog.at_level(logging.INFO):
            record_file(load_config(conf), look)
        runs[name] = out
    metas = {name: json.loads(next(out.glob("*.json")).read_text()) for name, out in runs.items()}
    plain, missing = metas["plain"], metas["missing"]
    # The call is recorded exactly as without an announcement.
    for key in ("start_frame", "trigger_frame", "end_frame", "audio_frames", "reason"):
        assert missing[key] == plain[key], key
    got, _ = soundfile.read(runs["missing"] / missing["audio_file"], dtype="int16")
    want, _ = soundfile.read(runs["plain"] / plain["audio_file"], dtype="int16")
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, capture[plain["start_frame"] : plain["end_frame"], 0])
    # The manifest says the caller was not told, and why.
    fault = seen["status"]["faults"]["announce"]
    assert fault.startswith("announce.device 'linetap_no_such_pcm': cannot open playback device")
    assert "aplay -L" in fault
    events = announce_events(missing)
    assert [e["data"] for e in events] == [
        {"kind": "tone", "hz": TONE_HZ, "ms": 500, "n": n, "played": False, "error": fault}
        for n in (1, 2)
    ]
    # A fault: LEDs blink fast, the status file and the telemetry carry it, logged once.
    assert seen["leds"] == ([LedPattern.FAST_BLINK, LedPattern.FAST_BLINK], LedPattern.FAST_BLINK)
    assert seen["status"]["lines"][0]["announce"] is None  # nothing is played
    assert seen["telemetry"]["recorder"]["faults"]["announce"] == fault
    faults_logged = [r for r in caplog.records if r.message.startswith("announce fault:")]
    assert len(faults_logged) == 1


# ---- the driver: underruns and a full buffer ------------------------------------------


class ScriptedPlayback:
    """Wraps a real pyalsaaudio playback PCM; ``script`` maps write numbers to what the
    card answers instead: "underrun" (-EPIPE, nothing written) or "full:N" (N written)."""

    def __init__(self, pcm: Any, script: dict[int, str]) -> None:
        self.pcm = pcm
        self.script = script
        self.writes = 0

    def write(self, data: bytes) -> int:
        action = self.script.get(self.writes, "")
        self.writes += 1
        if action == "underrun":
            return -errno.EPIPE
        if action.startswith("full:"):
            frames = int(action.split(":")[1])
            return int(self.pcm.write(data[: frames * 4]))  # 2 channels x 2 bytes
        return int(self.pcm.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pcm, name)


def test_underrun_is_recovered_with_the_prefill_and_a_full_buffer_drops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    played = playback_pcm(tmp_path, monkeypatch)
    # writes: 0 prefill, 1 block A, 2 block B -> underrun, 3 prefill, 4 block B, 5 C (full)
    script = {2: "underrun", 5: "full:50"}

    def opener(**kwargs: Any) -> ScriptedPlayback:
        return ScriptedPlayback(alsaaudio.PCM(**kwargs), script)

    playback = AlsaPlayback(
        device=PLAY,
        sample_rate=8000,
        channels=2,
        period_frames=160,
        periods=8,
        prefill_frames=320,
        pcm_opener=opener,
    )
    blocks = [np.full((160, 2), v, dtype=np.int16) for v in (1, 2, 3)]
    playback.open()
    for block in blocks:
        playback.write(block)
    playback.close()
    stats = playback.stats
    assert (stats.underruns, stats.dropped_frames, stats.frames) == (
        1,
        110,
        320 + 160 + 320 + 160 + 50,
    )
    got = np.fromfile(played, dtype="<i2").reshape(-1, 2)[:, 0]
    expected = np.concatenate(
        [np.zeros(320), np.full(160, 1), np.zeros(320), np.full(160, 2), np.full(50, 3)]
    )
    np.testing.assert_array_equal(got, expected)


def test_wrong_channel_count_is_refused_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    playback_pcm(tmp_path, monkeypatch)
    playback = AlsaPlayback(
        device=PLAY, sample_rate=8000, channels=2, period_frames=160, periods=8, prefill_frames=0
    )
    playback.open()
    with pytest.raises(ValueError, match=r"a playback block is \(frames, 2\)"):
        playback.write(np.zeros((160, 1), dtype=np.int16))
    playback.close()
