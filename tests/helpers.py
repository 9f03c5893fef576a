"""Test helpers: configs and line captures with samples that identify their own frame."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, AnyStr

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from buffers.outbox import Outbox
from drivers.serial.cid_text import SerialCallerId
from sealedrec.manifest import sign_manifest
from sealedrec.segments import iter_segments

REPO = Path(__file__).resolve().parent.parent
RATE = 8000
START_UTC = "2026-11-25T10:00:00+00:00"  # the wall clock replays start at


def line_signal(frames: int, channel: int) -> npt.NDArray[np.int16]:
    """A channel whose every sample encodes its frame index (mod 30000) and channel."""
    i = np.arange(frames, dtype=np.int64)
    return (((i * (channel + 1)) % 30000) - 15000).astype(np.int16)


def write_capture(
    path: Path, seconds: float, channels: int, rate: int = RATE
) -> npt.NDArray[np.int16]:
    frames = round(seconds * rate)
    data = np.stack([line_signal(frames, c) for c in range(channels)], axis=1)
    soundfile.write(path, data, rate, subtype="PCM_16")
    return data


def config_text(
    out_dir: Path,
    *,
    lines: int = 2,
    channels: int | None = None,
    rate: int = RATE,
    opt_out_mode: str = "pause",
    max_call_s: int = 3600,
    preroll_s: float = 5.0,
    extra_audio: str = "",
    extra_gpio: str = "",
    status_led: bool = True,
    storage_format: str = "wav",
    recipients: tuple[str, ...] = (),
    codec: str = "flac",
    data_dir: Path | None = None,
    audio_file: Path | None = None,
    alsa_device: str | None = None,
) -> str:
    """A device config for the tests: ``lines`` lines on the sim GPIO backend, captured from
    ``audio_file`` (a placeholder when the test passes the audio another way, as replay
    does) or from the ALSA PCM ``alsa_device``."""
    if alsa_device is not None:
        source = f'backend = "alsa"\ndevice = "{alsa_device}"'
    else:
        source = f'backend = "file"\nfile = "{audio_file or "unused.wav"}"'
    # Plain audio is for development machines only (firmware/config.py).
    development = "[development]\nallow_plain_audio = true" if storage_format == "wav" else ""
    text = f"""
device_id = "test-device"
[audio]
{source}
sample_rate = {rate}
channels = {channels or lines}
{extra_audio}
[gpio]
backend = "sim"
{"status_led_pin = 5" if status_led else ""}
{extra_gpio}
[call]
preroll_s = {preroll_s}
debounce_ms = 30
flash_max_ms = 1000
max_call_s = {max_call_s}
opt_out_mode = "{opt_out_mode}"
[storage]
format = "{storage_format}"
out_dir = "{out_dir}"
runtime_dir = "{out_dir.parent / "run"}"
{f'data_dir = "{data_dir}"' if data_dir else ""}
[sealing]
recipients = {json.dumps(list(recipients))}
codec = "{codec}"
{development}
"""
    return text + lines_toml(lines)


def lines_toml(count: int, *, leds: bool = True) -> str:
    """``count`` [[lines]] tables: line<n> on channel n-1, hook on GPIO 17+, its LED on
    GPIO 22+ (``leds``) and its opt-out button on GPIO 27+."""
    text = ""
    for n in range(count):
        text += f"""
