"""The card under test and the office it reports to, as the power-cut test sets them up.

A grown copy of the image with the test's device config on LTBOOT; the test's own disk
(guest.sh, the line, a planted bug) mounted read-only at /run/powercut in the guest; the
office on the host: a plain mosquitto and, once the device is enrolled, its receiver.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from headoffice import enroll
from tests.conftest import VENV_BIN
from tests.mqtt_broker import Broker, run_mosquitto
from tests.powercut.verdict import CardState
from tests.vm import Partition, debugfs, extract, fat_names, fat_read, fat_write, partitions, run

REPO = Path(__file__).resolve().parent.parent.parent
GUEST_FILES = Path(__file__).resolve().parent
DEVICE_ID = "powercut-appliance"
RATE = 8000
JOURNAL_SYNC_S = 1.0
GROW_BY = 256 * 1024 * 1024
GUEST_BROKER = "10.0.2.100"


@dataclass(frozen=True)
class Mutant:
    """A planted bug: exact text edits of one module, each original occurring once."""

    module: str  # path under site-packages
    edits: tuple[tuple[str, str], ...]

    def apply(self, source: str) -> str:
        for original, replacement in self.edits:
            assert source.count(original) == 1, f"{self.module} changed: {original!r}"
            source = source.replace(original, replacement)
        return source


MUTANTS = {
    "journal-fsync": Mutant(
        "buffers/journal.py",
        (("            if self._durable:\n                os.fsync(self._fd)\n", ""),),
    ),
    "outbox-dirsync": Mutant(
        "buffers/outbox.py",
        (
            (
                "                os.rename(staged, target)\n"
                "                fsync_dir(self._tmp)\n                fsync_dir(target.parent)\n",
                "                os.rename(staged, target)\n",
            ),
            (
                "        os.rename(entry.path, target)\n"
                "        fsync_dir(entry.path.parent)\n        fsync_dir(target.parent)\n",
                "        os.rename(entry.path, target)\n",
            ),
        ),
    ),
}


def device_config(recipient: str) -> str:
    return f"""\
device_id = "{DEVICE_ID}"
log_level = "info"

[audio]
backend = "file"
file = "/run/powercut/line.flac"
file_realtime = true
sample_rate = {RATE}
channels = 1

[gpio]
backend = "sim"
script = "/run/powercut/line.events"

[call]
preroll_s = 5.0

[storage]
format = "sealed"
keep_acked_days = 0
min_free_mb = 16

[sealing]
recipients = ["{recipient}"]
codec = "flac"
journal_sync_s = {JOURNAL_SYNC_S}

[upload]
host = "{GUEST_BROKER}"
port = 1883
tls = false
chunk_kib = 16
window = 2
ack_timeout_s = 10
backoff_max_s = 2
telemetry_s = 5

