"""``linetap check``: the installer's one-line-per-precondition report.

End to end through ``linetap check`` in a subprocess: real alsa-lib reading the test's
``file`` PCM (tests/alsa_pcm.py) as the HAT, the simulated GPIO backend, a real mosquitto
with the head office's TLS set-up (headoffice.enroll), real files and modes. The check
functions are also called directly with prepared inputs where the machine's own state
cannot be chosen (the kernel clock, a device the recorder holds, a full partition).
"""

from __future__ import annotations

import dataclasses
import errno
import getpass
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import alsaaudio
import numpy as np
import numpy.typing as npt
import pytest
from cryptography import x509

from drivers.audio.alsa import AlsaCapture
from drivers.audio.formats import SampleFormat
from drivers.gpio.sim import SimPinFactory
from firmware.clock import ClockSync, read_clock_sync
from firmware.config import LinetapConfig, SealingConfig, UploadConfig
from firmware.tools import _checks as c
from firmware.tools.check import exit_code, format_check, run_checks
from headoffice import enroll
from headoffice.enroll import CaLayout
from sealedrec import protocol
from sealedrec.keys import create_device_key, key_id, load_device_key, public_key_b64
from sealedrec.tlskeys import make_device_csr
from tests.alsa_pcm import FilePcm, make_file_pcm
from tests.helpers import espeak_word, lines_toml, mounted_tmpfs, run_cli
from tests.mqtt_broker import Broker, MqttProbe, free_port, office_broker_conf, run_mosquitto

DEVICE = "dev-check"
RATE = 8000
LINE_RE = re.compile(r"^(PASS|INFO|WARN|FAIL|SKIP)  (\S+)\s+(.*)$")


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Pki:
    """One head office (CA, broker certificate, age key) with this device enrolled, and a
    second office whose CA and device certificate belong elsewhere."""

    root: Path
    recipient: str
    ca: Path
    device_dir: Path  # device.key, device-tls.key, device.crt
    other_ca: Path
    other_cert: Path
    other_key: Path
    office_cert: Path
    office_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("check-pki")
    # The broker certificate names "localhost" only: connecting to 127.0.0.1 is a
    # host name mismatch.
    setup = enroll.init_ca(base / "office", "Check Office", ip_addresses=())
    device_dir = base / "device"
    signing = create_device_key(device_dir / "device.key")
    cert = enroll.enroll_device(
        setup.root,
        make_device_csr(device_dir / "device-tls.key", DEVICE),
        public_key_b64(signing.public_key()),
    )
    shutil.copy(cert, device_dir / "device.crt")
    other = enroll.init_ca(base / "other", "Other Office")
    other_signing = create_device_key(base / "other-device" / "device.key")
    other_key = base / "other-device" / "device-tls.key"
    other_cert = enroll.enroll_device(
        other.root, make_device_csr(other_key, DEVICE), public_key_b64(other_signing.public_key())
    )
    office_cert, office_key = enroll.issue_office_client(setup.root)
    return Pki(
        setup.root,
        setup.recipient,
        CaLayout(setup.root).broker_ca,
        device_dir,
        other.ca_cert,
        other_cert,
        other_key,
        office_cert,
        office_key,
    )


@pytest.fixture(scope="module")
def broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    tmp = tmp_path_factory.mktemp("check-broker")
    with run_mosquitto(tmp, office_broker_conf(pki.root, tmp / "data")) as b:
        yield b


def device_data(pki: Pki, tmp_path: Path) -> Path:
    """A fresh copy of the enrolled device's data dir (keys 0600) for one test to change."""
    data = tmp_path / "data"
    keys = data / "keys"
    keys.mkdir(parents=True)
    for name in ("device.key", "device-tls.key", "device.crt"):
        shutil.copy2(pki.device_dir / name, keys / name)
    shutil.copy(pki.ca, keys / "ca.crt")
    return data


def upload_toml(data: Path, *, port: int, host: str = "localhost", ca: Path | None = None) -> str:
    return (
        f'host = "{host}"\nport = {port}\ntls = true\n'
        f'ca_file = "{ca or data / "keys" / "ca.crt"}"\n'
        f'cert_file = "{data / "keys" / "device.crt"}"\n'
        f'key_file = "{data / "keys" / "device-tls.key"}"\n'
    )


def enrolled_config(
    tmp_path: Path, pki: Pki, *, port: int, ca: Path | None = None
) -> tuple[Path, Path]:
    """The enrolled device (a fresh copy of its data dir) with its broker at
    localhost:``port``, no audio file; (config, data dir)."""
    data = device_data(pki, tmp_path)
    conf = write_config(
        tmp_path,
        audio=no_audio_file(tmp_path),
        data=data,
        upload=upload_toml(data, port=port, ca=ca),
        recipients=(pki.recipient,),
    )
    return conf, data


