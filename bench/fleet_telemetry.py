"""Fleet health's figures: how many telemetry messages one office process absorbs, and
the time from a device's last will to the e-mail.

1. **Absorbed telemetry.** ``--devices`` simulated devices (1,000: each enrolled at the
   office with its own Ed25519 key, each status carrying a head signed with it) publish
   their retained status on ``linetap/{device}/status`` through mosquitto with the
   office's TLS config on 127.0.0.1, in compressed time: every device's next message
   (its clock 30 s later) as fast as the broker takes them, ``--rounds`` messages per
   device per batch. One ``linetap-office serve`` (SQLite index) takes them in: bounded
   parse, head verification, latest state, hourly rollup, rules and alarm sync per
   message. A batch is timed from its first publish until the index's rollups count
   every message (``fleet_device_hours.messages``, counted once per stored message).
   The simulator is one client (certificate ``fleet-sim``) that the bench's broker ACL
   lets write every device's status: opening 1,000 TLS sessions would time the broker.
   Needed for 1,000 devices every 30 s: 33 messages/s.

2. **Last will to e-mail.** A real enrolled appliance (``linetap upload``) is killed
   (SIGKILL: the broker publishes its will); the office raises ``offline`` and the
   notification dispatcher mails it through a real aiosmtpd (STARTTLS + AUTH, from
   tests/notify_servers.py) on 127.0.0.1. Timed from the kill to the message's arrival,
   ``--repeats`` times (the uploader restarted in between, its ``offline`` cleared).
   The office runs with ``[fleet] raise_after_s = 0`` and ``[notify] batch_s = 0``:
   what remains is the broker's will, the ingest, and the dispatcher's poll (5 s). With
   the default damping (``raise_after_s = 60``, ``batch_s = 60``) add those two.

Prints min / median / max over the batches and repeats. Everything runs on 127.0.0.1;
every process started is stopped at exit.

Run: .venv/bin/python bench/fleet_telemetry.py [--devices 1000] [--rounds 3] [--batches 3]
     [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import getpass
import json
import signal
import sqlite3
import ssl
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from bench_common import print_table_header
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from upload_common import (
    HOST,
    MOSQUITTO,
    RECEIVER,
    START_TIMEOUT_S,
    BenchError,
    Office,
    Processes,
    UploadSettings,
    enroll_device,
    exit_on_sigterm,
    make_office,
    start_receiver,
    start_uploader,
    wait_until,
    workdir,
    write_device_toml,
)

from headoffice import brokerconf
from sealedrec.head import sign_head
from sealedrec.keys import public_key_b64
from tests.mqtt_broker import free_port
from tests.notify_servers import SmtpServer, self_signed

SIMULATOR = "fleet-sim"
SMTP_USER, SMTP_PASSWORD = "linetap", "bench-smtp-password"
WILL_DEVICE = "branch-7"
PACE_EVERY = 100  # check the office's progress every this many messages ...
MAX_QUEUED = 500  # ... and keep at most this many waiting at the broker
MAIL_WAIT_S = 60.0


def stats_line(name: str, values: list[float], unit: str) -> str:
    return (
        f"{name:<34} {min(values):>9.1f} {statistics.median(values):>9.1f} "
        f"{max(values):>9.1f}  {unit} ({len(values)} runs)"
    )


# --------------------------------------------------------------------------- the office


def start_broker(procs: Processes, office: Office, work: Path) -> int:
    """mosquitto with the office's config, plus the simulator's right to write every
    device's status (the bench's stand-in for 1,000 device certificates)."""
    port = free_port()
    conf = brokerconf.write_broker_config(
        office.root,
        port,
        persistence_location=work / "broker-data",
        bind_address=HOST,
        run_as_user=getpass.getuser(),
    )
    acl = office.layout.broker_acl
    acl.write_text(acl.read_text() + f"\nuser {SIMULATOR}\ntopic write linetap/+/status\n")
    proc = procs.start("mosquitto", [MOSQUITTO, "-c", conf])
    wait_until(lambda: "running" in proc.tail(), START_TIMEOUT_S, "mosquitto to start", procs)
    return port


def office_toml(office: Office, path: Path, port: int, extra: str = "") -> Path:
    office.write_office_toml(path, port, RECEIVER)
    path.write_text(path.read_text() + extra)
    return path


def enroll_simulated(office: Office, count: int) -> dict[str, Ed25519PrivateKey]:
    """``count`` device records (the signing key is what the ingest verifies heads with)."""
    keys: dict[str, Ed25519PrivateKey] = {}
    office.layout.devices.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        device = f"sim-{i:04d}"
        key = Ed25519PrivateKey.generate()
        record = {"device_id": device, "signing_key": public_key_b64(key.public_key())}
        office.layout.device_record(device).write_text(json.dumps(record))
        keys[device] = key
    return keys


def counted(office: Office) -> int:
    """Status messages stored so far (the rollups count each once)."""
    path = office.index_path()
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            (n,) = db.execute(
                "SELECT COALESCE(SUM(messages), 0) FROM fleet_device_hours"
            ).fetchone()
            return int(n)
    except sqlite3.OperationalError:
        return 0


def stored_at_least(office: Office, n: int) -> bool:
    return counted(office) >= n


def keep_queue_under(office: Office, procs: Processes, n: int) -> None:
    """Wait until at least ``n`` messages are stored: the broker queues at most
    ``max_queued_messages`` (1,000) for the office and drops the rest (telemetry is
    repeated, so a burst costs a message, not a state), which would time a loss."""
    if counted(office) < n:
        wait_until(functools.partial(stored_at_least, office, n), 600, "the office", procs)


# --------------------------------------------------------------------------- 1. absorbed


@contextlib.contextmanager
def simulator(office: Office, port: int) -> Iterator[mqtt.Client]:
    cert, key = office.client_files(SIMULATOR)
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=SIMULATOR,
        protocol=mqtt.MQTTv5,
    )
    client.tls_set(
        ca_certs=str(office.ca_file),
        certfile=str(cert),
        keyfile=str(key),
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(HOST, port, keepalive=30)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def status(device: str, head: dict[str, object], device_time: datetime) -> bytes:
    doc = {
        "state": "online",
        "device_id": device,
        "time_utc": device_time.isoformat(timespec="seconds"),
        "outbox": {"unacked_count": 0, "oldest_unacked_age_s": None},
        "upload": {"connected": True, "backlog": 0},
        "disk_free_bytes": 12 * 1024**3,
        "clock_sync": {"synchronized": True, "max_error_us": 800, "source": "adjtimex"},
        "recorder": {
            "lines": [
                {"name": f"line{n}", "state": "idle", "led": "off",
                 "levels": {"rms_dbfs": -62.5, "peak_dbfs": -50.1, "clipped_samples": 0,
                            "silence_fraction": 1.0, "hum": {"50hz_dbfs": -80.2}}}
                for n in (1, 2)
            ],
            "faults": {"audio": None, "storage": None},
        },
        "head": head,
    }  # fmt: skip
    return json.dumps(doc, sort_keys=True).encode()


def absorbed(args: argparse.Namespace, procs: Processes, office: Office, port: int) -> list[float]:
    keys = enroll_simulated(office, args.devices)
    start = datetime.now(UTC)
    heads = {
        d: sign_head(
            device_id=d,
            seq=0,
            manifest_sha256="0" * 64,
            recording_id=None,
            signed_at=start - timedelta(hours=1),
            key=k,
        )
        for d, k in keys.items()
    }
    start_receiver(procs, office_toml(office, office.root.parent / "office.toml", port), RECEIVER)
    rates: list[float] = []
    step = 0
    with simulator(office, port) as client:
        for batch in range(args.batches):
            before = counted(office)
            total = args.devices * args.rounds
            t0 = time.monotonic()
            sent = 0
            for _ in range(args.rounds):
                step += 1
                device_time = start + timedelta(seconds=30 * step)
                for device, head in heads.items():
                    payload = status(device, head, device_time)
                    client.publish(f"linetap/{device}/status", payload, qos=1, retain=True)
                    sent += 1
                    if sent % PACE_EVERY == 0:
                        keep_queue_under(office, procs, before + sent - MAX_QUEUED)
            published = time.monotonic() - t0
            target = before + total
            done = wait_until(
                functools.partial(stored_at_least, office, target),
                600,
                f"batch {batch + 1}: {total} messages stored",
                procs,
                interval=0.05,
            )
            seconds = done - t0
            rates.append(total / seconds)
            print(
                f"batch {batch + 1}: {total} messages published in {published:.1f} s, "
                f"all stored after {seconds:.1f} s: {total / seconds:.0f} messages/s",
                flush=True,
            )
    return rates


# --------------------------------------------------------------------------- 2. will -> mail


def will_to_mail(
    args: argparse.Namespace, procs: Processes, office: Office, port: int, work: Path
) -> list[float]:
    cert, key = self_signed(work)
    smtp = SmtpServer(cert, key, SMTP_USER, SMTP_PASSWORD)
    smtp.start()
    try:
        device = enroll_device(office, WILL_DEVICE, work / "device")
        device_toml = write_device_toml(
            device, office, work / "device.toml", port, UploadSettings(chunk_kib=64)
        )
        text = device_toml.read_text().replace("[upload]\n", "[upload]\ntelemetry_s = 2\n", 1)
        device_toml.write_text(text)
        extra = (
            "\n[fleet]\nraise_after_s = 0\nclear_after_s = 0\nflap_window_s = 0\ntick_s = 1\n"
            f"\n[notify]\nbatch_s = 0\nmax_per_hour = 3600\n[notify.email]\n"
            f'host = "{HOST}"\nport = {smtp.port}\nca_file = "{cert}"\n'
            f'username = "{SMTP_USER}"\npassword = "{SMTP_PASSWORD}"\n'
            'from = "linetap@office.test"\nto = ["ops@office.test"]\n'
        )
        toml = office_toml(office, work / "office-mail.toml", port, extra)
        start_receiver(procs, toml, "receiver-mail")
        times: list[float] = []
        for repeat in range(args.repeats):
            uploader = start_uploader(procs, device_toml, f"uploader-{repeat}")
            wait_until(
                lambda: device_online(office, WILL_DEVICE),
                60,
                "the device online at the office",
                procs,
                interval=0.05,
            )
            mails = len(smtp.messages())
            uploader.popen.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            uploader.popen.wait(10)
            procs.procs.remove(uploader)
            arrived = wait_until(
                functools.partial(offline_mailed, smtp, mails),
                MAIL_WAIT_S,
                "the offline e-mail",
                procs,
                interval=0.01,
            )
            times.append(arrived - killed)
            print(f"repeat {repeat + 1}: SIGKILL -> e-mail in {arrived - killed:.2f} s", flush=True)
        return times
    finally:
        smtp.stop()


def offline_mailed(smtp: SmtpServer, seen: int) -> bool:
    """An e-mail about an offline alarm among those after the first ``seen``."""
    return any("offline" in str(m.message["Subject"]) for m in smtp.messages()[seen:])


def device_online(office: Office, device: str) -> bool:
    path = office.index_path()
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute(
                "SELECT online FROM fleet_devices WHERE device_id = ?", (device,)
            ).fetchone()
    except sqlite3.OperationalError:
        return False
    return bool(row and row[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="messages per device per batch")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="last-will -> e-mail runs")
    parser.add_argument("--quick", action="store_true", help="100 devices, 1 round, 2 of each")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.devices, args.rounds, args.batches, args.repeats = 100, 1, 2, 2
    exit_on_sigterm()
    with workdir(args.keep, "fleet-bench-") as work, Processes(work / "logs") as procs:
        office = make_office(work / "office", [RECEIVER, SIMULATOR])
        port = start_broker(procs, office, work)
        try:
            rates = absorbed(args, procs, office, port)
            for proc in [p for p in procs.procs if p.name == RECEIVER]:
                procs.stop(proc)
            mails = will_to_mail(args, procs, office, port, work)
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
    print()
    print_table_header(f"{'figure':<34} {'min':>9} {'median':>9} {'max':>9}")
    print(stats_line(f"telemetry absorbed ({args.devices} devices)", rates, "messages/s"))
    print(stats_line("last will -> e-mail", mails, "s"))
    need = args.devices / 30
    print(f"\n{args.devices} devices every 30 s need {need:.0f} messages/s: "
          f"{min(rates) / need:.1f}x headroom at the slowest batch")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
