"""`linetap status`: the real recorder (`linetap record`, file audio + simulated GPIO) and
the real uploader (`linetap upload`) against a private mosquitto, then stopped; status
files that are stale or missing; recorder faults; the outbox read from disk."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from buffers.outbox import Outbox
from tests.conftest import VENV_BIN
from tests.helpers import add_opaque_entry, config_text, reaped, run_cli, write_capture
from tests.mqtt_broker import run_mosquitto
from uploader.telemetry import LocalStatus, ProblemLog

LINETAP = [str(VENV_BIN / "linetap")]
DEVICE = "test-device"  # config_text's device_id


def linetap(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_cli(VENV_BIN / "linetap", *args, timeout=timeout)


def add_entry(outbox: Outbox, seq: int, size: int, sealed_at: float) -> str:
    """A sealed outbox entry with an opaque blob (nobody here decrypts it)."""
    rec = str(uuid.uuid4())
    add_opaque_entry(outbox, seq, rec, os.urandom(size), device_id=DEVICE, sealed_at=sealed_at)
    return rec


def device_conf(tmp_path: Path, *, upload: dict[str, Any], audio: Path | None = None) -> Path:
    live: dict[str, Any] = {}
    if audio is not None:  # played in real time, line1 lifted at 0.5 s
        (tmp_path / "events").write_text("0.5 line1 offhook\n")
        live = {
            "audio_file": audio,
            "extra_audio": "file_realtime = true",
            "extra_gpio": f'script = "{tmp_path / "events"}"',
        }
    text = config_text(tmp_path / "wav", lines=2, data_dir=tmp_path / "data", **live)
    text += "\n[upload]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in upload.items())
    conf = tmp_path / "linetap.toml"
    conf.write_text(text)
    return conf


def broker_conf(port: int) -> str:
    return (
        f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest stdout\nset_tcp_nodelay true\n"
    )


@contextmanager
def daemon(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [*LINETAP, *args], stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT
        )
    with reaped(proc):
        yield proc


def wait_for(cond: Callable[[], bool], what: str, logs: list[Path], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    tails = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def check_all_running(conf: Path, recorder_pid: int, uploader_pid: int, port: int) -> None:
    res = linetap("status", "-c", conf)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert f"recorder: running (pid {recorder_pid}, status" in out
    assert "1 call in progress" in out
    assert re.search(r"line1\s+recording\s+LED solid \(recording\)\s+call in progress", out)
    assert re.search(r"line2\s+idle\s+LED off\n", out)
    assert "status LED solid (recording); faults: none" in out
    assert f"uploader: running (pid {uploader_pid}, status" in out
    assert f"broker: connected to 127.0.0.1:{port} since" in out
    assert re.search(r"outbox: 2 waiting \(10\.\d kB\), oldest 5 min; 1 acked; last ack", out)
    assert "(2 min ago)" in out  # the last ack
    assert "OK: recording and uploading" in out
    assert "problem:" not in out

    res = linetap("status", "-c", conf, "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] is True and doc["problems"] == []
    assert doc["device_id"] == DEVICE
    assert doc["recorder"]["running"] is True
    assert doc["recorder"]["calls_in_progress"] == 1
    assert [(ln["name"], ln["state"], ln["led"]) for ln in doc["recorder"]["lines"]] == [
        ("line1", "recording", "solid"),
        ("line2", "idle", "off"),
    ]
    assert doc["uploader"]["link"]["state"] == "connected"
    assert doc["uploader"]["link"]["broker"] == f"127.0.0.1:{port}"
    assert doc["outbox"]["unacked_count"] == 2
    assert 295 < doc["outbox"]["oldest_unacked_age_s"] < 360
    assert doc["outbox"]["counts"]["acked"] == 1
    assert doc["disk"]["free_bytes"] > 0


def check_broker_gone(conf: Path, port: int) -> None:
    res = linetap("status", "-c", conf)
    assert res.returncode == 1, res.stdout
    assert f"broker: disconnected from 127.0.0.1:{port} since" in res.stdout
    assert "last error: " in res.stdout
    problem = [ln for ln in res.stdout.splitlines() if "problem: uploader" in ln]
    assert len(problem) == 1, res.stdout
    assert f"not connected to the broker 127.0.0.1:{port} (disconnected)" in problem[0]
    assert "last error:" in problem[0] and str(port) in problem[0]
    assert "recorder: running" in res.stdout  # the recorder does not care


def check_all_stopped(conf: Path, recorder_pid: int) -> None:
    res = linetap("status", "-c", conf)
    assert res.returncode == 1
    assert f"recorder: not running (process {recorder_pid} is gone; status" in res.stdout
    assert "uploader: not running (stopped" in res.stdout
    assert "line1" not in res.stdout  # a dead recorder's lines are history, not shown
    # The uploader is gone, the outbox is read from the disk.
    assert re.search(r"outbox: 2 waiting \(10\.\d kB\), oldest 5 min; 1 acked", res.stdout)
    assert "problem: recorder: not running" in res.stdout
    assert "problem: uploader: not running" in res.stdout
    doc = json.loads(linetap("status", "-c", conf, "--json").stdout)
    assert doc["ok"] is False
    assert doc["recorder"]["running"] is False and doc["uploader"]["running"] is False
    assert doc["uploader"]["link"]["state"] == "disconnected"
    assert doc["outbox"]["source"] == "disk" and doc["outbox"]["unacked_count"] == 2


def test_status_of_running_daemons_then_broker_gone_then_daemons_stopped(tmp_path: Path):
    audio = tmp_path / "line.wav"
    write_capture(audio, 120, 2)
    outbox = Outbox(tmp_path / "data" / "outbox")
    now = time.time()
    add_entry(outbox, 1, 4000, sealed_at=now - 300)
    add_entry(outbox, 2, 6000, sealed_at=now - 100)
    acked = add_entry(outbox, 3, 1000, sealed_at=now - 200)
    outbox.mark_acked(acked, acked_at=now - 120)
    run = tmp_path / "run"
    logs = [tmp_path / "recorder.log", tmp_path / "uploader.log"]
    with run_mosquitto(tmp_path, broker_conf) as broker:
        conf = device_conf(
            tmp_path,
            audio=audio,
            upload={
                "host": broker.host,
                "port": broker.port,
                "tls": False,
                "keepalive_s": 5,
                "backoff_max_s": 1.0,
                "ack_timeout_s": 60.0,
            },
        )
        with (
            daemon(["record", "--config", str(conf)], logs[0]) as recorder,
            daemon(["upload", "--config", str(conf)], logs[1]) as uploader,
        ):
            wait_for(
                lambda: (
                    [ln.get("state") for ln in read_json(run / "recorder.json").get("lines", [])]
                    == ["recording", "idle"]
                ),
                "line1 recording",
                logs,
            )
            wait_for(
                lambda: (
                    read_json(run / "uploader.json").get("link", {}).get("state") == "connected"
                ),
                "the uploader connected",
                logs,
            )
            check_all_running(conf, recorder.pid, uploader.pid, broker.port)

            broker.stop()
            wait_for(
                lambda: (
                    read_json(run / "uploader.json").get("link", {}).get("state") == "disconnected"
                ),
                "the uploader to notice the broker is gone",
                logs,
            )
            check_broker_gone(conf, broker.port)

            for proc in (recorder, uploader):
                proc.send_signal(signal.SIGTERM)
            assert recorder.wait(20) == 0 and uploader.wait(20) == 0, [p.read_text() for p in logs]
    check_all_stopped(conf, recorder.pid)
    for log in logs:
        assert "Traceback" not in log.read_text()


def test_stale_and_missing_status_files_and_an_outbox_waiting(tmp_path: Path):
    conf = device_conf(tmp_path, upload={"host": "127.0.0.1", "tls": False})
    outbox = Outbox(tmp_path / "data" / "outbox")
    now = time.time()
    for seq in range(1, 4):
        add_entry(outbox, seq, 2000, sealed_at=now - 7200 + seq)
    status = tmp_path / "run" / "recorder.json"
    status.parent.mkdir()
    # This process is alive: only the age says the recorder is gone.
    status.write_text(json.dumps({"pid": os.getpid(), "lines": [], "faults": {}}))
    os.utime(status, (now - 300, now - 300))
    res = linetap("status", "-c", conf)
    assert res.returncode == 1
    assert "recorder: not running (status 5 min old)" in res.stdout
    assert f"uploader: not running (no status file {tmp_path / 'run' / 'uploader.json'})" in (
        res.stdout
    )
    assert re.search(
        r"outbox: 3 waiting \(6\.\d kB\), oldest 2 h; 0 acked; last ack never", res.stdout
    )
    assert res.stdout.count("problem:") == 2
    doc = json.loads(linetap("status", "-c", conf, "--json").stdout)
    assert doc["recorder"]["running"] is False
    assert doc["recorder"]["reason"] == "status 5 min old"
    assert 299 < doc["recorder"]["age_s"] < 400
    assert doc["outbox"]["unacked_count"] == 3
    assert doc["outbox"]["last_ack_utc"] is None


def test_a_recorder_fault_fails_the_status_and_shows_the_fault_leds(tmp_path: Path):
    conf = device_conf(tmp_path, upload={"host": "broker.example", "port": 8883, "tls": False})
    run = tmp_path / "run"
    run.mkdir()
    fault = "audio.device hw:CARD=linetap: no such card; check 'arecord -L'"
    (run / "recorder.json").write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "lines": [
                    {"name": "line1", "state": "idle", "led": "fast_blink"},
                    {"name": "line2", "state": "paused", "led": "fast_blink"},
                ],
                "status_led": "fast_blink",
                "faults": {"audio": fault, "storage": None},
                "capture": {"xruns": 2, "lost_frames": 160, "frames": 8000},
            }
        )
    )
    # The uploader's real status writer, as if it were connected.
    local = LocalStatus(run / "uploader.json", "broker.example:8883", ProblemLog())
    local.write({"upload": {"connected": True, "current": None, "acked": 4, "rejected": 1}})
    res = linetap("status", "-c", conf)
    assert res.returncode == 1
    assert "recorder: running" in res.stdout and "1 call in progress" in res.stdout
    assert re.search(r"line2\s+paused\s+LED blinking 5 Hz \(fault\)\s+call in progress", res.stdout)
    assert f"status LED blinking 5 Hz (fault); faults: audio: {fault}" in res.stdout
    assert "broker: connected to broker.example:8883" in res.stdout
    assert "upload: idle; since start 4 acked, 1 rejected" in res.stdout
    assert "outbox: none yet (nothing recorded)" in res.stdout
    problems = [ln.strip() for ln in res.stdout.splitlines() if ln.startswith("  problem:")]
    assert problems == [f"problem: recorder fault: audio: {fault}"]
    assert "warning: capture lost 160 frame(s) in 2 overrun(s)" in res.stdout
    assert "warning: the head office rejected 1 recording(s)" in res.stdout
    # Nothing was created: status only reads.
    assert not (tmp_path / "data").exists()


def test_a_bad_config_is_exit_2_naming_the_file_and_key(tmp_path: Path):
    conf = tmp_path / "linetap.toml"
    conf.write_text(
        config_text(tmp_path / "wav", lines=1).replace("hook_pin = 17", "hook_pin = 99")
    )
    res = linetap("status", "-c", conf)
    assert res.returncode == 2
    assert re.match(rf"{re.escape(str(conf))}:\d+: lines\[0\]\.hook_pin: ", res.stderr)
    assert "Traceback" not in res.stderr


def test_uploader_status_file_link_states(tmp_path: Path):
    """LocalStatus: connecting until the first attempt, then connected/disconnected with the
    time of the change and the last problem the uploader logged."""
    clock = [1000.0]
    problems = ProblemLog()
    local = LocalStatus(tmp_path / "run" / "uploader.json", "h:1", problems, clock=lambda: clock[0])
    down = {"upload": {"connected": False}}
    up = {"upload": {"connected": True}}

    def link() -> dict[str, Any]:
        return dict(read_json(local.path)["link"])

    local.write(down, phase="starting")
    assert link()["state"] == "connecting"
    clock[0] = 1005.0
    local.write(down)
    assert link() == {
        "state": "disconnected",
        "since_utc": "1970-01-01T00:16:45+00:00",
        "broker": "h:1",
        "last_error": None,
        "last_error_utc": None,
    }
    logger = logging.getLogger("uploader.client")
    logger.addHandler(problems)
    try:
        logger.warning("cannot connect to h:1: %s", "Connection refused")
    finally:
        logger.removeHandler(problems)
    clock[0] = 1010.0
    local.write(down)
    assert link()["since_utc"] == "1970-01-01T00:16:45+00:00"  # unchanged: no transition
    assert link()["last_error"] == "cannot connect to h:1: Connection refused"
    clock[0] = 1020.0
    local.write(up)
    assert link()["state"] == "connected"
    assert link()["since_utc"] == "1970-01-01T00:17:00+00:00"
    local.write(up, phase="stopped")
    doc = read_json(local.path)
    assert doc["state"] == "stopped" and doc["link"]["state"] == "disconnected"
    assert doc["pid"] == os.getpid()
    # An unwritable runtime dir is reported once in the log, never raised.
    blocker = tmp_path / "file"
    blocker.write_text("")
    broken = LocalStatus(blocker / "uploader.json", "h:1", ProblemLog())
    broken.write(up)
    assert not (blocker / "uploader.json").exists()