def write_config(
    tmp_path: Path,
    *,
    audio: str,
    lines: int = 1,
    data: Path | None = None,
    upload: str = "tls = false\n",
    recipients: tuple[str, ...] = (),
    storage_format: str = "sealed",
    gpio: str = 'backend = "sim"',
    leds: bool = False,
) -> Path:
    data = data or tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    development = "[development]\nallow_plain_audio = true" if storage_format == "wav" else ""
    text = f"""
device_id = "{DEVICE}"
[audio]
{audio}
[gpio]
{gpio}
{"status_led_pin = 5" if leds else ""}
[storage]
format = "{storage_format}"
data_dir = "{data}"
runtime_dir = "{tmp_path / "run"}"
min_free_mb = 1
[sealing]
recipients = {json.dumps(list(recipients))}
[upload]
{upload}
{development}
"""
    path = tmp_path / "linetap.toml"
    path.write_text(text + lines_toml(lines, leds=leds))
    return path


def no_audio_file(tmp_path: Path) -> str:
    """[audio] of a file backend whose file does not exist (for runs that skip audio)."""
    return f'backend = "file"\nfile = "{tmp_path / "none.wav"}"'


def speech_file_config(tmp_path: Path, **kw: Any) -> Path:
    """A wav-storage config whose one line plays 2 s of speech from a raw file, unpaced."""
    audio = tmp_path / "line.raw"
    audio.write_bytes(speech(2.0).astype("<i2").tobytes())
    return write_config(
        tmp_path,
        audio=f'backend = "file"\nfile = "{audio}"\nfile_realtime = false',
        storage_format="wav",
        **kw,
    )


def alsa_audio(pcm: FilePcm, channels: int) -> str:
    return f'backend = "alsa"\ndevice = "{pcm.name}"\nsample_rate = {RATE}\nchannels = {channels}'


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def lines(self, check_id: str) -> list[tuple[str, str]]:
        """(status, text) of every printed line of ``check_id``."""
        out = []
        for line in self.stdout.splitlines():
            m = LINE_RE.match(line)
            if m and m.group(2) == check_id:
                out.append((m.group(1), m.group(3)))
        return out

    def one(self, check_id: str) -> tuple[str, str]:
        found = self.lines(check_id)
        assert len(found) == 1, f"{check_id}: {found}\n{self.stdout}"
        return found[0]

    def ids(self) -> list[str]:
        return [m.group(2) for m in map(LINE_RE.match, self.stdout.splitlines()) if m]


def run_check(linetap_bin: Path, conf: Path, *args: str) -> Run:
    done = run_cli(linetap_bin, "check", "--config", conf, *args)
    assert "Traceback" not in done.stderr, done.stderr
    return Run(done.returncode, done.stdout, done.stderr)


def clock_consistent(run: Run) -> bool:
    """The clock line matches this machine's kernel clock state (whatever it is)."""
    status, text = run.one("clock")
    if read_clock_sync().synchronized:
        return status == "PASS" and "synchronised" in text
    return status == "FAIL" and "not synchronised" in text and "timedatectl" in text