[[lines]]
name = "line1"
channel = 0
hook_pin = 17
led_pin = 22
"""


class Office:
    """The head office on the host: a plain mosquitto (logging every PUBLISH, which the
    upload cut counts) and, once the device is enrolled, `linetap-office serve`."""

    def __init__(self, work: Path, stack: contextlib.ExitStack) -> None:
        self.root = work / "office"
        self.setup = enroll.init_ca(self.root, "Power-cut test office")
        conf = (
            "listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest stdout\n"
            "log_type all\nconnection_messages true\nset_tcp_nodelay true\n"
        )
        self.broker: Broker = stack.enter_context(run_mosquitto(work, conf, name="broker"))
        self.log = work / "receiver.log"
        self._stack = stack
        self.enrolled = False

    def enroll_from(self, disk: Path, boot: Partition, card: CardState) -> list[str]:
        """Enrol the device once its first boot is complete (the marker on the data
        partition, written last), from the request first boot left on LTBOOT. If that
        request is unreadable, say so, and enrol as an installer would after running
        `linetap provision init` on the unit: from the request kept on the data partition."""
        marker = card.files.get("provisioned.json")
        if self.enrolled or marker is None:
            return []
        problems = []
        request = "linetap-request"
        names = fat_names(disk, boot, request) if request in fat_names(disk, boot) else []
        csr_name, key_name = f"{DEVICE_ID}.csr", f"{DEVICE_ID}.signing-key"
        csr = fat_read(disk, boot, f"{request}/{csr_name}") if csr_name in names else b""
        key = fat_read(disk, boot, f"{request}/{key_name}") if key_name in names else b""
        if b"CERTIFICATE REQUEST" not in csr or not key.strip():
            problems.append(
                f"provisioned (the data partition's marker says so), but LTBOOT/{request}/ "
                f"holds {csr_name} of {len(csr)} B and {key_name} of {len(key)} B: the "
                "request for the office did not survive the cut"
            )
            csr = card.files[f"keys/{csr_name}"]
            key = json.loads(card.files["provisioned.json"])["signing_key"].encode()
        enroll.enroll_device(self.root, csr, key.decode().strip())
        conf = self.root.parent / "office.toml"
        conf.write_text(
            f'root = "{self.root}"\n[broker]\nhost = "127.0.0.1"\n'
            f"port = {self.broker.port}\ntls = false\nkeepalive_s = 5\n"
        )
        self._stack.enter_context(
            _process([str(VENV_BIN / "linetap-office"), "serve", "--config", str(conf)], self.log)
        )
        self.enrolled = True
        return problems


@contextlib.contextmanager
def _process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def venv_site_packages(disk: Path, root: Partition, work: Path) -> str:
    root_fs = extract(disk, root, work / "root.ext4")
    try:
        libs = debugfs(root_fs, "ls -p /opt/linetap/venv/lib")
    finally:
        root_fs.unlink()
    pythons = sorted(set(re.findall(r"/(python3\.\d+)/", libs)))
    assert pythons, f"no python3.X in the image's /opt/linetap/venv/lib: {libs}"
    return f"/opt/linetap/venv/lib/{pythons[-1]}/site-packages"


def prepare_card(image: Path, work: Path, recipient: str) -> tuple[Path, list[Partition]]:
    """A grown copy of the image ("the card") with the test's config on its boot partition."""
    disk = work / "card.img"
    run(["cp", "--sparse=always", str(image), str(disk)])
    parts = partitions(disk)
    assert [(p.number, p.kind) for p in parts] == [(1, 0x0C), (2, 0x83), (3, 0x83)], parts
    config = work / "linetap.toml"
    config.write_text(device_config(recipient))
    fat_write(disk, parts[0], config, "linetap.toml")
    with disk.open("r+b") as fh:  # a bigger card: first boot grows the data partition
        fh.truncate(disk.stat().st_size + GROW_BY)
    return disk, parts


def guest_disk(
    work: Path, line: Path, site: str, mutant: Mutant | None, *, final: bool
) -> tuple[Path, list[str]]:
    """The test's own disk (ext4, label LTPOWERCUT, read-only in the guest) and the
    kernel arguments that mount it at /run/powercut and bind the mutant, if any."""
    tree = work / "guest-disk"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    shutil.copy2(GUEST_FILES / "guest.sh", tree / "guest.sh")
    shutil.copy2(GUEST_FILES / "line.events", tree / "line.events")
    shutil.copy2(line, tree / "line.flac")
    args = ["systemd.mount-extra=LABEL=LTPOWERCUT:/run/powercut:ext4:ro"]
    if mutant is not None:
        (tree / "mutant").mkdir()
        name = Path(mutant.module).name
        (tree / "mutant" / name).write_text(mutant.apply((REPO / mutant.module).read_text()))
        target = f"{site}/{mutant.module}"
        (tree / "mutant.list").write_text(f"/run/powercut/mutant/{name} {target}\n")
        args.append(f"systemd.mount-extra=/run/powercut/mutant/{name}:{target}:none:bind,ro")
    if final:
        (tree / "final").write_text("")
    image = work / "guest-disk.ext4"
    image.unlink(missing_ok=True)
    run(["mke2fs", "-q", "-t", "ext4", "-L", "LTPOWERCUT", "-d", str(tree), str(image), "32M"])
    return image, args
