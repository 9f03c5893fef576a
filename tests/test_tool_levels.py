"""`linetap levels`: the live per-line meter, end to end.

The terminal tests run the real command in a real terminal: a private tmux server (own
socket, 120x40) running bash, driven with send-keys and read with capture-pane. The line
is the `file` capture backend playing a WAV in real time (four lines: silent, clipped,
50 Hz hum, speech that starts when line4's handset is lifted) and the hooks are the sim
GPIO backend driven by an events script on the audio clock. The real-ALSA path goes
through alsa-lib's `file` PCM (tests/alsa_pcm.py).

The terminal itself is :class:`tests.tmux_pane.TmuxPane`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import termios
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from firmware.tools.levels import PEAK_HOLD_S, LineMeter
from tests.alsa_pcm import make_file_pcm
from tests.helpers import RATE, config_text, espeak_word, run_cli
from tests.tmux_pane import TmuxPane, assert_clean_exit

LIFT_S = 1.5  # line4's handset is lifted here (and its speech starts)
HUM_DBFS = -30.0
SPEECH_DBFS = -20.0


# ---- the line capture ----------------------------------------------------------------


def _dbfs_amplitude(dbfs: float) -> float:
    return 32768 * 10 ** (dbfs / 20)


def four_lines(seconds: float, rate: int = RATE) -> npt.NDArray[np.int16]:
    """line1 silent, line2 a 1 kHz tone clipped at full scale, line3 50 Hz hum at
    HUM_DBFS RMS, line4 espeak-ng speech at SPEECH_DBFS from LIFT_S on (silent before)."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    clipped = np.clip(1.6 * 32767 * np.sin(2 * np.pi * 1000 * t), -32767, 32767)
    hum = _dbfs_amplitude(HUM_DBFS) * np.sqrt(2) * np.sin(2 * np.pi * 50 * t)
    word = espeak_word("hello, this is the line tap speech check, one two three", rate)
    voice = word.astype(np.float64)
    voice *= _dbfs_amplitude(SPEECH_DBFS) / np.sqrt(np.mean(voice**2))
    speech = np.tile(voice, n // voice.shape[0] + 1)[:n]
    speech[: round(LIFT_S * rate)] = 0
    data = np.stack([np.zeros(n), clipped, hum, speech], axis=1)
    return np.round(data).astype(np.int16)


def write_setup(
    tmp_path: Path, *, seconds: float = 20.0, realtime: bool = True
) -> tuple[Path, npt.NDArray[np.int16]]:
    data = four_lines(seconds)
    wav = tmp_path / "lines.wav"
    soundfile.write(wav, data, RATE, subtype="PCM_16")
    events = tmp_path / "lift.events"
    events.write_text(f"{LIFT_S} line4 offhook   # the installer lifts the handset\n")
    conf = tmp_path / "linetap.toml"
    conf.write_text(
        config_text(
            tmp_path / "out",
            lines=4,
            audio_file=wav,
            extra_audio=f"file_realtime = {'true' if realtime else 'false'}",
            extra_gpio=f'script = "{events}"',
        )
    )
    return conf, data


# ---- parsing what the tool shows -----------------------------------------------------

ROW = re.compile(
    r"^(?P<name>line\d)\s+(?P<ch>\d)\s+(?P<hook>OFF-HOOK|on-hook)\s+\[(?P<bar>[^\]]*)\]\s+"
    r"(?P<rms>\S+)\s+(?P<peak>\S+)\s+(?P<hold>\S+)\s+(?P<clips>\d+)\s+"
    r"(?P<hum50>\S+)\s+(?P<hum60>\S+)\s*(?P<notes>.*)$"
)


def _num(text: str) -> float:
    return -999.0 if text in ("-inf", "--") else float(text)


def rows(screen: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for line in screen.splitlines():
        m = ROW.match(line)
        if m:
            out[m["name"]] = m.groupdict()
    return out


def header_time(screen: str) -> float | None:
    m = re.search(r"\bt\s+([\d.]+) s\b", screen)
    return float(m[1]) if m else None


def plain(text: str) -> list[dict[str, str]]:
    return [dict(kv.split("=", 1) for kv in line.split()) for line in text.splitlines()]


# ---- tests ---------------------------------------------------------------------------


def test_live_meter_in_a_terminal(tmp_path: Path, pane: TmuxPane, linetap_bin: Path):
    conf, _ = write_setup(tmp_path)
    pane.run(f"{linetap_bin} levels -c {conf}; echo EXIT=$?")

    def before_lift(s: str) -> bool:
        r = rows(s)
        return len(r) == 4 and r["line4"]["hook"] == "on-hook"

    early = rows(pane.wait_for(before_lift, what="the meter, line4 still on-hook"))
    assert "silent" in early["line4"]["notes"]
    assert _num(early["line4"]["rms"]) < -100

    # The refresh rate: distinct frames (their audio time) seen in about one second.
    times: set[float] = set()
    until = time.monotonic() + 1.0
    while time.monotonic() < until:
        t = header_time(pane.screen())
        if t is not None:
            times.add(t)
        time.sleep(0.02)
    assert len(times) >= 4, f"only {len(times)} frames a second: {sorted(times)}"

    def alive(s: str) -> bool:
        r = rows(s)
        t = header_time(s)
        return (
            len(r) == 4
            and t is not None
            and t > LIFT_S + 0.5
            and r["line4"]["hook"] == "OFF-HOOK"
            and _num(r["line4"]["rms"]) > -40
        )

    screen = pane.wait_for(alive, what="line4 off-hook with speech on it")
    r = rows(screen)
    silent, clipped, hum, speech = r["line1"], r["line2"], r["line3"], r["line4"]

    assert _num(silent["rms"]) < -100 and "silent" in silent["notes"]
    assert silent["clips"] == "0" and "#" not in silent["bar"]

    assert int(clipped["clips"]) > 0 and "CLIPPING" in clipped["notes"]
    assert _num(clipped["peak"]) > -0.1 and _num(clipped["hold"]) > -0.1

    assert abs(_num(hum["hum50"]) - HUM_DBFS) < 1.5
    assert _num(hum["hum60"]) < HUM_DBFS - 20
    assert abs(_num(hum["rms"]) - HUM_DBFS) < 1.5
    assert "HUM 50 Hz" in hum["notes"] and "silent" not in hum["notes"]

    assert -35 < _num(speech["rms"]) < -10
    assert _num(speech["hold"]) >= _num(speech["peak"])
    assert speech["clips"] == "0"
    assert not any(n in speech["notes"] for n in ("silent", "HUM", "CLIPPING"))
    for other in ("line1", "line2", "line3"):
        assert r[other]["hook"] == "on-hook"

    # The bars follow the levels: clipped > speech > hum > silent.
    filled = {name: row["bar"].count("#") for name, row in r.items()}
    assert filled["line2"] > filled["line4"] > filled["line3"] > filled["line1"] == 0

    pane.key("C-c")
    assert_clean_exit(pane)


def test_sigterm_exits_cleanly_in_a_terminal(tmp_path: Path, pane: TmuxPane, linetap_bin: Path):
    conf, _ = write_setup(tmp_path)
    pane.run(f"{linetap_bin} levels -c {conf}; echo EXIT=$?")
    pane.wait_for(lambda s: len(rows(s)) == 4, what="the meter")
    os.kill(pane.command_pid(), signal.SIGTERM)
    assert_clean_exit(pane)


def test_once_prints_one_measurement_per_line(tmp_path: Path, linetap_bin: Path):
    conf, data = write_setup(tmp_path, seconds=4, realtime=False)
    proc = run_cli(linetap_bin, "levels", "-c", conf, "--once", "--seconds", "2", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout  # no terminal codes for scripts
    got = {m["line"]: m for m in plain(proc.stdout)}
    assert list(got) == ["line1", "line2", "line3", "line4"]
    assert all(m["t"] == "2.00" for m in got.values())

    assert got["line1"]["rms_dbfs"] == "-120.0" and got["line1"]["notes"] == "silent"
    # Every sample of the clipped tone at full scale in the 2 s, counted exactly.
    at_full_scale = int(np.count_nonzero(np.abs(data[: 2 * RATE, 1].astype(np.int32)) >= 32767))
    assert int(got["line2"]["clipped"]) == at_full_scale > 0
    assert "clipping" in got["line2"]["notes"]
    assert abs(float(got["line3"]["hum50_dbfs"]) - HUM_DBFS) < 1.0
    assert float(got["line3"]["hum60_dbfs"]) < HUM_DBFS - 20
    assert "hum-50-hz" in got["line3"]["notes"]
    # line4 was lifted at 1.5 s: off-hook at the end, speech in the last half second.
    assert got["line4"]["hook"] == "off-hook"
    assert got["line1"]["hook"] == "on-hook"
    assert -45 < float(got["line4"]["rms_dbfs"]) < -15
    assert {m["optout"] for m in got.values()} == {"released"}


def test_plain_updates_when_stdout_is_not_a_terminal(tmp_path: Path, linetap_bin: Path):
    conf, _ = write_setup(tmp_path, seconds=5, realtime=False)
    proc = run_cli(linetap_bin, "levels", "-c", conf, "--seconds", "3", timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = plain(proc.stdout)
    # One line per line per second of audio.
    assert [(m["t"], m["line"]) for m in lines] == [
        (f"{t}.00", f"line{n}") for t in (1, 2, 3) for n in (1, 2, 3, 4)
    ]
    line4 = [m["hook"] for m in lines if m["line"] == "line4"]
    assert line4 == ["on-hook", "off-hook", "off-hook"]


def test_the_file_source_ending_ends_the_meter(tmp_path: Path, linetap_bin: Path):
    conf, _ = write_setup(tmp_path, seconds=1.2, realtime=False)
    proc = run_cli(linetap_bin, "levels", "-c", conf, timeout=30)
    assert proc.returncode == 0
    assert len(plain(proc.stdout)) == 4  # the update at 1 s
    assert proc.stderr.strip() == "linetap levels: the audio file ended after 1.2 s"


def test_peak_hold_lasts_about_two_seconds():
    rate = 8000
    meter = LineMeter(rate, window_frames=round(0.4 * rate))
    block = round(0.02 * rate)
    loud = np.full(block, 16384, dtype=np.int16)  # -6 dBFS
    quiet = np.full(block, 328, dtype=np.int16)  # -40 dBFS
    t = 0.0

    def step(samples: npt.NDArray[np.int16]) -> tuple[float, float]:
        nonlocal t
        meter.push(samples)
        t += 0.02
        summary, hold = meter.live_summary(t)
        return float(summary["peak_dbfs"]), hold

    step(loud)
    holds = []
    while t < 4.0:
        peak, hold = step(quiet)
        holds.append((round(t, 2), peak, hold))
    # The window forgets the loud block after 0.4 s; the hold keeps it for PEAK_HOLD_S.
    assert all(abs(h + 6.0) < 0.1 for t_, _p, h in holds if t_ <= PEAK_HOLD_S)
    assert all(abs(p + 40.0) < 0.1 for t_, p, _h in holds if t_ > 0.5)
    assert all(abs(h + 40.0) < 0.1 for t_, _p, h in holds if t_ > PEAK_HOLD_S + 0.05)


# ---- errors --------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["levels", "hooktest"])
def test_bad_config_is_exit_2_one_line_per_problem(tmp_path: Path, linetap_bin: Path, tool: str):
    conf, _ = write_setup(tmp_path, seconds=1)
    conf.write_text(conf.read_text().replace("channel = 3", "channel = 7"))
    proc = run_cli(linetap_bin, tool, "-c", conf, timeout=30)
    assert proc.returncode == 2
    assert proc.stdout == ""
    problems = proc.stderr.strip().splitlines()
    assert len(problems) == 1, problems
    assert re.match(rf"{re.escape(str(conf))}:\d+: lines\[3\]\.channel: channel 7", problems[0])


def alsa_config(tmp_path: Path, device: str) -> Path:
    conf = tmp_path / "alsa.toml"
    conf.write_text(config_text(tmp_path / "out", lines=4, alsa_device=device))
    return conf


def test_once_through_real_alsa(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linetap_bin: Path):
    pcm = make_file_pcm(tmp_path, monkeypatch)
    pcm.load(four_lines(3.0))  # more than measured: the file PCM repeats itself at its end
    conf = alsa_config(tmp_path, pcm.name)
    proc = run_cli(linetap_bin, "levels", "-c", conf, "--once", timeout=30)
    assert proc.returncode == 0, proc.stderr
    got = {m["line"]: m for m in plain(proc.stdout)}
    assert got["line1"]["notes"] == "silent"
    assert int(got["line2"]["clipped"]) > 0
    assert abs(float(got["line3"]["hum50_dbfs"]) - HUM_DBFS) < 1.0
    assert got["line4"]["notes"] == "silent"  # its speech starts at 1.5 s, after the 1 s
    assert {m["hook"] for m in got.values()} == {"on-hook"}


def test_missing_alsa_device_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linetap_bin: Path
):
    make_file_pcm(tmp_path, monkeypatch)
    conf = alsa_config(tmp_path, "linetap_no_such_pcm")
    proc = run_cli(linetap_bin, "levels", "-c", conf, "--once", timeout=30)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # alsa-lib's own "ALSA lib ..." lines are not shown
    assert "'linetap_no_such_pcm'" in lines[0] and "arecord -L" in lines[0]


def test_busy_device_names_the_recorder_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linetap_bin: Path
):
    """A real EBUSY from alsa-lib: the file PCM's infile is a pty in exclusive mode
    (TIOCEXCL), which the kernel refuses to open again without CAP_SYS_ADMIN."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to drop CAP_SYS_ADMIN")
    pcm = make_file_pcm(tmp_path, monkeypatch)
    master, replica = os.openpty()
    try:
        fcntl.ioctl(replica, termios.TIOCEXCL)
        pcm.infile.unlink()
        pcm.infile.symlink_to(os.ttyname(replica))
        conf = alsa_config(tmp_path, pcm.name)
        # The recorder daemon's status file, as `linetap record` writes it, naming a live pid.
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        (run_dir / "recorder.json").write_text(json.dumps({"pid": os.getpid()}))
        proc = run_cli(
            setpriv,
            "--inh-caps=-sys_admin",
            "--bounding-set=-sys_admin",
            linetap_bin,
            "levels",
            "-c",
            conf,
            "--once",
            timeout=30,
        )
    finally:
        os.close(replica)
        os.close(master)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"audio.device '{pcm.name}' is busy" in lines[0]
    assert f"recorder daemon (pid {os.getpid()}) is running" in lines[0]
    assert "systemctl stop linetap-recorder" in lines[0]