def speech(seconds: float) -> npt.NDArray[np.int16]:
    """espeak-ng speech, repeated to ``seconds``: a good line nobody here wrote."""
    word = espeak_word("hello, this is the line check")
    return np.tile(word, int(seconds * RATE) // len(word) + 1)[: int(seconds * RATE)]


def noise(seconds: float, dbfs: float, seed: int = 1) -> npt.NDArray[np.int16]:
    rng = np.random.default_rng(seed)
    sigma = 32768 * 10 ** (dbfs / 20)
    return np.round(rng.normal(0, sigma, int(seconds * RATE))).astype(np.int16)


def tone(seconds: float, hz: float, dbfs: float) -> npt.NDArray[np.int16]:
    t = np.arange(int(seconds * RATE)) / RATE
    amplitude = 32768 * 2**0.5 * 10 ** (dbfs / 20)  # RMS of a sine = amplitude / sqrt 2
    out: npt.NDArray[np.int16] = np.round(amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    return out


# --------------------------------------------------------------------------- end to end


def test_four_lines_through_alsa_good_silent_clipped_hum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linetap_bin: Path
) -> None:
    pcm = make_file_pcm(tmp_path, monkeypatch)
    seconds = 3.0
    good = speech(seconds)
    clipped = np.clip(good.astype(np.int32) * 8, -32768, 32767).astype(np.int16)
    hum = (tone(seconds, 50, -20) + noise(seconds, -70)).astype(np.int16)
    pcm.load(np.stack([good, noise(seconds, -80), clipped, hum], axis=1))
    events = tmp_path / "hooks.events"
    events.write_text("0 line1 offhook\n0 line2 offhook\n")  # line3 and line4 stay on-hook
    conf = write_config(
        tmp_path,
        audio=alsa_audio(pcm, 4),
        lines=4,
        gpio=f'backend = "sim"\nscript = "{events}"',
        storage_format="wav",
    )
    run = run_check(linetap_bin, conf, "--skip", "broker", "--skip", "tls")

    assert run.one("hook.line1") == (
        "PASS",
        "line1: hook GPIO17 reads low: off-hook (handset lifted); opt-out GPIO27 reads high: released",
    )
    assert run.one("hook.line3")[1].startswith("line3: hook GPIO19 reads high: on-hook")
    status, text = run.one("audio")
    assert status == "PASS"
    assert f"audio.device '{pcm.name}': 4 channel(s) at 8000 Hz S16_LE, 1.50 s captured" in text
    status, text = run.one("signal.line1")
    assert status == "PASS", text
    assert "no clipping" in text
    # Silent although off-hook: nothing reaches the tap.
    status, text = run.one("signal.line2")
    assert status == "FAIL" and "line2 (channel 1) is silent" in text and "off-hook" in text
    assert "fix: check the tap's wiring" in text
    status, text = run.one("signal.line3")
    assert status == "FAIL" and "line3 (channel 2) clips" in text and "alsamixer" in text
    status, text = run.one("signal.line4")
    assert status == "FAIL" and "50 Hz mains hum at" in text and "earth" in text
    hum_dbfs = float(re.search(r"hum at (-?[\d.]+) dBFS", text).group(1))  # type: ignore[union-attr]
    assert -21.0 < hum_dbfs < -19.0  # the -20 dBFS sine, measured
    assert run.one("leds")[0] == "INFO"  # no LEDs in this config
    assert run.one("keys.device")[0] == "SKIP"  # wav: nothing signed
    assert run.one("broker") == ("SKIP", "--skip broker")
    assert clock_consistent(run)
    assert run.code == 1
    assert run.stdout.splitlines()[-1].startswith("linetap check: ")
    assert run.stdout.splitlines()[-1].endswith("(exit 1)")


def test_missing_alsa_device_fails_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linetap_bin: Path
) -> None:
    make_file_pcm(tmp_path, monkeypatch)
    conf = write_config(
        tmp_path,
        audio=f'backend = "alsa"\ndevice = "linetap_no_such_pcm"\nsample_rate = {RATE}',
        storage_format="wav",
    )
    run = run_check(linetap_bin, conf, "--skip", "broker", "--skip", "tls", "--json")
    report = json.loads(run.stdout)
    checks = {ch["id"]: ch for ch in report["checks"]}
    audio = checks["audio"]
    assert audio["status"] == "FAIL"
    assert "audio.device 'linetap_no_such_pcm': cannot open capture device" in audio["message"]
    assert "arecord -L" in audio["fix"]
    assert checks["signal.line1"]["status"] == "SKIP"
    assert report["exit_code"] == run.code == 1
    assert report["status"] == "FAIL"
    for ch in report["checks"]:
        assert set(ch) >= {"id", "status", "message", "fix"}
        assert ch["status"] in {"PASS", "INFO", "WARN", "FAIL", "SKIP"}


def test_bad_config_one_line_per_problem_exit_2(tmp_path: Path, linetap_bin: Path) -> None:
    conf = tmp_path / "linetap.toml"
    conf.write_text(
        '[audio]\nbackend = "alsa"\nsample_rat = 8000\n'
        '[[lines]]\nname = "line1"\nchannel = 0\nhook_pin = 99\n'
    )
    run = run_check(linetap_bin, conf)
    problems = run.lines("config")
    assert [s for s, _ in problems] == ["FAIL", "FAIL"]
    texts = [t for _, t in problems]
    assert any(
        f"{conf}:3: audio.sample_rat: unknown key; did you mean 'sample_rate'?" in t for t in texts
    )
    assert any(f"{conf}:7: lines[0].hook_pin:" in t and "(0-63)" in t for t in texts)
    # Nothing that needs the config crashes; it is skipped. The clock needs no config.
    for group in (
        "hook",
        "audio",
        "signal",
        "leds",
        "storage",
        "keys",
        "recipients",
        "tls",
        "broker",
    ):
        assert run.one(group) == ("SKIP", "needs a valid config")
    assert clock_consistent(run)
    assert run.code == 2

    report = json.loads(run_check(linetap_bin, conf, "--json").stdout)
    config = report["checks"][0]
    assert config["id"] == "config" and config["status"] == "FAIL"
    assert config["message"] == f"{conf}: 2 problems"
    assert len(config["details"]) == 2
    assert report["exit_code"] == 2


