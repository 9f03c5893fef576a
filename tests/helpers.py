"""Test helpers: configs and line captures with samples that identify their own frame."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware.manifest import sign_manifest

RATE = 8000


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
) -> str:
    text = f"""
device_id = "test-device"
[audio]
backend = "file"
file = "unused.wav"
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
"""
    for n in range(lines):
        text += f"""
[[lines]]
name = "line{n + 1}"
channel = {n}
hook_pin = {17 + n}
led_pin = {22 + n}
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
) -> dict[str, Any]:
    """A signed manifest for an opaque blob: what transport and storage check (signature,
    chain, size, sha256) without anything having to decrypt it."""
    body = {
        "version": 1, "recording_id": rec, "device_id": device_id, "line": "line1", "seq": seq,
        "prev_manifest_sha256": prev, "started_utc": "2026-11-25T10:00:00.000+00:00",
        "ended_utc": "2026-11-25T10:05:00.000+00:00", "duration_ms": duration_ms,
        "container": "age", "codec": "flac", "blob_sha256": hashlib.sha256(blob).hexdigest(),
        "blob_bytes": len(blob), "recovered": False, "discarded": False, "caller_id": None,
        "dialled_digits": "", "direction": "unknown",
    }  # fmt: skip
    return sign_manifest(body, key)


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, size: int | str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (bytes, or mount syntax such as "256k") at ``mount``,
    unmounted afterwards; the test is skipped where mounting is not possible."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
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
