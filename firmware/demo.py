"""`make demo`: a simulated appliance records a call; the head office verifies and opens it.

1. The head office makes its age identity (in production: `linetap-office enroll`).
2. The appliance gets a signing key and a config naming the office's public key.
3. The real recorder pipeline replays the bundled sample call (speech made with espeak-ng)
   with its hook script: pre-roll, debounce, call state, journal, FLAC, age, manifest,
   outbox — exactly what `linetap record` does, only faster than real time.
4. The head office takes the sealed recording from the outbox (the MQTT transport and the
   store arrive with issue 4), verifies signature, hashes and chain, decrypts it with its
   identity and writes the audio out.

    python -m firmware.demo [--out demo-out]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import soundfile

from firmware.age import format_identity, format_recipient, generate_identity, load_identities
from firmware.app import run_replay
from firmware.config import parse_config
from firmware.keys import create_device_key, load_device_key
from firmware.verify import decrypt_recording, verify_entries

SAMPLES = Path(__file__).resolve().parent / "samples"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    office_dir, device_dir = out / "office", out / "device"
    office_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # 1. Head office identity (the private half never leaves the office).
    identity = generate_identity()
    office_key = office_dir / "office.key"
    fd = os.open(office_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(format_identity(identity) + "\n")
    recipient = format_recipient(identity.public_key())
    print(f"[office]  identity {office_key}  public key {recipient}")

    # 2. Appliance config and signing key.
    text = (SAMPLES / "demo.toml").read_text()
    text = text.replace("RECIPIENT", recipient).replace("DATA_DIR", str(device_dir))
    cfg_path = out / "linetap.toml"
    cfg_path.write_text(text)
    cfg = parse_config(text, str(cfg_path))
    cfg = cfg.model_copy(
        update={
            "audio": cfg.audio.model_copy(update={"file": SAMPLES / "sample_call.flac"}),
            "gpio": cfg.gpio.model_copy(update={"script": SAMPLES / "sample_call.events"}),
        }
    )
    device_key_path = device_dir / "keys" / "device.key"
    create_device_key(device_key_path)
    print(f"[device]  config {cfg_path}  signing key {device_key_path}")

    # 3. Record: the real pipeline over the sample call.
    result = run_replay(
        cfg,
        audio=SAMPLES / "sample_call.flac",
        events=SAMPLES / "sample_call.events",
        out=device_dir,
        start_utc=datetime.now(UTC),
        fmt="sealed",
    )
    entries = sorted((device_dir / "outbox" / "sealed").iterdir())
    print(
        f"[device]  replayed {result.frames / cfg.audio.sample_rate:.1f} s of line audio: "
        f"{len(entries)} sealed recording(s) in {device_dir / 'outbox' / 'sealed'}"
    )

    # 4. Head office: verify, then decrypt.
    device_public = load_device_key(device_key_path).public_key()
    identities = load_identities(office_key)
    reports, chain = verify_entries(entries, device_public, identities)
    ok = all(r.ok for r in reports) and not chain
    for entry, report in zip(entries, reports, strict=True):
        m = report.manifest or {}
        print(
            f"[office]  recording {m.get('recording_id')} seq {m.get('seq')} line {m.get('line')}"
        )
        summary = {
            k: m.get(k)
            for k in (
                "started_utc",
                "ended_utc",
                "duration_ms",
                "trigger",
                "end_reason",
                "preroll_ms",
                "codec",
                "container",
                "audio_frames",
                "recovered",
                "clock_sync",
                "blob_sha256",
            )
        }
        print("          " + json.dumps(summary, indent=None))
        print(
            f"[office]  verify: {'OK (signature, hashes, chain, audio)' if report.ok else report.problems}"
        )
        samples, rate, _ = decrypt_recording(entry, identities)
        wav = office_dir / f"{m.get('recording_id')}.wav"
        soundfile.write(wav, samples, rate, subtype="PCM_16")
        print(f"[office]  decrypted audio: {wav} ({len(samples) / rate:.2f} s)")
    if chain:
        print(f"[office]  chain problems: {chain}")
    print("demo: " + ("all recordings verified and decrypted" if ok else "VERIFICATION FAILED"))
    return 0 if ok and entries else 1


if __name__ == "__main__":
    sys.exit(main())