def test_everything_in_order_with_the_broker_accepting_the_device(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    linetap_bin: Path,
    pki: Pki,
    broker: Broker,
) -> None:
    pcm = make_file_pcm(tmp_path, monkeypatch)
    pcm.load(speech(2.0)[:, None])
    data = device_data(pki, tmp_path)
    conf = write_config(
        tmp_path,
        audio=alsa_audio(pcm, 1),
        data=data,
        upload=upload_toml(data, port=broker.port),
        recipients=(pki.recipient,),
        leds=True,
    )
    run = run_check(linetap_bin, conf)
    statuses = {i: run.one(i)[0] for i in run.ids()}
    assert statuses == (
        expected := {
            "config": "WARN",  # gpio.backend = "sim"
            "hook.line1": "PASS",
            "audio.card": "INFO",
            "audio": "PASS",
            "signal.line1": "PASS",
            "leds": "INFO",
            "clock": statuses["clock"],
            "storage.free": "PASS",
            "storage.write": "PASS",
            "keys.device": "PASS",
            "recipients": "PASS",
            "tls.ca": "PASS",
            "tls.cert": "PASS",
            "tls.key": "PASS",
            "broker": "PASS",
        }
    ), run.stdout
    assert run.ids() == list(expected), "printed in the documented order"
    assert clock_consistent(run)
    assert run.code == (0 if statuses["clock"] == "PASS" else 1)
    assert 'gpio.backend = "sim"' in run.one("config")[1]
    assert run.one("leds")[1].startswith(
        "switched on for 1 s, then off: status LED (GPIO5), line1 LED (GPIO22)"
    )
    assert f"localhost:{broker.port}: MQTT CONNECT accepted as {DEVICE}" in run.one("broker")[1]
    assert f"CN {DEVICE}, valid until" in run.one("tls.cert")[1]
    kid = key_id(load_device_key(data / "keys" / "device.key").public_key())
    assert run.one("keys.device")[1].endswith(
        f"Ed25519, key id {kid}, mode 0600, owner {getpass.getuser()}"
    )
    speed = re.search(r"\(([\d.]+) MB/s\)", run.one("storage.write")[1])
    assert speed and float(speed.group(1)) > 0
    assert [p.name for p in data.iterdir()] == ["keys"]  # the write test left nothing behind
    assert run.one("recipients")[1].startswith(f"1 head-office key(s): {pki.recipient[:12]}")


def test_world_readable_keys_fail_with_the_chmod(
    tmp_path: Path, linetap_bin: Path, pki: Pki
) -> None:
    conf, data = enrolled_config(tmp_path, pki, port=free_port())
    (data / "keys" / "device.key").chmod(0o644)
    (data / "keys" / "device-tls.key").chmod(0o640)
    run = run_check(linetap_bin, conf, "--skip", "audio", "--skip", "broker")
    key = data / "keys" / "device.key"
    assert run.one("keys.device") == (
        "FAIL",
        f"sealing.device_key {key}: mode 0644, a private key must be readable by its owner"
        f" only; fix: chmod 600 {key}",
    )
    tls_key = data / "keys" / "device-tls.key"
    assert run.one("tls.key") == (
        "FAIL",
        f"upload.key_file {tls_key}: mode 0640, a private key must be readable by its owner"
        f" only; fix: chmod 600 {tls_key}",
    )
    assert run.one("tls.cert")[0] == "PASS"  # the certificate is public: any mode will do
    assert run.code == 1


def broker_down_config(tmp_path: Path, pki: Pki) -> tuple[Path, int]:
    """An enrolled device whose broker port nobody listens on; (config, port)."""
    port = free_port()
    conf, _ = enrolled_config(tmp_path, pki, port=port)
    return conf, port


def test_broker_down_is_connection_refused(tmp_path: Path, linetap_bin: Path, pki: Pki) -> None:
    conf, port = broker_down_config(tmp_path, pki)
    run = run_check(linetap_bin, conf, "--skip", "audio", "--skip", "gpio")
    status, text = run.one("broker")
    assert status == "FAIL"
    assert f"connection refused by localhost:{port}: nothing listens there" in text
    assert "fix: check upload.port and that the broker runs" in text
    assert run.code == 1


def test_wrong_ca_fails_tls_verification(
    tmp_path: Path, linetap_bin: Path, pki: Pki, broker: Broker
) -> None:
    conf, _ = enrolled_config(tmp_path, pki, port=broker.port, ca=pki.other_ca)
    run = run_check(linetap_bin, conf, "--skip", "audio", "--skip", "gpio")
    assert run.one("tls.ca")[0] == "PASS"  # a fine CA, just not this office's
    status, text = run.one("tls.cert")
    assert status == "FAIL" and f"not issued by upload.ca_file {pki.other_ca}" in text
    status, text = run.one("broker")
    assert status == "FAIL"
    assert "TLS: the broker's certificate is not trusted by upload.ca_file" in text
    assert "ca.crt" in text
    assert run.code == 1


def test_warnings_alone_exit_0_and_1_with_strict(tmp_path: Path, linetap_bin: Path) -> None:
    conf = speech_file_config(tmp_path)
    args = ("--skip", "clock", "--skip", "broker", "--skip", "leds")
    run = run_check(linetap_bin, conf, *args)
    statuses = {s for s, _ in (run.one(i) for i in run.ids())}
    assert statuses == {"PASS", "WARN", "INFO", "SKIP"}, run.stdout
    assert run.one("tls")[0] == "WARN"  # upload.tls = false
    assert run.code == 0
    assert run_check(linetap_bin, conf, *args, "--strict").code == 1


