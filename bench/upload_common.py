"""Shared set-up for the upload benches (upload_throughput, upload_latency,
upload_receiver_capacity): the whole chain for real, as tests/test_office_e2e.py builds it.

- an office root made by :func:`headoffice.enroll.init_ca`, its receiver client
  certificates (:func:`~headoffice.enroll.issue_office_client`) and enrolled devices
  (signing key + TLS key/CSR + :func:`~headoffice.enroll.enroll_device`);
- a private mosquitto on a free port with :func:`~headoffice.brokerconf.write_broker_config`
  (mTLS, the ACL, persistence), never the system broker;
- ``linetap upload --config device.toml`` and ``linetap-office serve --config office.toml``
  as subprocesses, their output in log files;
- synthetic sealed outbox entries: random blobs under manifests signed by the enrolled
  device key and chained (transport and store verify signatures and hashes, they do not
  decrypt), like ``_synthetic()`` in the e2e test;
- :func:`start_single_device_chain`: all of the above for one device and one receiver,
  as the latency and throughput benches run it;
- the options and report lines every upload bench has (:func:`parse_chain_args`,
  :func:`print_what_if`);
- before/after runs: :func:`before_tree` (a copy of another commit's code, by default
  ``git archive HEAD``) and the ``tree`` argument of :func:`start_receiver` /
  :func:`start_uploader`, which runs that code (``PYTHONPATH``) with this venv.

Every process started through :class:`Processes` is stopped (SIGTERM, then SIGKILL) when
its ``with`` block ends, also on errors, Ctrl-C and SIGTERM (see :func:`exit_on_sigterm`).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from bench_common import pstats_table
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from head_compare import head_tree

# The benches share the tests' signed-manifest and free-port helpers; run as scripts they
# need the repo root on the path to import them.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buffers.outbox import Outbox, OutboxState
from headoffice import brokerconf, enroll
from headoffice.officeroot import CaLayout
from sealedrec.keys import create_device_key, public_key_b64
from sealedrec.manifest import GENESIS_HASH, manifest_hash
from sealedrec.tlskeys import make_device_csr
from tests.helpers import signed_manifest
from tests.mqtt_broker import free_port

HOST = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent
LINETAP = VENV_BIN / "linetap"
LINETAP_OFFICE = VENV_BIN / "linetap-office"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
DEVICE = "branch-7"  # the one device of the latency and throughput benches
RECEIVER = "office-receiver"  # and their office's receiver
MB = 1_000_000  # MB/s figures are decimal megabytes
MIB = 1 << 20
STOP_TIMEOUT_S = 20.0
START_TIMEOUT_S = 15.0


class BenchError(RuntimeError):
    """The chain did not do what the bench waits for (the message quotes the logs)."""


def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so ``finally`` blocks stop our processes."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def cpu_s(self) -> float:
        """User + system CPU seconds so far (its own threads; read while it runs)."""
        return proc_cpu_s(self.pid)


def proc_cpu_s(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Processes:
    """Starts subprocesses with their output in ``logdir``; stops all of them on exit."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[Proc] = []
        logdir.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        name: str,
        argv: Sequence[str | Path],
        *,
        tree: Path | None = None,
        stdin_pipe: bool = False,
    ) -> Proc:
        """Start ``argv``; with ``tree``, importing linetap's packages from that code tree;
        with ``stdin_pipe``, its stdin a pipe (``proc.popen.stdin``)."""
        log = self.logdir / f"{name}.log"
        env = None if tree is None else {**os.environ, "PYTHONPATH": str(tree)}
        with log.open("ab") as fh:
            where = "" if tree is None else f"PYTHONPATH={tree} "
            fh.write(f"=== {where}{' '.join(map(str, argv))}\n".encode())
            fh.flush()
            popen = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, *, kill: bool = False) -> None:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def check_alive(self) -> None:
        for proc in self.procs:
            if not proc.running():
                raise BenchError(
                    f"{proc.name} exited with status {proc.popen.returncode}; its log "
                    f"({proc.log}):\n{proc.tail()}"
                )

    def tails(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log})\n{p.tail()}" for p in self.procs)

    def close(self) -> None:
        # Reverse order: clients before the broker they talk to.
        for proc in reversed(list(self.procs)):
            self.stop(proc)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    procs: Processes,
    *,
    interval: float = 0.005,
) -> float:
    """Poll ``predicate`` until true; returns time.monotonic() when it was seen true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        procs.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}\n{procs.tails()}")
        time.sleep(interval)


def log_has(proc: Proc, text: str) -> bool:
    return text in proc.tail(1 << 20)


# --------------------------------------------------------------------------- office, devices


@dataclass
class Office:
    root: Path
    recipient: str
    receivers: list[str] = field(default_factory=list)

    @property
    def layout(self) -> CaLayout:
        return CaLayout(self.root)

    @property
    def ca_file(self) -> Path:
        return self.layout.broker_ca

    def client_files(self, name: str) -> tuple[Path, Path]:
        return self.layout.office_client_cert(name), self.layout.office_client_key(name)

    def write_office_toml(self, path: Path, port: int, name: str) -> Path:
        cert, key = self.client_files(name)
        path.write_text(
            f'root = "{self.root}"\n[broker]\nhost = "{HOST}"\nport = {port}\n'
            f'ca_file = "{self.ca_file}"\ncert_file = "{cert}"\nkey_file = "{key}"\n'
            f'client_id = "{name}"\nkeepalive_s = 10\n'
        )
        return path

    def index_path(self) -> Path:
        return self.root / "index.sqlite3"


def make_office(root: Path, client_names: Sequence[str]) -> Office:
    """A fresh office CA with one client certificate per name (receivers and peers)."""
    setup = enroll.init_ca(root, "Bench Office")
    for name in client_names:
        enroll.issue_office_client(root, name)
    brokerconf.office_share_group(root)  # made now, so every copy of the root shares it
    return Office(root, setup.recipient, list(client_names))


def relocated(office: Office, root: Path) -> Office:
    """A copy of the office root (CA, enrolments, share group; no store yet) at ``root``."""
    shutil.copytree(office.root, root)
    return Office(root, office.recipient, list(office.receivers))


@dataclass
class Device:
    device_id: str
    data: Path
    key: Ed25519PrivateKey
    next_seq: int = 1
    prev_hash: str = GENESIS_HASH

    @property
    def outbox(self) -> Outbox:
        return Outbox(self.data / "outbox")

    @property
    def cert(self) -> Path:
        return self.data / "keys" / "device.crt"

    @property
    def tls_key(self) -> Path:
        return self.data / "keys" / "device-tls.key"

    def count(self, state: OutboxState) -> int:
        try:
            return len(os.listdir(self.data / "outbox" / state.value))
        except FileNotFoundError:
            return 0


def enroll_device(office: Office, device_id: str, data: Path) -> Device:
    """Signing key, TLS key + CSR (what ``linetap keys init/csr`` do), enrolled at the office."""
    key = create_device_key(data / "keys" / "device.key")
    csr = make_device_csr(data / "keys" / "device-tls.key", device_id)
    cert = enroll.enroll_device(office.root, csr, public_key_b64(key.public_key()))
    (data / "keys" / "device.crt").write_bytes(cert.read_bytes())
    Outbox(data / "outbox")
    return Device(device_id, data, key)


def relocated_device(device: Device, data: Path) -> Device:
    """A copy of the device's data dir (keys, outbox) at ``data``."""
    shutil.copytree(device.data, data)
    return Device(device.device_id, data, device.key, device.next_seq, device.prev_hash)


