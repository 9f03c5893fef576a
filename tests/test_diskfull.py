"""A full data partition: record into RAM, blink the fault, corrupt nothing, catch up.

The data directory is a real 2 MiB tmpfs (mounted by the test, which needs root; it is
skipped with the reason otherwise). The audio is noise, so FLAC cannot shrink it away.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from drivers.gpio.sim import SimPinFactory
from firmware.app import capture_source, make_sealing_sink
from firmware.config import load_config
from firmware.events import events_to_pin_script, parse_events
from firmware.recorder import NS_PER_S, Recorder, StorageHealth
from sealedrec.age import load_identities
from sealedrec.keys import create_device_key
from sealedrec.verify import decrypt_recording, verify_entries
from tests.helpers import RATE, config_text, mounted_tmpfs

SIZE = 2 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "data", SIZE) as mount:
        yield mount


def fill(disk: Path, leave: int) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        fh.write(b"\0" * max(0, free - leave))
    return filler


def build(
    tmp_path: Path, disk: Path, office: tuple[Path, str], events: str, *, seconds: int, on_tick=None
):
    rng = np.random.default_rng(7)
    audio = tmp_path / "noise.wav"
    data = rng.integers(-8000, 8000, size=seconds * RATE, dtype=np.int16)
    soundfile.write(audio, data, RATE, subtype="PCM_16")
    conf = tmp_path / "linetap.toml"
    key = tmp_path / "device.key"
    if not key.exists():
        create_device_key(key)
    text = config_text(
        tmp_path / "wav",
        lines=1,
        storage_format="sealed",
        recipients=(office[1],),
        data_dir=disk,
        preroll_s=0.0,
        audio_file=audio,
        extra_audio="file_realtime = false",
    )
    text = text.replace("[sealing]", f'[sealing]\ndevice_key = "{key}"')
    text = text.replace("[storage]", "[storage]\nram_buffer_mb = 8\nmin_free_mb = 0")
    conf.write_text(text)
    cfg = load_config(conf)
    health = StorageHealth()
    sink = make_sealing_sink(cfg, health)
    pins = SimPinFactory(script=events_to_pin_script(parse_events(events), cfg))
    stop = threading.Event()
    rec = Recorder(
        cfg,
        capture_source(cfg.audio, stop=stop),
        pins,
        sink,
        stop=stop,
        clock=time.monotonic_ns,
        wall_offset_ns=0,
        device_id="t",
        on_tick=on_tick,
        storage_health=health,
    )
    return rec, sink, pins, data, cfg


def entries_of(disk: Path) -> list[Path]:
    return sorted((disk / "outbox" / "sealed").iterdir())


def test_full_disk_mid_call_holds_audio_in_ram_and_catches_up(
    tmp_path: Path, small_disk: Path, office
):
    # A first, short call is sealed while there is room: it must survive untouched.
    rec, *_ = build(tmp_path, small_disk, office, "0 line1 offhook\n2 line1 onhook\n", seconds=4)
    rec.run()
    [first] = entries_of(small_disk)
    first_bytes = {p.name: p.read_bytes() for p in first.iterdir()}

    filler = fill(small_disk, leave=120 * 1024)
    faults: list[tuple[float, bool]] = []
    holder: dict[str, Recorder] = {}

    def tick() -> None:
        r = holder["rec"]
        t = r.lines[0].ring.end_frame / RATE
        faults.append((t, r.fault))
        if t >= 40 and filler.exists():
            filler.unlink()  # the uploader's acks let retention free space

    rec, sink, pins, data, _ = build(
        tmp_path, small_disk, office, "1 line1 offhook\n50 line1 onhook\n", seconds=55, on_tick=tick
    )
    holder["rec"] = rec
    rec.run()

    during = [f for t, f in faults if 20 < t < 40]
    after = [f for t, f in faults if t > 45]
    assert during and all(during), "the full disk must show as a fault while it lasts"
    assert after and not any(after), "the fault must clear once space is back"
    status = pins.pin(5).history
    flips = [t for t, _ in status if 20 * NS_PER_S < t < 40 * NS_PER_S]
    assert len(flips) > 100, "status LED must blink fast (5 Hz) during the fault"

    entries = entries_of(small_disk)
    assert len(entries) == 2 and sink.pending == 0
    assert {p.name: p.read_bytes() for p in first.iterdir()} == first_bytes
    m = json.loads((entries[1] / "manifest.json").read_text())
    # The single-file stream was given up when the disk filled; the journal carried the
    # call, every frame of it (RAM held what the disk could not take).
    assert m["container"] == "segments" and m["recovered"] is False and m["dropped_frames"] == 0
    ids = load_identities(office[0])
    samples, _, _ = decrypt_recording(entries[1], ids)
    np.testing.assert_array_equal(samples, data[1 * RATE : 51 * RATE])
    from sealedrec.keys import load_device_key

    device = load_device_key(tmp_path / "device.key").public_key()
    reports, chain = verify_entries(entries, device, ids)
    assert [r.problems for r in reports] == [[], []] and chain == []


def test_disk_never_freed_keeps_the_synced_part_for_the_next_start(
    tmp_path: Path, small_disk: Path, office
):
    filler = fill(small_disk, leave=200 * 1024)
    rec, sink, _, data, cfg = build(
        tmp_path, small_disk, office, "1 line1 offhook\n30 line1 onhook\n", seconds=33
    )
    rec.run()
    assert sink.pending == 1 and rec.storage_fault is not None
    assert not (small_disk / "outbox" / "sealed").exists() or not entries_of(small_disk)
    # Next start, after space was freed: the journal becomes a recovered recording.
    filler.unlink()
    sink2 = make_sealing_sink(cfg, StorageHealth())
    [rec_id] = sink2.recover()
    [entry] = entries_of(small_disk)
    m = json.loads((entry / "manifest.json").read_text())
    assert m["recording_id"] == rec_id and m["recovered"] is True
    samples, _, _ = decrypt_recording(entry, load_identities(office[0]))
    assert len(samples) > 2 * RATE
    np.testing.assert_array_equal(samples, data[RATE : RATE + len(samples)])