# --------------------------------------------------------------------------- clock


def test_clock_synced_and_not() -> None:
    ok = c.check_clock(ClockSync(True, 12_000, 500, "adjtimex"))
    assert (
        ok.status is c.Status.PASS and ok.message == "system clock synchronised (max error 12 ms)"
    )
    bad = c.check_clock(ClockSync(False, 16_000_000, 16_000_000, "adjtimex"))
    assert bad.status is c.Status.FAIL
    assert "not synchronised" in bad.message and "evidence" in bad.message
    assert bad.fix is not None and "chrony" in bad.fix and "systemd-timesyncd" in bad.fix
    unknown = c.check_clock(ClockSync(False, None, None, "unavailable"))
    assert unknown.status is c.Status.FAIL and "cannot be read" in unknown.message


@pytest.mark.parametrize("synced", [True, False])
def test_the_clock_reading_decides_the_exit_code(tmp_path: Path, synced: bool) -> None:
    conf = speech_file_config(tmp_path)
    checks = run_checks(
        conf,
        skip=frozenset({"broker", "tls"}),
        clock_sync=lambda: ClockSync(synced, 1000, 10, "adjtimex"),
    )
    clock = next(ch for ch in checks if ch.id == "clock")
    assert clock.status is (c.Status.PASS if synced else c.Status.FAIL)
    assert exit_code(checks, strict=False) == (0 if synced else 1)


# --------------------------------------------------------------------------- signals


def line(n: int = 1, **kw: Any) -> Any:
    from firmware.config import LineConfig

    return LineConfig(name=f"line{n}", channel=n - 1, hook_pin=16 + n, **kw)


def test_silence_is_a_warning_on_hook_and_a_failure_off_hook() -> None:
    quiet = noise(1.5, -80)
    on = c.check_signal(line(), quiet, RATE, off_hook=False)
    assert on.status is c.Status.WARN and "as an on-hook line may be" in on.message
    assert on.fix is not None and on.fix.startswith("lift the handset")
    off = c.check_signal(line(), quiet, RATE, off_hook=True)
    assert off.status is c.Status.FAIL and "although it is off-hook" in off.message
    unknown = c.check_signal(line(), quiet, RATE, off_hook=None)
    assert unknown.status is c.Status.WARN
    # Dial tone (350 + 440 Hz, -13 dBFS each) on an off-hook line is what it should be.
    dial = (tone(1.5, 350, -13) + tone(1.5, 440, -13)).astype(np.int16)
    assert c.check_signal(line(), dial, RATE, off_hook=True).status is c.Status.PASS


def test_hum_levels_and_a_few_clipped_samples() -> None:
    base = noise(1.5, -60)
    mild = c.check_signal(line(), (base + tone(1.5, 60, -42)).astype(np.int16), RATE, False)
    assert mild.status is c.Status.WARN and "60 Hz mains hum at" in mild.message
    strong = c.check_signal(line(), (base + tone(1.5, 50, -25)).astype(np.int16), RATE, False)
    assert strong.status is c.Status.FAIL
    # Speech leaks into the hum fit (voice fundamentals overlap 100-180 Hz): not hum.
    talk = speech(1.5)
    assert c.check_signal(line(), talk, RATE, True).status is c.Status.PASS
    # One click at full scale: a warning, not a failure.
    click = talk.copy()
    click[100:104] = 32767
    clicked = c.check_signal(line(), click, RATE, True)
    assert clicked.status is c.Status.WARN and "4 sample(s) at full scale" in clicked.message


# --------------------------------------------------------------------------- audio device


def test_a_busy_device_is_a_warning_while_the_recorder_runs(tmp_path: Path) -> None:
    def busy(**_kw: Any) -> Any:
        raise alsaaudio.ALSAAudioError(f"{os.strerror(errno.EBUSY)} [hw:CARD=linetap]")

    cfg = LinetapConfig.model_validate(
        {
            "audio": {"device": "hw:CARD=linetap", "channels": 1},
            "storage": {"format": "wav"},
            "development": {"allow_plain_audio": True},
            "lines": [{"name": "line1", "channel": 0, "hook_pin": 17}],
        }
    )

    def capture() -> AlsaCapture:
        return AlsaCapture(
            device="hw:CARD=linetap",
            sample_rate=RATE,
            channels=1,
            sample_format=SampleFormat.S16_LE,
            period_frames=160,
            periods=4,
            pcm_opener=busy,
        )

    recorder = {"pid": 4242, "lines": [], "faults": {"audio": None}}
    check, samples = c.check_audio(capture(), cfg.audio, recorder)
    assert samples is None
    assert check.status is c.Status.WARN
    assert "the running recorder (pid 4242) captures from it" in check.message
    assert check.fix is not None and "systemctl stop linetap-recorder" in check.fix
    check, _ = c.check_audio(capture(), cfg.audio, None)
    assert check.status is c.Status.FAIL and "another program holds it" in check.message
    assert check.fix is not None and "fuser" in check.fix