@dataclass(frozen=True)
class UploadSettings:
    """What the benches vary in a device config: [upload] chunk size and window, and the
    [sealing] codec."""

    chunk_kib: int = 256
    window: int = 16
    codec: str = "flac"


def write_device_toml(
    device: Device,
    office: Office,
    path: Path,
    port: int,
    settings: UploadSettings = UploadSettings(),
) -> Path:
    """A device config with an [upload] section for ``linetap upload``."""
    path.write_text(
        f'device_id = "{device.device_id}"\n'
        '[audio]\nbackend = "file"\nfile = "unused.wav"\nsample_rate = 8000\nchannels = 1\n'
        '[gpio]\nbackend = "sim"\n'
        f'[storage]\nformat = "sealed"\ndata_dir = "{device.data}"\n'
        f'[sealing]\nrecipients = ["{office.recipient}"]\ncodec = "{settings.codec}"\n'
        f'[upload]\nhost = "{HOST}"\nport = {port}\ntls = true\n'
        f'ca_file = "{office.ca_file}"\ncert_file = "{device.cert}"\n'
        f'key_file = "{device.tls_key}"\nchunk_kib = {settings.chunk_kib}\n'
        f"window = {settings.window}\n"
        '[[lines]]\nname = "line1"\nchannel = 0\nhook_pin = 17\n'
    )
    return path


