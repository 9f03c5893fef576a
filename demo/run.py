"""`make demo`: a simulated appliance records a call; the head office receives, verifies
and decrypts it — every part real, on this machine.

1. Head office: CA, broker certificate, age identity (`linetap-office init`), a client
   certificate for its receiver, and a mosquitto config with TLS client certificates and
   the per-device ACL; mosquitto runs on a free local port.
2. Appliance: signing key and TLS key (`linetap keys init|csr`), enrolled by the office
   (`linetap-office enroll-device`); its config names the office's key and broker.
3. The real recorder pipeline replays the bundled sample call (speech made with
   espeak-ng) with its hook script — pre-roll, debounce, call state, journal, FLAC, age,
   signed manifest, outbox — faster than real time (`linetap replay`).
4. `linetap upload` ships it over MQTT v5 + mTLS; `linetap-office serve` verifies the
   signature, stores and indexes it, and only then acknowledges; the appliance marks it
   acked.
5. The office verifies the store (signatures, hashes, chain, audio) and exports the call,
   acting as the demo account (supervisor + auditor, whole office): the office command
   line always acts as a named account, and each access is an audit-ledger entry first.
   The demo's office.toml asks a one-time code of admins only (`[accounts]
   totp_required_for = ["admin"]`), so the demo account logs in with its password; the
   default also asks it of supervisors.
6. In a terminal (stdin and stdout both a TTY), the demo ends by serving the office's web
   review (`linetap-office web`) on 127.0.0.1 and a free port, and prints its URL with the
   demo account's name and password; it serves until Ctrl-C (or SIGTERM), then stops it
   and exits 0. Plain HTTP is fine there: loopback only, this machine's own browser; an
   office serves it over TLS (headoffice/INSTALL.md, "Web UI"). Not in a terminal (CI,
   `make demo < /dev/null`), the demo exits after step 5 as before.

    python -m demo [--out demo-out]      (make demo)

The demo wires both ends, so it lives outside the device packages: the device image
carries neither it nor the head office.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import firmware.samples
from buffers.outbox import Outbox, OutboxState
from headoffice import brokerconf, enroll
from headoffice.access import PASSWORD_ENV, USER_ENV
from headoffice.accounts import Accounts
from headoffice.authz import Role, Scope
from headoffice.cli_users import bootstrap_gate, record_event
from headoffice.config import load_office_config
from headoffice.enroll import CaLayout
from headoffice.index import open_index
from sealedrec.keys import load_device_key, public_key_b64

SAMPLES = Path(firmware.samples.__file__).resolve().parent  # the sample call and its hooks
DEVICE_TOML = Path(__file__).resolve().parent / "demo.toml"
BIN = Path(sys.executable).parent
DEVICE = "demo-appliance"
DEMO_USER = "demo"


def _demo_accounts(office_toml: Path) -> str:
    """The office's first admin and the demo account (supervisor + auditor, scope
    everything), made as `linetap-office user add` makes the first admin (file-system
    trust, each an admin leaf by "bootstrap"); the demo account's password."""
    cfg = load_office_config(office_toml)
    password = secrets.token_urlsafe(12)
    with open_index(cfg.index_url) as index:
        accounts = Accounts(index, cfg.accounts, sites=cfg.sites)
        gate = bootstrap_gate(index, cfg)
        admin = accounts.add_user("demo-admin", secrets.token_urlsafe(24), [Role.ADMIN])
        record_event(gate, admin)
        roles = [Role.SUPERVISOR, Role.AUDITOR]
        record_event(gate, accounts.add_user(DEMO_USER, password, roles, Scope.all()))
    return password


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(argv: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"demo: {' '.join(argv[:3])} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out waiting for {what}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _serve_web(office: str, office_toml: Path, password: str, log_path: Path) -> int:
    """Step 6: `linetap-office web` on 127.0.0.1:<free port> until Ctrl-C or SIGTERM."""
    port = _free_port()
    stop: list[int] = []
    # Noted here, acted on in the loop below. Ctrl-C reaches the web server as well (same
    # process group); the SIGTERM sent to it then is for a SIGTERM sent to the demo alone.
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: stop.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    with open(log_path, "ab") as log:
        web = subprocess.Popen(
            [
                office,
                "web",
                "--config",
                str(office_toml),
                "--listen",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 30
        while not _port_open(port):
            if stop:
                return 0
            if web.poll() is not None or time.monotonic() > deadline:
                print(f"demo: the web review did not start; see {log_path}")
                return 1
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/"
        rule = "=" * 78
        print(
            f"\n{rule}\n"
            "  The office's web review (linetap-office web) is running. Plain HTTP on\n"
            "  loopback is fine for this demo; an office serves it over TLS\n"
            '  (headoffice/INSTALL.md, "Web UI").\n\n'
            f"      {url}\n\n"
            f"  account   {DEMO_USER}  (supervisor + auditor, the whole office)\n"
            f"  password  {password}\n"
            "  No one-time code: the demo's office.toml asks TOTP of admins only\n"
            '  ([accounts] totp_required_for = ["admin"]).\n\n'
            f"  Server log: {log_path}\n"
            "  Ctrl-C to stop.\n"
            f"{rule}",
            flush=True,
        )
        while not stop and web.poll() is None:
            time.sleep(0.2)
        if not stop and web.returncode != 0:  # 0: it saw the Ctrl-C first
            print(f"demo: the web review stopped by itself (exit {web.returncode}); see {log_path}")
            return 1
        print("\ndemo: stopping the web review", flush=True)
        return 0
    finally:
        _stop(web)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - a linear script, step by step
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    if shutil.which("mosquitto") is None:
        raise SystemExit(
            "demo: mosquitto is not installed: apt-get install mosquitto (make demo does it as root)"
        )
    office_root, device_dir = out / "office", out / "device"
    out.mkdir(parents=True, exist_ok=True)
    lt, office = str(BIN / "linetap"), str(BIN / "linetap-office")

    # 1. Head office.
    setup = enroll.init_ca(office_root, "Demo Head Office")
    client_cert, client_key = enroll.issue_office_client(office_root)
    port = _free_port()
    broker_conf = brokerconf.write_broker_config(
        office_root,
        port,
        persistence_location=out / "broker",
        bind_address="127.0.0.1",
        run_as_user=getpass.getuser(),
    )
    print(f"[office]  identity {setup.office_key}; recipient {setup.recipient}")
    office_toml = out / "office.toml"
    office_toml.write_text(
        f'root = "{office_root}"\n[broker]\nhost = "127.0.0.1"\nport = {port}\n'
        f'ca_file = "{CaLayout(office_root).broker_ca}"\ncert_file = "{client_cert}"\nkey_file = "{client_key}"\n'
        '[accounts]\ntotp_required_for = ["admin"]\n'
    )
    password = _demo_accounts(office_toml)
    as_demo = {**os.environ, USER_ENV: DEMO_USER, PASSWORD_ENV: password}
    print(
        f"[office]  account {DEMO_USER} (supervisor + auditor), password {password}: "
        f"{USER_ENV}={DEMO_USER} {PASSWORD_ENV}=... linetap-office ls --config {office_toml}"
    )

    # 2. Appliance config, keys, enrollment.
    text = DEVICE_TOML.read_text()
    text = text.replace("RECIPIENT", setup.recipient).replace("DATA_DIR", str(device_dir))
    text = text.replace("SAMPLES", str(SAMPLES)).replace("BROKER_PORT", str(port))
    text = text.replace("CA_FILE", str(CaLayout(office_root).broker_ca))
    device_toml = out / "linetap.toml"
    device_toml.write_text(text)
    _run([lt, "validate-config", "--config", str(device_toml)])
    _run([lt, "keys", "init", "--config", str(device_toml)])
    csr = out / f"{DEVICE}.csr"
    _run([lt, "keys", "csr", "--config", str(device_toml), "--out", str(csr)])
    signing = public_key_b64(load_device_key(device_dir / "keys" / "device.key").public_key())
    _run(
        [
            office,
            "enroll-device",
            "--root",
            str(office_root),
            "--csr",
            str(csr),
            "--signing-key",
            signing,
        ]
    )
    shutil.copy(office_root / "devices" / f"{DEVICE}.crt", device_dir / "keys" / "device.crt")
    print(
        f"[device]  enrolled {DEVICE}: signing key {signing[:16]}…, TLS client certificate from the office CA"
    )

    # 3. Record: the real pipeline over the sample call.
    print(
        _run(
            [
                lt,
                "replay",
                "--config",
                str(device_toml),
                "--audio",
                str(SAMPLES / "sample_call.flac"),
                "--events",
                str(SAMPLES / "sample_call.events"),
                "--out",
                str(device_dir),
                "--start-utc",
                datetime.now(UTC).isoformat(),
            ]
        )
        .rstrip()
        .replace("\n", "\n[device]  ")
        .replace("replayed", "[device]  replayed", 1)
    )
    outbox = Outbox(device_dir / "outbox")
    total = len(outbox.entries())

    # 4. Upload over MQTT v5 + mTLS; the office stores, indexes, acks.
    procs: list[subprocess.Popen[bytes]] = []
    try:
        log = open(out / "services.log", "ab")  # noqa: SIM115 - closed in finally
        procs.append(
            subprocess.Popen(["mosquitto", "-c", str(broker_conf)], stdout=log, stderr=log)
        )
        _wait(lambda: _port_open(port), 10, "mosquitto to listen")
        procs.append(
            subprocess.Popen(
                [office, "serve", "--config", str(office_toml)], stdout=log, stderr=log
            )
        )
        # The uploader only once the receiver subscribes: an init the broker takes before
        # that reaches no one, and the uploader sends it again only after ack_timeout_s.
        _wait(
            lambda: (
                "subscribing" in (out / "services.log").read_text(errors="replace")
                or procs[-1].poll() is not None
            ),
            30,
            "the office receiver to subscribe",
        )
        procs.append(
            subprocess.Popen([lt, "upload", "--config", str(device_toml)], stdout=log, stderr=log)
        )
        print(
            f"[net]     mosquitto (TLS, client certificates, ACL) on 127.0.0.1:{port}; uploader and receiver running"
        )
        _wait(
            lambda: len(outbox.entries(OutboxState.ACKED)) == total,
            60,
            "the office's acknowledgement",
        )
        print(
            f"[device]  {total} recording(s) acknowledged by the office (stored + indexed before the ack)"
        )
    finally:
        for proc in reversed(procs):
            _stop(proc)
        log.close()

    # 5. The office: list, verify, decrypt.
    listing = json.loads(_run([office, "ls", "--config", str(office_toml), "--json"], as_demo))
    rows = listing if isinstance(listing, list) else listing.get("recordings", [])
    verify = subprocess.run(
        [
            office,
            "verify",
            "--config",
            str(office_toml),
            "--identity",
            str(setup.office_key),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
        env=as_demo,
    )
    ok = verify.returncode == 0 and json.loads(verify.stdout).get("ok") is True
    for row in rows:
        rec = row["recording_id"]
        print(
            f"[office]  {rec}  seq {row.get('seq')}  line {row.get('line')}  started {row.get('started_utc')}"
            f"  {row.get('duration_ms', 0) / 1000:.1f} s  recovered={row.get('recovered')}"
        )
        caller = " ".join(str(row[k]) for k in ("caller_number", "caller_name") if row.get(k))
        print(
            f"[office]  {row.get('direction') or 'unknown'} call from {caller or '(no caller ID)'};"
            f" dialled {row.get('dialled_digits') or '(none)'} (card digits masked in the audio)"
        )
        wav = office_root / "exports" / f"{rec}.wav"
        wav.parent.mkdir(exist_ok=True)
        _run(
            [
                office,
                "export",
                rec,
                "--config",
                str(office_toml),
                "--identity",
                str(setup.office_key),
                "-o",
                str(wav),
            ],
            as_demo,
        )
        print(f"[office]  decrypted audio: {wav}")
    print(f"[office]  verify (signatures, hashes, chain, audio): {'OK' if ok else 'FAILED'}")
    if not ok:
        print(verify.stdout + verify.stderr)
    print(
        "demo: "
        + (
            "the office received, verified and decrypted every recording"
            if ok and rows
            else "FAILED"
        )
    )
    if not (ok and rows):
        return 1
    # 6. In a terminal: the web review, until Ctrl-C.
    if sys.stdin.isatty() and sys.stdout.isatty():
        return _serve_web(office, office_toml, password, out / "services.log")
    return 0