def test_recorder_running_reports_its_view_and_leaves_the_pins_alone(tmp_path: Path) -> None:
    conf = speech_file_config(tmp_path, leds=True)
    status = {
        "updated_utc": datetime.now(UTC).isoformat(),
        "pid": 4242,
        "lines": [{"name": "line1", "state": "recording", "led": "solid"}],
        "status_led": "solid",
        "faults": {"audio": None, "storage": None},
    }
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recorder.json").write_text(json.dumps(status))
    waits: list[float] = []
    checks = {
        ch.id: ch
        for ch in run_checks(conf, skip=frozenset({"broker", "tls"}), led_wait=waits.append)
    }
    hook = checks["hook.line1"]
    assert hook.status is c.Status.INFO
    assert "the recorder, pid 4242, holds GPIO17" in hook.message and "recording" in hook.message
    assert checks["leds"].status is c.Status.INFO
    assert checks["leds"].message.startswith("not toggled: the running recorder drives them")
    assert waits == []  # no LED was lit
    # The line is off-hook for the recorder and speech is on it: a good line.
    assert checks["signal.line1"].status is c.Status.PASS


# --------------------------------------------------------------------------- GPIO


def test_hooks_read_through_the_sim_backend_and_opt_out_pressed() -> None:
    pins = SimPinFactory()
    pins.pin(17).drive_low()  # line1 off-hook (active low)
    pins.pin(28).drive_low()  # line2's opt-out pressed (active low)
    lines = [line(1, opt_out_pin=27), line(2, opt_out_pin=28)]
    result = c.check_hooks(lines, pins, "discard")
    (first, off1), (second, off2) = result
    assert (off1, off2) == (True, False)
    assert first.status is c.Status.PASS and "hook GPIO17 reads low: off-hook" in first.message
    assert second.status is c.Status.WARN
    assert "opt-out GPIO28 reads low: PRESSED, calls on line2 are discarded" in second.message
    pins.close()


def test_a_pin_in_use_fails_and_leds_are_lit_then_dark() -> None:
    pins = SimPinFactory()
    pins.output(17)
    ((check, state),) = c.check_hooks([line(1)], pins, "pause")
    assert check.status is c.Status.FAIL and state is None
    assert "lines[0]: GPIO17: already in use as an output" in check.message

    cfg = LinetapConfig.model_validate(
        {
            "gpio": {"backend": "sim", "status_led_pin": 5, "status_led_active": "low"},
            "storage": {"format": "wav"},
            "development": {"allow_plain_audio": True},
            "lines": [{"name": "line1", "channel": 0, "hook_pin": 18, "led_pin": 22}],
        }
    )
    seen: list[tuple[bool, bool]] = []

    def look(seconds: float) -> None:
        assert seconds == c.LED_ON_S
        seen.append((pins.pin(5).read(), pins.pin(22).read()))

    leds = c.check_leds(cfg, pins, look)
    assert leds.status is c.Status.INFO
    assert seen == [(False, True)]  # both lit: the status LED is active low
    assert [lvl for _, lvl in pins.pin(22).history] == [False, True, False]
    assert [lvl for _, lvl in pins.pin(5).history] == [True, False, True]
    pins.close()


def test_an_unusable_gpio_backend_fails_and_skips_the_leds(tmp_path: Path) -> None:
    conf = write_config(
        tmp_path,
        audio=no_audio_file(tmp_path),
        gpio='backend = "gpiod"\nchip = "/dev/gpiochip-none"',
        storage_format="wav",
        leds=True,
    )
    checks = {ch.id: ch for ch in run_checks(conf, skip=frozenset({"audio", "tls", "broker"}))}
    assert checks["gpio"].status is c.Status.FAIL
    assert "/dev/gpiochip-none" in checks["gpio"].message
    assert checks["leds"] == c.skipped("leds", "needs the GPIO backend")
    assert "hook.line1" not in checks


# --------------------------------------------------------------------------- storage


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", "1m") as mount:
        yield mount


