"""Fleet health over the real parts: mosquitto with the office's TLS and ACL, a real
`linetap upload` as the appliance (its retained telemetry, signed head and last will), a
real `linetap-office serve` taking the telemetry in, and `linetap replay --format sealed`
making the calls (the manifests' level summaries measured by the real recorder).

One device, two lines: line1 is dead (silence through whole calls), line2 carries 50 Hz
mains hum. Then: the uploader is killed (SIGKILL: the broker publishes its last will) and
restarted; the broker stops taking its uploads while it keeps recording (its signed head
runs ahead of the office and its backlog ages), and takes them again; a stolen TLS
identity publishes a head signed by another key.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import soundfile
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from headoffice.fleet.state import AlarmRow, FleetStore
from headoffice.index import Index, open_index
from headoffice.officeroot import CaLayout
from sealedrec.head import sign_head
from tests.conftest import VENV_BIN
from tests.helpers import RATE, config_text, replay_argv
from tests.mqtt_broker import Broker, run_mosquitto
from tests.office_harness import DeviceKeys, HostileDevice, enroll_hostile
from tests.test_office_e2e import DEVICE, Setup, wait_for

FLEET = """
[fleet]
raise_after_s = 1
clear_after_s = 1
flap_window_s = 0
tick_s = 1
backlog_s = 3
head_ahead_s = 3
"""
CALLS = "1 line1 offhook\n1 line2 offhook\n14 line1 onhook\n14 line2 onhook\n" + (
    "17 line1 offhook\n17 line2 offhook\n30 line1 onhook\n30 line2 onhook\n"
)
SECONDS = 32
HUM_AMPLITUDE = 0.1  # -23 dBFS of 50 Hz: over the -30 dBFS that `linetap check` fails
ALARM_WAIT_S = 30.0
INTRUDER = "stolen-3"


def capture(path: Path) -> None:
    """Two channels: line1 digital silence, line2 a 50 Hz mains hum alone."""
    t = np.arange(SECONDS * RATE) / RATE
    hum = np.round(HUM_AMPLITUDE * 32767 * np.sin(2 * np.pi * 50 * t)).astype(np.int16)
    soundfile.write(path, np.stack([np.zeros_like(hum), hum], axis=1), RATE, subtype="PCM_16")


def device_config(s: Setup, port: int) -> Path:
    """Setup's device config with two lines (line1 on channel 0, line2 on 1)."""
    text = config_text(
        s.tmp / "wav",
        lines=2,
        storage_format="sealed",
        recipients=(s.office.recipient,),
        data_dir=s.data,
    )
    text = text.replace('device_id = "test-device"', f'device_id = "{DEVICE}"')
    upload = (
        f'[upload]\nhost = "127.0.0.1"\nport = {port}\ntls = true\n'
        f'ca_file = "{CaLayout(s.root).broker_ca}"\n'
        f'cert_file = "{s.data / "keys" / "device.crt"}"\n'
        f'key_file = "{s.data / "keys" / "device-tls.key"}"\n'
        "chunk_kib = 64\nack_timeout_s = 5\ntelemetry_s = 1\nbackoff_max_s = 1\n"
    )
    head, lines = text.split("[[lines]]", 1)
    path = s.tmp / "device.toml"
    path.write_text(head + upload + "\n[[lines]]" + lines)
    return path