def add_synthetic(device: Device, sizes: Sequence[int], *, prefix: str = "syn") -> list[str]:
    """Sealed-looking outbox entries (random blobs) signed by the device key, chained on
    from the device's last one; returns their recording ids."""
    outbox = device.outbox
    ids = []
    rng = random.Random(device.next_seq)
    for size in sizes:
        seq = device.next_seq
        blob = os.urandom(size) if size >= 4096 else rng.randbytes(size)
        rec = f"{prefix}-{seq:06d}"
        manifest = signed_manifest(
            device.key,
            device_id=device.device_id,
            rec=rec,
            seq=seq,
            prev=device.prev_hash,
            blob=blob,
        )
        device.prev_hash = manifest_hash(manifest)
        device.next_seq += 1
        outbox.add(
            seq, rec, {"manifest.json": json.dumps(manifest).encode(), "recording.age": blob}
        )
        ids.append(rec)
    return ids


# --------------------------------------------------------------------------- the chain


def start_broker(
    procs: Processes, office: Office, workdir: Path, attempts: int = 3, name: str = "mosquitto"
) -> tuple[int, Proc]:
    """mosquitto with the office's config (mTLS, ACL) on a free port: (port, process)."""
    for attempt in range(attempts):
        port = free_port()
        conf = brokerconf.write_broker_config(
            office.root,
            port,
            persistence_location=workdir / "broker-data",
            bind_address=HOST,
            run_as_user=getpass.getuser(),
        )
        proc = procs.start(name, [MOSQUITTO, "-c", conf])
        deadline = time.monotonic() + START_TIMEOUT_S
        while proc.running() and not _accepts(port) and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.running() and _accepts(port):
            return port, proc
        procs.stop(proc, kill=True)
        if attempt == attempts - 1 or "Address already in use" not in proc.tail():
            raise BenchError(f"mosquitto did not start; its log ({proc.log}):\n{proc.tail()}")
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class SingleDeviceChain:
    """One enrolled device (:data:`DEVICE`), its office and their broker, running; the
    configs for ``linetap upload`` and for the office's receiver (:data:`RECEIVER`)."""

    office: Office
    device: Device
    port: int
    broker: Proc
    device_toml: Path
    office_toml: Path


def start_single_device_chain(
    procs: Processes,
    workdir: Path,
    settings: UploadSettings,
    *,
    other_clients: Sequence[str] = (),
    broker_name: str = "mosquitto",
) -> SingleDeviceChain:
    """A fresh office under ``workdir`` (client certificates for :data:`RECEIVER` and
    ``other_clients``), :data:`DEVICE` enrolled, the broker started, the configs written."""
    office = make_office(workdir / "office", [RECEIVER, *other_clients])
    device = enroll_device(office, DEVICE, workdir / "device")
    port, broker = start_broker(procs, office, workdir, name=broker_name)
    return SingleDeviceChain(
        office=office,
        device=device,
        port=port,
        broker=broker,
        device_toml=write_device_toml(device, office, workdir / "device.toml", port, settings),
        office_toml=office.write_office_toml(workdir / "office.toml", port, RECEIVER),
    )


def profile_argv(module: str, prof: Path | None) -> list[str | Path]:
    """``python -m module`` (optionally under cProfile writing ``prof``)."""
    if prof is None:
        return [sys.executable, "-m", module]
    return [sys.executable, "-m", "cProfile", "-o", prof, "-m", module]


# What-if (opt-in, --receiver-nodelay): the receiver with TCP_NODELAY on its broker socket.
# headoffice.service does not set it (the uploader does, see uploader.client._no_delay);
# paho opens its socket with socket.create_connection, so patching that is enough.
NODELAY_WRAPPER = """\
import runpy, socket
_create = socket.create_connection
def _nodelay(*args, **kwargs):
    sock = _create(*args, **kwargs)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
socket.create_connection = _nodelay
runpy.run_module("headoffice.cli", run_name="__main__", alter_sys=True)
"""


