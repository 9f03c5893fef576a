"""`linetap record` as systemd runs it: sd_notify READY/WATCHDOG/STOPPING, SIGTERM, faults."""

from __future__ import annotations

import itertools
import json
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import alsaaudio
import pytest

from buffers.outbox import Outbox
from drivers.audio.alsa import AlsaCapture
from drivers.audio.formats import SampleFormat
from drivers.gpio.sim import SimPinFactory
from firmware.config import load_config
from firmware.recorder import NS_PER_S, Recorder, StorageHealth
from firmware.retention_thread import RetentionThread, apply_retention
from firmware.sinks import WavSink
from tests.helpers import (
    RATE,
    config_text,
    reaped,
    start_recorder,
    stop_with_sigterm,
    write_capture,
)


def collect(sock: socket.socket, until: str, timeout: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            break
        if until in got:
            break
    return got


@pytest.fixture
def notify_socket(tmp_path: Path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield path, sock
    sock.close()


def test_sigterm_finishes_the_call_in_progress(tmp_path: Path, linetap_bin: Path, notify_socket):
    path, sock = notify_socket
    out = tmp_path / "out"
    audio = tmp_path / "line.wav"
    data = write_capture(audio, 60, 1)
    (tmp_path / "events").write_text("0.5 line1 offhook\n")
    conf = tmp_path / "linetap.toml"
    conf.write_text(
        config_text(
            out,
            lines=1,
            preroll_s=0.2,
            audio_file=audio,
            extra_audio="file_realtime = true",
            extra_gpio=f'script = "{tmp_path / "events"}"',
        )
    )
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}
    with reaped(start_recorder(linetap_bin, conf, env)) as proc:
        messages = collect(sock, "READY=1", 20)
        assert "READY=1" in messages, proc.communicate()[1] if proc.poll() is not None else messages
        t_ready = time.monotonic()
        messages += collect(sock, "never", 2.0)
        assert messages.count("WATCHDOG=1") >= 5  # pinged every 100 ms while running
        status = json.loads((tmp_path / "run" / "recorder.json").read_text())
        levels = status["lines"][0].pop("levels")
        assert status["lines"] == [{"name": "line1", "state": "recording", "led": "solid"}]
        # The last second of the line, measured on the live stream (telemetry, tools).
        assert levels["seconds"] == 1.0 and -30 < levels["rms_dbfs"] < levels["peak_dbfs"] < 0
        assert status["faults"] == {"audio": None, "storage": None}
        stderr = stop_with_sigterm(proc)
        elapsed = time.monotonic() - t_ready
    assert proc.returncode == 0, stderr
    messages += collect(sock, "STOPPING=1", 1)
    assert "STOPPING=1" in messages
    assert "received SIGTERM: finishing calls in progress" in stderr
    [meta_file] = out.glob("*.json")
    meta = json.loads(meta_file.read_text())
    assert meta["reason"] == "shutdown"
    assert meta["trigger"] == "offhook"
    # The recording ran from 0.3 s (0.5 s edge - 0.2 s pre-roll) until SIGTERM.
    assert meta["start_frame"] == round(0.3 * RATE)
    assert 1.5 < meta["duration_s"] < elapsed + 1.5
    import soundfile

    rec, _ = soundfile.read(out / meta["audio_file"], dtype="int16")
    assert (rec == data[meta["start_frame"] : meta["end_frame"], 0]).all()
    assert not list(out.glob("*.partial"))


def test_missing_alsa_device_keeps_the_daemon_up_and_is_reported_once(
    tmp_path: Path, linetap_bin: Path, notify_socket
):
    path, sock = notify_socket
    conf = tmp_path / "linetap.toml"
    conf.write_text(
        config_text(
            tmp_path / "out",
            lines=1,
            alsa_device="hw:CARD=nosuchcard",
            extra_audio="reopen_s = 0.2",
        )
    )
    env = {"NOTIFY_SOCKET": str(path), "HOME": str(tmp_path)}
    with reaped(start_recorder(linetap_bin, conf, env)) as proc:
        messages = collect(sock, "READY=1", 20)
        assert "READY=1" in messages  # up and showing its fault, not crash-looping
        time.sleep(1.0)
        assert proc.poll() is None, "daemon must keep retrying, not exit"
        status = json.loads((tmp_path / "run" / "recorder.json").read_text())
        stderr = stop_with_sigterm(proc)
    assert proc.returncode == 0
    # What the status file (uploader telemetry, `linetap status`) says meanwhile.
    assert status["status_led"] == "fast_blink"
    assert [line["led"] for line in status["lines"]] == ["fast_blink"]
    assert "hw:CARD=nosuchcard" in status["faults"]["audio"]
    errors = [line for line in stderr.splitlines() if line.startswith("ERROR")]
    # Reported once (not once per retry), on one line, naming the device and the fix.
    assert len(errors) == 1, stderr
    assert "hw:CARD=nosuchcard" in errors[0] and "arecord -L" in errors[0]
    assert "Traceback" not in stderr


def test_missing_alsa_device_blinks_fault_and_retries(tmp_path: Path):
    """The recorder over real alsa-lib and the sim GPIO backend: while the card is missing
    it tries to open it every reopen_s, and every LED blinks the 5 Hz fault pattern."""
    conf = tmp_path / "linetap.toml"
    conf.write_text(
        config_text(
            tmp_path / "out",
            lines=1,
            alsa_device="hw:CARD=nosuchcard",
            extra_audio="reopen_s = 0.2",
        )
    )
    cfg = load_config(conf)
    attempts: list[int] = []  # monotonic ns of each open of the PCM

    def counted_open(**kwargs: Any) -> Any:
        attempts.append(time.monotonic_ns())
        return alsaaudio.PCM(**kwargs)  # alsa-lib itself finds no such card

    capture = AlsaCapture(
        device=cfg.audio.device,
        sample_rate=cfg.audio.sample_rate,
        channels=cfg.audio.channels,
        sample_format=SampleFormat(cfg.audio.sample_format),
        period_frames=cfg.audio.period_frames,
        periods=cfg.audio.periods,
        pcm_opener=counted_open,
    )
    pins = SimPinFactory(clock=time.monotonic_ns)  # LED changes stamped as they happen
    stop = threading.Event()
    recorder = Recorder(
        cfg,
        capture,
        pins,
        WavSink(tmp_path / "out"),
        stop=stop,
        clock=time.monotonic_ns,
        wall_offset_ns=0,
        device_id="t",
    )
    runner = threading.Thread(target=recorder.run, name="test-recorder")
    start = time.monotonic_ns()
    runner.start()
    time.sleep(1.5)
    stop.set()
    runner.join(5)
    assert not runner.is_alive(), "the recorder must stop while retrying"
    capture.close()
    # Retries: one open at start, then one per reopen_s (0.2 s), never faster.
    assert 4 <= len(attempts) <= 9, attempts
    gaps_s = [(b - a) / NS_PER_S for a, b in itertools.pairwise(attempts)]
    assert all(0.19 <= g < 0.6 for g in gaps_s), gaps_s
    assert recorder.audio_fault is not None and "hw:CARD=nosuchcard" in recorder.audio_fault
    status_led, line_led = cfg.gpio.status_led_pin, cfg.lines[0].led_pin
    assert status_led is not None and line_led is not None
    for pin in (status_led, line_led):
        history = [(t, lit) for t, lit in pins.pin(pin).history if t >= start]
        assert len(history) >= 2, f"GPIO{pin}: the LED did not change while the fault lasted"
        *blinking, (_, last) = history
        assert last is False  # off once stopped
        # 5 Hz, 50 % duty, seen through updates 50 ms apart (and a busy machine's slack).
        ons = [t for t, lit in blinking if lit]
        assert len(ons) >= 4, history
        period_s = statistics.median(b - a for a, b in itertools.pairwise(ons)) / NS_PER_S
        assert 0.2 <= period_s <= 0.3, history
        lit_ns = sum(b[0] - a[0] for a, b in itertools.pairwise(blinking) if a[1])
        assert 0.3 <= lit_ns / (blinking[-1][0] - blinking[0][0]) <= 0.7, history


@pytest.mark.parametrize(("keep_acked_days", "kept"), [(3, True), (1, False)])
def test_keep_acked_days_counts_days_from_the_ack(tmp_path: Path, keep_acked_days: int, kept: bool):
    """linetap.toml's storage.keep_acked_days, through the daemon's retention pass: a
    recording acked 2 days ago outlives 3 days of keeping and not 1; one acked 4 days ago
    outlives neither; an unacked one is never touched."""
    text = config_text(tmp_path / "out", lines=1, data_dir=tmp_path / "data")
    storage = f"[storage]\nkeep_acked_days = {keep_acked_days}\nmin_free_mb = 0\n"
    conf = tmp_path / "linetap.toml"
    conf.write_text(text.replace("[storage]\n", storage, 1))
    cfg = load_config(conf)
    outbox = Outbox(cfg.storage.outbox_dir)
    now = time.time()
    for seq, (rid, days_ago) in enumerate([("four-days", 4), ("two-days", 2)], start=1):
        outbox.add(seq, rid, {"recording.age": b"x"})
        outbox.mark_acked(rid, acked_at=now - days_ago * 86400)
    outbox.add(3, "unacked", {"recording.age": b"x"})
    health = StorageHealth()
    apply_retention(cfg, health)
    left = [e.recording_id for e in outbox.entries()]
    assert left == (["two-days", "unacked"] if kept else ["unacked"])
    assert health.fault is None


def test_retention_runs_in_a_thread_of_its_own_until_stopped(tmp_path: Path):
    conf = tmp_path / "linetap.toml"
    conf.write_text(config_text(tmp_path / "out", lines=1))
    cfg = load_config(conf)
    cfg = cfg.model_copy(
        update={
            "storage": cfg.storage.model_copy(
                update={"data_dir": tmp_path / "data", "keep_acked_days": 0.0, "min_free_mb": 0}
            )
        }
    )
    outbox = Outbox(cfg.storage.outbox_dir)

    def acked(rid: str, seq: int) -> None:
        outbox.add(seq, rid, {"recording.age": b"x"})
        outbox.mark_acked(rid, acked_at=1.0)

    def wait_empty() -> None:
        deadline = time.monotonic() + 10
        while outbox.entries() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert outbox.entries() == []

    acked("old", 1)
    retention = RetentionThread(cfg, StorageHealth(), interval_s=0.05)
    retention.start()
    try:
        wait_empty()  # once at start, off the caller's (the capture loop's) thread
        assert "linetap-retention" in [t.name for t in threading.enumerate()]
        acked("later", 2)
        wait_empty()  # and again every interval
    finally:
        retention.stop(timeout=5)
    assert retention.stop_event.is_set()
    assert "linetap-retention" not in [t.name for t in threading.enumerate()]