def replay(conf: Path, s: Setup, audio: Path, events: Path) -> None:
    argv = replay_argv(conf, audio, events, s.data, "--format", "sealed")
    done = subprocess.run(
        [str(VENV_BIN / "linetap"), *argv], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def open_alarms(index: Index) -> dict[tuple[str, str | None, str], AlarmRow]:
    return {(a.device_id, a.line, a.kind): a for a in FleetStore(index).alarms()}


def wait_alarm(index: Index, s: Setup, key: tuple[str, str | None, str], present: bool) -> None:
    try:
        wait_for(
            lambda: (key in open_alarms(index)) is present,
            ALARM_WAIT_S,
            f"alarm {key} {'raised' if present else 'cleared'}",
            s.logs,
        )
    except AssertionError as exc:
        raise AssertionError(f"open alarms: {sorted(open_alarms(index), key=str)}\n{exc}") from None


def block_uploads(s: Setup, broker: Broker, blocked: bool) -> None:
    """The broker's ACL with (or without) a deny on the device's upload topics: its
    telemetry still flows, its recordings do not."""
    acl = CaLayout(s.root).broker_acl
    text = acl.read_text().split("\n# fleet test block\n")[0]
    if blocked:
        text += f"\n# fleet test block\nuser {DEVICE}\ntopic deny linetap/{DEVICE}/up/#\n"
    acl.write_text(text)
    broker.reload()


@dataclass
class World:
    s: Setup
    broker: Broker
    index: Index
    conf: Path
    audio: Path
    events: Path

    def alarm(self, key: tuple[str, str | None, str], present: bool = True) -> None:
        wait_alarm(self.index, self.s, key, present)

    def replay(self) -> None:
        replay(self.conf, self.s, self.audio, self.events)


def lines_are_judged_and_the_last_will_raises_offline(w: World) -> None:
    s = w.s
    with s.uploader(w.conf) as proc:
        wait_for(lambda: s.acked() == 4, 60, "the 4 calls acked", s.logs)
        # The lines: dead audio on line1, hum on line2, and nothing else.
        w.alarm((DEVICE, "line1", "silent_line"))
        w.alarm((DEVICE, "line2", "hum"))
        alarms = open_alarms(w.index)
        assert (DEVICE, "line2", "silent_line") not in alarms
        assert (DEVICE, "line1", "hum") not in alarms
        assert "-23." in alarms[(DEVICE, "line2", "hum")].detail
        row = FleetStore(w.index).device(DEVICE)
        assert row is not None and row.head is not None and row.head.seq == 4
        # SIGKILL: the broker publishes the last will; the office raises offline.
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = time.monotonic()
        w.alarm((DEVICE, None, "offline"))
        assert time.monotonic() - killed_at < 15
        assert "last will" in open_alarms(w.index)[(DEVICE, None, "offline")].detail


def held_back_recordings_put_the_head_ahead(w: World) -> None:
    s = w.s
    with s.uploader(w.conf):
        w.alarm((DEVICE, None, "offline"), present=False)  # back: cleared
        block_uploads(s, w.broker, True)
        w.replay()  # seq 5-8 sealed, their uploads refused by the broker
        w.alarm((DEVICE, None, "head_ahead"))
        w.alarm((DEVICE, None, "backlog"))
        ahead = open_alarms(w.index)[(DEVICE, None, "head_ahead")].detail
        assert "(device head seq 8, office seq 4)" in ahead, ahead
        assert (DEVICE, None, "missing_tail") not in open_alarms(w.index)
        block_uploads(s, w.broker, False)
        wait_for(lambda: s.acked() == 8, 60, "all 8 calls acked", s.logs)
        w.alarm((DEVICE, None, "head_ahead"), present=False)
        w.alarm((DEVICE, None, "backlog"), present=False)


def a_forged_head_is_refused(w: World, intruder: DeviceKeys) -> None:
    """The intruder's status, its head signed by a key that is not its enrolled one."""
    now = datetime.now(UTC)
    head = sign_head(
        device_id=INTRUDER,
        seq=99,
        manifest_sha256="b" * 64,
        recording_id="rec-99",
        signed_at=now,
        key=Ed25519PrivateKey.generate(),
    )
    doc = {"state": "online", "device_id": INTRUDER, "time_utc": now.isoformat(), "head": head}
    with HostileDevice.connect(w.broker, intruder, CaLayout(w.s.root).broker_ca) as h:
        h.publish(f"linetap/{INTRUDER}/status", json.dumps(doc).encode())
    wait_for(
        lambda: bool(w.index.alarms(INTRUDER, "telemetry_forged")),
        ALARM_WAIT_S,
        "the forged head refused",
        w.s.logs,
    )
    w.alarm((INTRUDER, None, "telemetry_forged"))
    assert FleetStore(w.index).device(INTRUDER) is None  # nothing of it kept


def test_fleet_health_over_the_real_parts(tmp_path: Path):
    s = Setup(tmp_path)
    intruder = enroll_hostile(s.root, tmp_path / "intruder", INTRUDER)
    with run_mosquitto(tmp_path, s.broker_conf) as broker:
        conf = device_config(s, broker.port)
        s.enroll_device(conf, in_process=True)
        audio, events = tmp_path / "lines.wav", tmp_path / "events.txt"
        capture(audio)
        events.write_text(CALLS)
        replay(conf, s, audio, events)  # 2 calls on each line: seq 1-4, head seq 4
        office_conf = s.office_config(broker.port)
        office_conf.write_text(office_conf.read_text() + FLEET)
        index = open_index(f"sqlite:///{s.root / 'index.sqlite3'}")
        try:
            with s.subscribed_receiver(office_conf):
                w = World(s, broker, index, conf, audio, events)
                lines_are_judged_and_the_last_will_raises_offline(w)
                held_back_recordings_put_the_head_ahead(w)
                a_forged_head_is_refused(w, intruder)
        finally:
            index.close()
    log = s.logs[0].read_text()
    assert f"telemetry of device={INTRUDER} refused" in log
    assert "not by the device's key" in log