def start_receiver(
    procs: Processes,
    office_toml: Path,
    name: str,
    *,
    prof: Path | None = None,
    nodelay: bool = False,
    tree: Path | None = None,
) -> Proc:
    """``linetap-office serve`` (of ``tree``'s code if given); returns once it has
    connected and sent its SUBSCRIBE."""
    argv: list[str | Path]
    if nodelay:
        wrapper = procs.logdir / "receiver_nodelay.py"
        wrapper.write_text(NODELAY_WRAPPER)
        argv = [sys.executable]
        if prof is not None:
            argv += ["-m", "cProfile", "-o", prof]
        argv.append(wrapper)
    else:
        argv = [LINETAP_OFFICE] if prof is None else profile_argv("headoffice.cli", prof)
    proc = procs.start(name, [*argv, "serve", "--config", office_toml], tree=tree)
    wait_until(lambda: log_has(proc, "subscribing"), START_TIMEOUT_S, f"{name} to connect", procs)
    time.sleep(0.3)  # SUBSCRIBE → SUBACK (not logged): loopback takes well under this
    return proc


def start_uploader(
    procs: Processes,
    device_toml: Path,
    name: str,
    *,
    prof: Path | None = None,
    tree: Path | None = None,
) -> Proc:
    """``linetap upload`` (of ``tree``'s code if given)."""
    argv: list[str | Path] = [LINETAP] if prof is None else profile_argv("firmware.cli", prof)
    return procs.start(name, [*argv, "upload", "--config", device_toml], tree=tree)


def before_tree(given: Path | None) -> tuple[Path, str]:
    """The code to compare against: ``given``, or HEAD's (:func:`head_compare.head_tree`);
    with a line saying which it is."""
    if given is not None:
        if not (given / "headoffice").is_dir() or not (given / "uploader").is_dir():
            raise BenchError(f"--before {given}: not a linetap source tree")
        return given, f"before = the tree at {given}"
    tree = head_tree()
    return tree, f"before = git archive HEAD ({tree.name}); after = this working tree"


def index_count(office: Office) -> int:
    """Rows in the office's SQLite index (read-only connection; 0 before it exists)."""
    path = office.index_path()
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            (n,) = db.execute("SELECT count(*) FROM recordings").fetchone()
            return int(n)
    except sqlite3.OperationalError:
        return 0  # not created yet, or busy: try again


def index_stored_span(office: Office) -> tuple[int, float]:
    """(rows, seconds from the first to the last stored_at) of the office index."""
    from datetime import datetime

    with contextlib.closing(sqlite3.connect(f"file:{office.index_path()}?mode=ro", uri=True)) as db:
        rows = [r[0] for r in db.execute("SELECT stored_at FROM recordings")]
    stamps = sorted(datetime.fromisoformat(s).timestamp() for s in rows)
    return len(stamps), (stamps[-1] - stamps[0]) if stamps else 0.0


# --------------------------------------------------------------------------- options, report


def parse_chain_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Adds the options every upload bench has (--receiver-nodelay, --keep) to ``parser``,
    parses ``argv`` and makes SIGTERM stop the processes the bench will start."""
    parser.add_argument(
        "--receiver-nodelay",
        action="store_true",
        help="what-if: run the receiver with TCP_NODELAY on its socket (it does not set it)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    return args


def print_what_if(args: argparse.Namespace) -> None:
    """Says so under a report's title when the run was a what-if (--receiver-nodelay)."""
    if args.receiver_nodelay:
        print(
            "WHAT-IF run: the receiver had TCP_NODELAY set on its broker socket "
            "(--receiver-nodelay); the shipped headoffice.service does not set it"
        )


def print_profile(prof: Path, title: str, top: int = 12) -> None:
    if not prof.exists():
        print(f"\n{title}: no profile written ({prof})")
        return
    print(f"\n{title} (cProfile, main thread, top {top} by own time):")
    print(pstats_table(prof, top))


@contextlib.contextmanager
def workdir(keep: bool, prefix: str) -> Iterator[Path]:
    """A temporary directory, removed at exit unless ``keep`` (its path goes to stderr)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    if keep:
        print(f"(working in {path}; kept at exit)", file=sys.stderr)
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def cores() -> int:
    return len(os.sched_getaffinity(0))