[[lines]]
name = "line{n + 1}"
channel = {n}
hook_pin = {17 + n}
{f"led_pin = {22 + n}" if leds else ""}
opt_out_pin = {27 + n}
"""
    return text


def espeak_word(text: str, rate: int = RATE) -> npt.NDArray[np.int16]:
    """Speech from espeak-ng resampled with sox: a signal nobody here wrote."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"{tool} is missing: `make test` installs it (Debian package {tool})"
            )
    raw = subprocess.run(
        [
            "sh",
            "-c",
            f"espeak-ng --stdout {text!r} | sox -t wav - -t raw -e signed -b 16 -c 1 -r {rate} -",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    return np.frombuffer(raw, dtype="<i2").copy()


def signed_manifest(
    key: Ed25519PrivateKey,
    *,
    device_id: str,
    rec: str,
    seq: int,
    prev: str,
    blob: bytes,
    duration_ms: int = 300_000,
    recipients: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A signed manifest for an opaque blob: what transport and storage check (signature,
    chain, size, sha256) without anything having to decrypt it; ``recipients`` as the
    device's sealing.recipients would name them (the office checks them)."""
    body = {
        "version": 1, "recording_id": rec, "device_id": device_id, "line": "line1", "seq": seq,
        "prev_manifest_sha256": prev, "started_utc": "2026-11-25T10:00:00.000+00:00",
        "ended_utc": "2026-11-25T10:05:00.000+00:00", "duration_ms": duration_ms,
        "container": "age", "codec": "flac", "blob_sha256": hashlib.sha256(blob).hexdigest(),
        "blob_bytes": len(blob), "recovered": False, "discarded": False, "caller_id": None,
        "dialled_digits": "", "direction": "unknown",
    }  # fmt: skip
    if recipients is not None:
        body["recipients"] = sorted(recipients)
    return sign_manifest(body, key)


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, size: int | str, *, mode: str | None = None) -> Iterator[Path]:
    """A real tmpfs of ``size`` (bytes, or mount syntax such as "256k") at ``mount``, its
    root directory of ``mode`` (octal, "0700") if given, unmounted afterwards; the test is
    skipped where mounting is not possible."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (f",mode={mode}" if mode else "")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def add_opaque_entry(
    outbox: Outbox,
    seq: int,
    rec: str,
    blob: bytes,
    *,
    device_id: str,
    sealed_at: float | None = None,
) -> None:
    """A sealed outbox entry holding ``blob`` with a minimal, unsigned manifest: what the
    uploader reads (it neither decrypts nor verifies)."""
    manifest = {
        "version": 1,
        "recording_id": rec,
        "device_id": device_id,
        "seq": seq,
        "container": "age",
        "codec": "flac",
        "blob_bytes": len(blob),
        "blob_sha256": hashlib.sha256(blob).hexdigest(),
    }
    files = {"manifest.json": json.dumps(manifest).encode(), "recording.age": blob}
    outbox.add(seq, rec, files, sealed_at=sealed_at)


CidFields = tuple[str | None, str | None, str | None, str | None, str | None]


def cid_fields(record: SerialCallerId) -> CidFields:
    """What a serial caller-ID record says: (number, name, time, absence_number, absence_name)."""
    return (
        record.number,
        record.name,
        record.time,
        record.absence_number,
        record.absence_name,
    )


# -- running the command-line programs -----------------------------------------------


def run_cli(
    program: str | Path, *args: str | Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """One run of a command-line program (linetap, linetap-office, mosquitto_pub, ...),
    its output kept as text; the exit status is for the test to check."""
    return subprocess.run(
        [str(program), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_bench(script: str, *args: str | Path, cwd: Path, timeout: float = 300) -> str:
    """``bench/{script}`` run to the end by this interpreter in ``cwd``; its stdout. A
    bench that exits non-zero fails the test with the tail of what it printed."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def replay_argv(conf: Path, audio: Path, events: Path, out: Path, *options: str) -> list[str]:
    """The arguments of `linetap replay` (without the program) over ``audio`` and the
    events script ``events``, writing to ``out``."""
    return [
        "replay",
        "--config",
        str(conf),
        "--audio",
        str(audio),
        "--events",
        str(events),
        "--out",
        str(out),
        *options,
    ]


@dataclass(frozen=True)
class ReplayInputs:
    """A line capture whose samples identify their own frame, and an events script."""

    audio: Path
    events: Path
    capture: npt.NDArray[np.int16]

    def argv(self, conf: Path, out: Path, *options: str) -> list[str]:
        return replay_argv(conf, self.audio, self.events, out, *options)


def replay_inputs(folder: Path, events: str, *, seconds: float, channels: int) -> ReplayInputs:
    """Writes ``folder``/line.wav (see :func:`write_capture`) and ``folder``/events.txt."""
    audio = folder / "line.wav"
    capture = write_capture(audio, seconds, channels)
    events_file = folder / "events.txt"
    events_file.write_text(events)
    return ReplayInputs(audio, events_file, capture)


def start_recorder(
    linetap_bin: Path,
    conf: Path,
    env: Mapping[str, str] | None = None,
    *,
    stdout: int | IO[Any] = subprocess.PIPE,
) -> subprocess.Popen[str]:
    """`linetap record` (the daemon) on ``conf``, with ``env`` added to this environment;
    its stderr piped. Run it inside :func:`reaped`."""
    return subprocess.Popen(
        [str(linetap_bin), "record", "--config", str(conf)],
        env={**os.environ, **(env or {})},
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_ready(notify: socket.socket, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """Waits for the daemon's sd_notify READY=1 on ``notify`` (a bound datagram socket with
    a short timeout); fails with its stderr if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if b"READY=1" in notify.recv(4096):
                return
        except TimeoutError:
            if proc.poll() is not None:
                raise AssertionError(f"recorder exited: {proc.communicate()[1]}") from None
            assert time.monotonic() < deadline, f"no READY within {timeout:g} s"


@contextlib.contextmanager
def ready_recorder(linetap_bin: Path, conf: Path, folder: Path) -> Iterator[subprocess.Popen[str]]:
    """`linetap record` on ``conf`` (stdout dropped, stderr piped), yielded once it has
    told its notify socket (in ``folder``) READY=1, as systemd would wait for it; reaped
    on the way out."""
    sock_path = folder / "notify.sock"
    sock_path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(0.2)
        env = {"NOTIFY_SOCKET": str(sock_path)}
        with reaped(start_recorder(linetap_bin, conf, env, stdout=subprocess.DEVNULL)) as proc:
            wait_for_ready(sock, proc)
            yield proc


def stop_with_sigterm(proc: subprocess.Popen[str], timeout: float = 15) -> str:
    """Stops ``proc`` as systemd does (SIGTERM) and waits for it; what it wrote to stderr."""
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=timeout)
    return stderr


@contextlib.contextmanager
def reaped(proc: subprocess.Popen[AnyStr]) -> Iterator[subprocess.Popen[AnyStr]]:
    """``proc`` for the length of the block; killed and reaped on the way out if it is
    still running (a failed assertion must not leave it behind)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def journal_pcm_by_tools(journal: Path, key_file: Path, work: Path) -> npt.NDArray[np.int16]:
    """A version-2 journal's audio as tools nobody here wrote see it: each record
    decrypted on its own by the real ``age -d``, the pieces joined, and the stream decoded
    by the reference ``flac -d`` (which reads a stream whose total is unknown)."""
    pieces = []
    with open(journal, "rb") as fh:
        for i, (segment, _) in enumerate(iter_segments(fh)):
            sealed = work / f"record{i}.age"
            sealed.write_bytes(segment.payload)
            plain = subprocess.run(
                ["age", "-d", "-i", str(key_file), str(sealed)], check=True, capture_output=True
            ).stdout
            if i == 0:
                assert plain[:4] == b"fLaC", "the first record starts the FLAC stream"
            pieces.append(plain)
    raw = subprocess.run(
        ["flac", "-d", "-s", "-c", "--force-raw-format", "--endian=little", "--sign=signed", "-"],
        input=b"".join(pieces),
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)