def test_a_full_partition_fails_both_storage_checks(small_disk: Path) -> None:
    with open(small_disk / "filler", "wb") as fh:
        fh.write(b"\0" * (1024 * 1024))  # up to ENOSPC is fine: tmpfs caps it
    free = c.check_free_space(small_disk, min_free_mb=1)
    assert free.status is c.Status.FAIL and "0 MB free (storage.min_free_mb = 1)" in free.message
    write = c.check_write_speed(small_disk)
    assert write.status is c.Status.FAIL
    assert f"storage.data_dir {small_disk}: cannot write (No space left on device)" == write.message
    assert write.fix == "the data partition is full: free space on it"
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_write_speed_and_free_space_thresholds(tmp_path: Path) -> None:
    ok = c.check_write_speed(tmp_path, nbytes=1024 * 1024)
    assert ok.status is c.Status.PASS and "wrote and fsynced 1 MiB in" in ok.message
    assert list(tmp_path.iterdir()) == []
    # A clock that says the 1 MiB took 2 s: 0.5 MB/s is too slow.
    ticks = iter([10.0, 12.0])
    slow = c.check_write_speed(tmp_path, nbytes=1024 * 1024, clock=lambda: next(ticks))
    assert slow.status is c.Status.WARN and "(0.5 MB/s)" in slow.message

    @dataclass
    class Usage:
        free: int

    assert c.check_free_space(tmp_path, 256, lambda _p: Usage(600 * c.MIB)).status is c.Status.PASS
    assert c.check_free_space(tmp_path, 256, lambda _p: Usage(300 * c.MIB)).status is c.Status.WARN
    assert c.check_free_space(tmp_path, 256, lambda _p: Usage(200 * c.MIB)).status is c.Status.FAIL
    missing = c.check_free_space(tmp_path / "nope", 256)
    assert missing.status is c.Status.FAIL and "does not exist" in missing.message
    assert missing.fix is not None and "install -d" in missing.fix


# --------------------------------------------------------------------------- keys, TLS


def test_device_key_missing_and_not_a_key(tmp_path: Path) -> None:
    gone = c.check_device_key(tmp_path / "device.key")
    assert gone.status is c.Status.FAIL and gone.fix is not None and "linetap keys init" in gone.fix
    junk = tmp_path / "junk.key"
    junk.write_text("not a key\n")
    junk.chmod(0o600)
    bad = c.check_device_key(junk)
    assert bad.status is c.Status.FAIL and "not an unencrypted PEM private key" in bad.message


def test_recipients(pki: Pki) -> None:
    good = c.check_recipients(SealingConfig(recipients=[pki.recipient]), "sealed")
    assert good.status is c.Status.PASS and good.message.startswith("1 head-office key(s): age1")
    twice = c.check_recipients(SealingConfig(recipients=[pki.recipient] * 2), "sealed")
    assert twice.status is c.Status.WARN and "twice" in twice.message
    # The config refuses a bad key; a config object made without validation still gets checked.
    broken = SealingConfig.model_construct(recipients=[pki.recipient[:-3] + "qqq"])
    bad = c.check_recipients(broken, "sealed")
    assert bad.status is c.Status.FAIL and bad.message.startswith("sealing.recipients[0]:")
    none = c.check_recipients(SealingConfig(), "sealed")
    assert none.status is c.Status.FAIL and "empty" in none.message
    assert c.check_recipients(SealingConfig(), "wav").status is c.Status.INFO


def _upload(pki: Pki, **kw: Any) -> UploadConfig:
    files = {
        "ca_file": pki.ca,
        "cert_file": pki.device_dir / "device.crt",
        "key_file": pki.device_dir / "device-tls.key",
    }
    return UploadConfig.model_validate({"host": "localhost", **files, **kw})


def test_tls_files_expiry_identity_and_pairing(pki: Pki) -> None:
    now = datetime.now(UTC)
    ok = c.check_tls(_upload(pki), DEVICE, now)
    assert [(ch.id, ch.status) for ch in ok] == [
        ("tls.ca", c.Status.PASS),
        ("tls.cert", c.Status.PASS),
        ("tls.key", c.Status.PASS),
    ]
    assert "matches the key, issued by the CA" in ok[1].message
    cert = x509.load_pem_x509_certificate((pki.device_dir / "device.crt").read_bytes())
    end = cert.not_valid_after_utc

    def cert_check(**kw: Any) -> c.Check:
        upload = _upload(pki, **{k: v for k, v in kw.items() if k not in {"now", "device"}})
        checks = c.check_tls(upload, kw.get("device", DEVICE), kw.get("now", now))
        return next(ch for ch in checks if ch.id == "tls.cert")

    soon = cert_check(now=end - timedelta(days=10))
    assert soon.status is c.Status.WARN and f"expires on {end:%Y-%m-%d}" in soon.message
    expired = cert_check(now=end + timedelta(days=1))
    assert expired.status is c.Status.FAIL and f"expired on {end:%Y-%m-%d}" in expired.message
    assert expired.fix is not None and "linetap keys csr" in expired.fix
    early = cert_check(now=cert.not_valid_before_utc - timedelta(days=1))
    assert early.status is c.Status.FAIL and "clock" in (early.fix or "")
    other_name = cert_check(device="someone-else")
    assert other_name.status is c.Status.FAIL
    assert (
        f"the certificate is for '{DEVICE}' but this device is 'someone-else'" in other_name.message
    )
    foreign = cert_check(cert_file=pki.other_cert)
    assert foreign.status is c.Status.FAIL
    assert "does not belong to upload.key_file" in foreign.message
    assert "not issued by upload.ca_file" in foreign.message
    not_ca = c.check_tls(_upload(pki, ca_file=pki.device_dir / "device.crt"), DEVICE, now)[0]
    assert not_ca.status is c.Status.FAIL and "is not a CA" in not_ca.message
    off = c.check_tls(_upload(pki, tls=False), DEVICE, now)
    assert [(ch.id, ch.status) for ch in off] == [("tls", c.Status.WARN)]


