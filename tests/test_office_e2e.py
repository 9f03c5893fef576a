"""The whole product over real mTLS: `linetap replay` seals, `linetap upload` ships through
a mosquitto with client certificates and the ACL, `linetap-office serve` verifies,
stores, indexes and acknowledges; then the office CLI verifies and exports.

Faults: the broker, the receiver and the uploader are each killed mid-upload and
restarted; in the end every recording is stored exactly once and acked on the device
only after the store has it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile

from buffers.outbox import Outbox, OutboxState
from firmware.cli import main as linetap_main
from headoffice import enroll
from headoffice.authz import Role, Scope
from headoffice.index import open_index
from headoffice.officeroot import CaLayout
from sealedrec.keys import load_device_key
from sealedrec.manifest import manifest_hash
from tests.conftest import VENV_BIN
from tests.helpers import RATE, config_text, replay_inputs, signed_manifest
from tests.mqtt_broker import office_broker_conf, run_mosquitto
from tests.office_accounts import add_account

DEVICE = "branch-7"


@contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    tails = "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists()
    )
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.root = tmp_path / "office"
        self.office = enroll.init_ca(self.root, "Test Office")
        self.client_cert, self.client_key = enroll.issue_office_client(self.root)
        self.data = tmp_path / "device"
        self.logs = [tmp_path / "receiver.log", tmp_path / "uploader.log"]
        self.broker_conf = office_broker_conf(self.root, tmp_path / "broker-data")

    def device_config(self, port: int) -> Path:
        text = config_text(
            self.tmp / "wav",
            lines=1,
            storage_format="sealed",
            recipients=(self.office.recipient,),
            data_dir=self.data,
        )
        text = text.replace('device_id = "test-device"', f'device_id = "{DEVICE}"')
        text += (
            f'\n[upload]\nhost = "127.0.0.1"\nport = {port}\ntls = true\n'
            f'ca_file = "{CaLayout(self.root).broker_ca}"\n'
            f'cert_file = "{self.data / "keys" / "device.crt"}"\n'
            f'key_file = "{self.data / "keys" / "device-tls.key"}"\n'
            "chunk_kib = 64\nack_timeout_s = 5\ntelemetry_s = 2\nbackoff_max_s = 2\n"
        )
        # [upload] must come before the [[lines]] array of tables in TOML.
        head, lines = text.split("[[lines]]", 1)
        tail_upload = lines.split("\n[upload]", 1)
        text = head + "[upload]" + tail_upload[1] + "\n[[lines]]" + tail_upload[0]
        path = self.tmp / "device.toml"
        path.write_text(text)
        return path

    def enroll_device(self, conf: Path, *, in_process: bool = False) -> None:
        """``linetap keys init`` and ``keys csr`` as an installer runs them (subprocesses),
        or, with ``in_process``, the same CLI called in this process (for tests about the
        office, not the device's key commands: a second off a setup each test repeats)."""
        csr = self.tmp / "dev.csr"
        init = ["keys", "init", "--config", str(conf)]
        request = ["keys", "csr", "--config", str(conf), "--out", str(csr)]
        if in_process:
            assert linetap_main(init) == 0 and linetap_main(request) == 0
        else:
            lt = str(VENV_BIN / "linetap")
            subprocess.run([lt, *init], check=True, capture_output=True)
            subprocess.run([lt, *request], check=True, capture_output=True)
        pub = load_device_key(self.data / "keys" / "device.key").public_key()
        from sealedrec.keys import public_key_b64

        cert = enroll.enroll_device(self.root, csr.read_bytes(), public_key_b64(pub))
        (self.data / "keys" / "device.crt").write_bytes(cert.read_bytes())

    def office_config(self, port: int) -> Path:
        path = self.tmp / "office.toml"
        path.write_text(
            f'root = "{self.root}"\n[broker]\nhost = "127.0.0.1"\nport = {port}\n'
            f'ca_file = "{CaLayout(self.root).broker_ca}"\ncert_file = "{self.client_cert}"\n'
            f'key_file = "{self.client_key}"\nkeepalive_s = 5\n'
        )
        return path

    def receiver(self, office_conf: Path):
        return process(
            [str(VENV_BIN / "linetap-office"), "serve", "--config", str(office_conf)], self.logs[0]
        )

    @contextmanager
    def subscribed_receiver(self, office_conf: Path) -> Iterator[subprocess.Popen[bytes]]:
        """:meth:`receiver`, once it has connected and subscribes (its log says so). An
        uploader started only then finds its first init taken, not dropped by a broker
        with no subscriber yet, which costs an ``ack_timeout_s`` and a resend (that path
        is tests/test_uploader.py's test_a_dropped_init_times_out_and_is_sent_again)."""
        before = self._subscribing()
        with self.receiver(office_conf) as proc:
            wait_for(
                lambda: proc.poll() is not None or self._subscribing() > before,
                30,
                "the receiver to subscribe",
                self.logs,
            )
            yield proc

    def _subscribing(self) -> int:
        log = self.logs[0]
        return log.read_text(errors="replace").count("subscribing") if log.exists() else 0

    def uploader(self, conf: Path):
        return process([str(VENV_BIN / "linetap"), "upload", "--config", str(conf)], self.logs[1])

    def acked(self) -> int:
        return len(Outbox(self.data / "outbox").entries(OutboxState.ACKED))


def test_sealed_calls_reach_the_office_over_mtls(tmp_path: Path):
    s = Setup(tmp_path)
    with run_mosquitto(tmp_path, s.broker_conf) as broker:
        conf = s.device_config(broker.port)
        s.enroll_device(conf)
        events = "1 line1 offhook\n6 line1 onhook\n9 line1 offhook\n15 line1 onhook\n"
        inputs = replay_inputs(tmp_path, events, seconds=20, channels=1)
        data = inputs.capture
        subprocess.run(
            [str(VENV_BIN / "linetap"), *inputs.argv(conf, s.data)], check=True, capture_output=True
        )
        assert len(Outbox(s.data / "outbox").entries(OutboxState.SEALED)) == 2
        with s.subscribed_receiver(s.office_config(broker.port)), s.uploader(conf):
            wait_for(lambda: s.acked() == 2, 60, "both recordings acked", s.logs)
            # Telemetry: retained status with the outbox counts.
    index = open_index(f"sqlite:///{s.root / 'index.sqlite3'}")
    rows = index.search(device=DEVICE)
    # The office CLI acts as a named account: an office-wide supervisor (TOTP, as the
    # office's default [accounts] requires for the export right).
    sup = add_account(index, "sup", [Role.SUPERVISOR], Scope.all())
    index.close()
    assert sorted(r.seq for r in rows) == [1, 2]
    office = str(VENV_BIN / "linetap-office")
    verify = subprocess.run(
        [
            office,
            "verify",
            "--store",
            str(s.root),
            "--identity",
            str(s.office.office_key),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
        env=sup.subprocess_env(),
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["ok"] is True
    first = min(rows, key=lambda r: r.seq)
    out = tmp_path / "call.wav"
    subprocess.run(
        [
            office,
            "export",
            first.recording_id,
            "--store",
            str(s.root),
            "--identity",
            str(s.office.office_key),
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
        env=sup.subprocess_env(),
    )
    samples, rate = soundfile.read(out, dtype="int16")
    assert rate == RATE
    np.testing.assert_array_equal(samples, data[: len(samples), 0])  # pre-roll reaches frame 0
    assert len(samples) == 7 * RATE


def _synthetic(
    s: Setup, sizes: list[int], *, first_seq: int = 1, prev: str = "0" * 64
) -> list[tuple[str, dict[str, bytes]]]:
    """Sealed-looking entries with random blobs, signed and chained by the enrolled device
    key (transport and storage do not decrypt; they verify signatures and hashes)."""
    key = load_device_key(s.data / "keys" / "device.key")
    entries = []
    for seq, size in enumerate(sizes, start=first_seq):
        blob = os.urandom(size)
        rec = f"syn-{seq:04d}"
        manifest = signed_manifest(
            key,
            device_id=DEVICE,
            rec=rec,
            seq=seq,
            prev=prev,
            blob=blob,
            recipients=[s.office.recipient],
        )
        prev = manifest_hash(manifest)
        entries.append(
            (rec, {"manifest.json": json.dumps(manifest).encode(), "recording.age": blob})
        )
    return entries


def _add(s: Setup, entries: list[tuple[str, dict[str, bytes]]]) -> list[str]:
    outbox = Outbox(s.data / "outbox")
    for rec, files in entries:
        outbox.add(int(rec.split("-")[1]), rec, files)
    return [rec for rec, _ in entries]


def test_broker_receiver_and_uploader_killed_mid_upload(tmp_path: Path):
    s = Setup(tmp_path)
    with run_mosquitto(tmp_path, s.broker_conf) as broker:
        conf = s.device_config(broker.port)
        s.enroll_device(conf)
        made = _synthetic(s, [30_000_000, 300_000, 50_000, 5_000_000, 1_000, 70_000, 2_000])
        ids = _add(s, made[:5])  # the last two are "recorded" while the network is down
        office_conf = s.office_config(broker.port)

        def store_parts() -> int:
            parking = s.root / "parking"
            return sum(1 for _ in parking.rglob("*.part")) if parking.exists() else 0

        with s.subscribed_receiver(office_conf) as receiver:
            with s.uploader(conf) as uploader:
                wait_for(lambda: store_parts() > 20, 60, "the first chunks", s.logs)
                broker.stop(kill=True)  # 1. broker dies mid-upload (network gone)...
                ids += _add(s, made[5:])  # ...while the device keeps recording
                time.sleep(1.0)
                broker.start()
                wait_for(
                    lambda: store_parts() > 60,
                    60,
                    "upload resumed after the broker restart",
                    [*s.logs, broker.log_path],
                )
                uploader.send_signal(signal.SIGKILL)  # 2. uploader dies mid-upload
                uploader.wait(timeout=10)
            receiver.send_signal(signal.SIGKILL)  # 3. receiver dies too
            receiver.wait(timeout=10)
        assert s.acked() < len(ids), "the faults must hit before everything was done"
        with s.subscribed_receiver(office_conf), s.uploader(conf):
            wait_for(lambda: s.acked() == len(ids), 120, "every recording acked", s.logs)
    index = open_index(f"sqlite:///{s.root / 'index.sqlite3'}")
    rows = index.search(device=DEVICE)
    assert sorted(r.recording_id for r in rows) == ids  # each exactly once
    assert index.gaps() == []
    index.close()
    for rec in ids:
        entry = Outbox(s.data / "outbox").find(rec)
        assert entry is not None and entry.state is OutboxState.ACKED
        stored = next(r for r in rows if r.recording_id == rec)
        assert (
            s.root / stored.path if not Path(stored.path).is_absolute() else Path(stored.path)
        ).read_bytes() == (entry.path / "recording.age").read_bytes()
    assert not list((s.root / "parking").rglob("*.part"))


def test_two_hundred_small_recordings(tmp_path: Path):
    s = Setup(tmp_path)
    with run_mosquitto(tmp_path, s.broker_conf) as broker:
        conf = s.device_config(broker.port)
        s.enroll_device(conf)
        ids = _add(s, _synthetic(s, [2_000 + 13 * i for i in range(200)]))
        with s.subscribed_receiver(s.office_config(broker.port)), s.uploader(conf):
            wait_for(lambda: s.acked() == 200, 120, "200 recordings acked", s.logs)
    index = open_index(f"sqlite:///{s.root / 'index.sqlite3'}")
    assert sorted(r.recording_id for r in index.search(device=DEVICE, limit=1000)) == ids
    assert index.gaps() == [] and index.alarms() == []
    index.close()


def test_a_device_enrolled_elsewhere_is_told_its_certificate_was_refused(tmp_path: Path):
    """The broker refuses a client certificate from another CA. With TLS 1.3 the alert
    arrives after the handshake, as a read error: the uploader still says what it is
    (not "network down") and what to do."""
    s = Setup(tmp_path)
    other = tmp_path / "other-office"
    enroll.init_ca(other, "Other Office")
    with run_mosquitto(tmp_path, s.broker_conf) as broker:
        conf = s.device_config(broker.port)  # trusts the real office's broker...
        s.root, real_root = other, s.root
        s.enroll_device(conf)  # ... but was enrolled at the other office
        s.root = real_root
        with s.uploader(conf):
            wait_for(
                lambda: "refused this device's TLS certificate" in s.logs[1].read_text(),
                20,
                "the uploader to report the refused certificate",
                s.logs,
            )
    log = s.logs[1].read_text()
    assert "(tlsv1 alert unknown ca)" in log
    assert "linetap provision install-cert" in log
    # When the broker's close overtakes its alert, the uploader still points the right way.
    for line in log.splitlines():
        if "cannot connect" in line:
            assert "refused this device's TLS certificate" in line or (
                "a refused device certificate looks like this" in line
            ), line