# --------------------------------------------------------------------------- broker


def test_broker_accepts_without_publishing_the_will(pki: Pki, broker: Broker) -> None:
    status_topic = protocol.status_topic(DEVICE)
    # The broker certificate names "localhost" only (see pki).
    with MqttProbe(
        dataclasses.replace(broker, host="localhost"),
        ca=pki.ca,
        cert=pki.office_cert,
        key=pki.office_key,
        client_id=pki.office_cert.stem,
    ).connect() as office:
        office.subscribe(status_topic)
        check = c.check_broker(_upload(pki, port=broker.port), DEVICE)
        assert check.status is c.Status.PASS, check
        assert "client certificate accepted" in check.message
        with pytest.raises(TimeoutError):
            office.get(timeout=0.5)  # no "offline" will, no status at all
    assert f"as {DEVICE} (" in broker.log()  # mosquitto logs the connection, with our CN


def test_broker_failures_are_told_apart(pki: Pki, broker: Broker) -> None:
    def check(**kw: Any) -> c.Check:
        result = c.check_broker(_upload(pki, **{"port": broker.port, **kw}), DEVICE)
        assert result.status is c.Status.FAIL
        return result

    mismatch = check(host="127.0.0.1")
    assert "not valid for the name '127.0.0.1'" in mismatch.message
    refused = check(cert_file=pki.other_cert, key_file=pki.other_key)
    assert "the broker refused this device's certificate" in refused.message
    assert refused.fix is not None and "enroll-device" in refused.fix
    dns = check(host="no-such-host.invalid")
    assert dns.message.startswith("DNS: cannot resolve upload.host 'no-such-host.invalid'")
    untrusted = check(ca_file=pki.other_ca)
    assert "not trusted by upload.ca_file" in untrusted.message
    mismatched = check(cert_file=pki.other_cert)  # our key, another device's certificate
    assert mismatched.message.startswith(f"cannot load the TLS files for localhost:{broker.port}")


def test_broker_not_authorised_and_silent(tmp_path: Path) -> None:
    conf = "listener {port} 127.0.0.1\nallow_anonymous false\nlog_dest stderr\n"
    with run_mosquitto(tmp_path, conf) as plain:
        upload = UploadConfig(host=plain.host, port=plain.port, tls=False)
        refused = c.check_broker(upload, DEVICE)
    assert refused.status is c.Status.FAIL
    assert "the broker refused this device: Not authorized (0x87)" in refused.message
    assert refused.fix is not None and "enroll-device" in refused.fix

    # Something that accepts TCP but never speaks MQTT.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(1)
        upload = UploadConfig(host="127.0.0.1", port=mute.getsockname()[1], tls=False)
        start = time.monotonic()
        silent = c.check_broker(upload, DEVICE, timeout_s=0.5)
        assert time.monotonic() - start < 3.0
    assert silent.status is c.Status.FAIL and "sent no CONNACK within 0.5 s" in silent.message


# --------------------------------------------------------------------------- output


def test_text_lines() -> None:
    check = c.Check("tls.key", c.Status.FAIL, "mode 0644", "chmod 600 k")
    assert format_check(check) == ["FAIL  tls.key        mode 0644; fix: chmod 600 k"]
    many = c.Check("config", c.Status.FAIL, "2 problems", "x", ("a: one", "b: two"))
    assert format_check(many) == ["FAIL  config         a: one", "FAIL  config         b: two"]


def test_a_connected_uploader_answers_for_the_broker_without_a_probe(
    tmp_path: Path, linetap_bin: Path, pki: Pki
) -> None:
    """A probe would take the running uploader's session over (same certificate, same
    client id); when the uploader says it is connected, check believes it. Stale or
    disconnected: the real probe runs (here: refused, nothing listens)."""
    conf, _ = broker_down_config(tmp_path, pki)
    status_file = tmp_path / "run" / "uploader.json"
    status_file.parent.mkdir(parents=True, exist_ok=True)
    link = {"state": "connected", "since_utc": "2026-11-25T10:00:00+00:00", "broker": "ho:8883"}
    status_file.write_text(json.dumps({"pid": os.getpid(), "link": link}))
    run = run_check(linetap_bin, conf, "--skip", "audio", "--skip", "gpio")
    assert run.one("broker") == (
        "PASS",
        "the running uploader is connected to ho:8883 since 2026-11-25T10:00:00+00:00 "
        "(TLS, certificate accepted)",
    )
    status_file.write_text(
        json.dumps({"pid": os.getpid(), "link": {**link, "state": "connecting"}})
    )
    status, text = run_check(linetap_bin, conf, "--skip", "audio", "--skip", "gpio").one("broker")
    assert status == "FAIL" and "connection refused" in text
