"""In-page playback (headoffice/web/audio.py) over real sealed recordings.

The recordings are made by the real recorder (`linetap replay --format sealed`, FLAC and
Opus) from espeak-ng speech and sox DTMF, sealed to an office key made by the real
age-keygen; a recovered (``segments``) recording is built from the same audio by the
device's own in-call writer (firmware.sealwriter), and as older firmware journalled it
(a FLAC file per second). Everything is decrypted with the office identity through
``sealedrec.age`` and compared with ``sealedrec.verify.decrypt_samples``.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from firmware.cli import main
from firmware.sealwriter import SealingSettings, SealingWriter
from firmware.sinks import RecordingEnd, RecordingStart
from headoffice.web.audio import (
    PlayableAudio,
    PlaybackCache,
    PlaybackError,
    RangeNotSatisfiable,
    byte_range,
    decrypt_playable,
    masked_regions,
    peaks,
    peaks_json,
    range_response_headers,
)
from sealedrec.age import AgeReader, encrypt_bytes, load_identities, parse_recipient
from sealedrec.segments import FILE_MAGIC_V1, encode_record
from sealedrec.verify import decrypt_samples
from tests.cid_signals import missing_tools
from tests.dtmf_signals import dial
from tests.helpers import START_UTC, config_text, espeak_word, replay_argv

RATE = 8000
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    bool(missing_tools()), reason=f"missing Debian packages: {missing_tools()}"
)


# -- real recordings ---------------------------------------------------------------------
def _record(folder: Path, recipient: str, codec: str) -> tuple[Path, dict[str, Any]]:
    """One call replayed through the real recorder and sealed: (its outbox entry, manifest).
    Speech at 1.5 s, the digits 4 2 keyed at 4 s (masked with silence)."""
    line = np.zeros(8 * RATE, dtype=np.int16)
    word = (espeak_word("hello, accounts", RATE) // 3).astype(np.int16)
    line[int(1.5 * RATE) : int(1.5 * RATE) + word.size] += word
    tones, _ = dial("42", RATE, on_s=0.08, off_s=0.08)
    line[4 * RATE : 4 * RATE + tones.size] += tones
    out = folder / "out"
    conf = folder / "linetap.toml"
    text = config_text(
        out,
        lines=1,
        storage_format="sealed",
        recipients=(recipient,),
        codec=codec,
        data_dir=folder / "data",
        preroll_s=0.5,
    )
    conf.write_text(text + '\n[telephony]\nmask_mode = "silence"\n')
    audio = folder / "line.wav"
    soundfile.write(audio, line, RATE, subtype="PCM_16")
    events = folder / "events.txt"
    events.write_text("1 line1 offhook\n7 line1 onhook\n")
    options = ("--format", "sealed", "--start-utc", START_UTC)
    assert main(replay_argv(conf, audio, events, out, *options)) == 0
    (manifest_path,) = (out / "outbox").glob("*/*/manifest.json")
    return manifest_path.parent, json.loads(manifest_path.read_text())


@pytest.fixture(scope="module")
def keys(office: tuple[Path, str]) -> list[X25519PrivateKey]:
    return load_identities(office[0])


@pytest.fixture(scope="module")
def flac_rec(
    tmp_path_factory: pytest.TempPathFactory, office: tuple[Path, str]
) -> tuple[Path, dict[str, Any]]:
    return _record(tmp_path_factory.mktemp("flac"), office[1], "flac")


@pytest.fixture(scope="module")
def opus_rec(
    tmp_path_factory: pytest.TempPathFactory, office: tuple[Path, str]
) -> tuple[Path, dict[str, Any]]:
    return _record(tmp_path_factory.mktemp("opus"), office[1], "opus")


def _journal_v1(path: Path, samples: np.ndarray, recipient: str) -> None:
    """A version-1 journal (firmware before 2026-12): a whole FLAC file per second, each
    in an age file of its own."""
    with open(path, "wb") as fh:
        fh.write(FILE_MAGIC_V1)
        for start in range(0, samples.size, RATE):
            part = samples[start : start + RATE]
            flac = io.BytesIO()
            soundfile.write(flac, part, RATE, format="FLAC", subtype="PCM_16")
            sealed = encrypt_bytes(flac.getvalue(), [parse_recipient(recipient)])
            fh.write(encode_record(sealed, part.size))


def _journal_v2(folder: Path, samples: np.ndarray, recipient: str) -> Path:
    """The journal the device's own writer leaves (one FLAC stream across its records)."""
    start = RecordingStart("recovered-1", "dev", "line1", 0, RATE, "offhook", START_UTC, 0, 0, 0.0)
    writer = SealingWriter(
        folder / "journal", start, SealingSettings((parse_recipient(recipient),))
    )
    for at in range(0, samples.size, RATE // 10):
        writer.write(samples[at : at + RATE // 10])
    writer.close(RecordingEnd("onhook", START_UTC, samples.size, samples.size / RATE, samples.size))
    return folder / "journal" / "segments.jrn"


@pytest.fixture(scope="module", params=["v2", "v1"])
def segments_rec(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    office: tuple[Path, str],
    flac_rec: tuple[Path, dict[str, Any]],
    keys: list[X25519PrivateKey],
) -> tuple[Path, dict[str, Any], np.ndarray]:
    """A recovered recording: the FLAC call's audio as the device journals it (both
    journal versions the office reads), with a manifest naming its size and hash."""
    entry, manifest = flac_rec
    samples = decrypt_samples(entry / "recording.age", "age", keys)
    folder = tmp_path_factory.mktemp("segments")
    path = folder / "recording.segments"
    if request.param == "v1":
        _journal_v1(path, samples, office[1])
    else:
        _journal_v2(folder, samples, office[1]).rename(path)
    blob = path.read_bytes()
    recovered = {
        **manifest,
        "recording_id": "recovered-1",
        "container": "segments",
        "codec": "flac",
        "recovered": True,
        "blob_bytes": len(blob),
        "blob_sha256": hashlib.sha256(blob).hexdigest(),
    }
    return path, recovered, samples


def _decoded(audio: PlayableAudio) -> np.ndarray:
    samples, rate = soundfile.read(io.BytesIO(audio.data), dtype="int16", always_2d=False)
    assert rate == audio.sample_rate
    return np.asarray(samples)


# -- decrypting for playback ---------------------------------------------------------------
def test_flac_recording_plays_as_the_sealed_flac(flac_rec, keys):
    entry, manifest = flac_rec
    blob = entry / "recording.age"
    audio = decrypt_playable(blob, manifest, keys)
    assert audio.mime == "audio/flac"
    with open(blob, "rb") as fh:
        assert audio.data == AgeReader(fh, keys).read()  # the sealed stream as it is
    assert soundfile.info(io.BytesIO(audio.data)).format == "FLAC"
    expected = decrypt_samples(blob, "age", keys)
    np.testing.assert_array_equal(_decoded(audio), expected)
    assert expected.size == manifest["audio_frames"] > 5 * RATE
    assert audio.sample_rate == RATE
    assert audio.duration_s == pytest.approx(manifest["audio_frames"] / RATE)
    np.testing.assert_array_equal(audio.samples(), expected)
    # one key alone works as well as the list
    assert decrypt_playable(blob, manifest, keys[0]).data == audio.data


def test_opus_recording_plays_as_the_sealed_ogg_opus(opus_rec, keys):
    entry, manifest = opus_rec
    assert manifest["codec"] == "opus"
    blob = entry / "recording.age"
    audio = decrypt_playable(blob, manifest, keys)
    assert audio.mime == "audio/ogg"
    assert audio.data[:4] == b"OggS" and b"OpusHead" in audio.data[:64]
    np.testing.assert_array_equal(_decoded(audio), decrypt_samples(blob, "age", keys))
    assert audio.duration_s == pytest.approx(manifest["audio_frames"] / RATE, abs=0.05)


def test_recovered_segments_recording_plays_as_one_flac(segments_rec, keys):
    path, manifest, original = segments_rec
    audio = decrypt_playable(path, manifest, keys)
    assert audio.mime == "audio/flac"
    assert soundfile.info(io.BytesIO(audio.data)).format == "FLAC"
    expected = decrypt_samples(path, "segments", keys)
    np.testing.assert_array_equal(expected, original)
    np.testing.assert_array_equal(_decoded(audio), expected)
    assert audio.duration_s == pytest.approx(original.size / RATE)


def test_a_blob_that_differs_from_its_manifest_or_has_no_audio_is_refused(flac_rec, keys, tmp_path):
    entry, manifest = flac_rec
    altered = tmp_path / "recording.age"
    data = bytearray((entry / "recording.age").read_bytes())
    data[-5] ^= 1
    altered.write_bytes(bytes(data))
    with pytest.raises(PlaybackError, match="sha256"):
        decrypt_playable(altered, manifest, keys)
    with pytest.raises(PlaybackError, match="cannot decrypt"):  # unchecked: the age MAC fails
        decrypt_playable(altered, manifest, keys, check=False)
    with pytest.raises(PlaybackError, match="no audio"):
        decrypt_playable(altered, {**manifest, "container": None}, keys)
    other = X25519PrivateKey.generate()
    with pytest.raises(PlaybackError, match="cannot decrypt"):
        decrypt_playable(entry / "recording.age", manifest, other)


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.exists()}


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def test_decrypting_writes_no_file(flac_rec, opus_rec, segments_rec, keys, tmp_path):
    """Files are only read: any open for writing fails during the call, the temp dir and
    the store stay as they were (the store also read-only, though root ignores that)."""
    store = tmp_path / "store"
    blobs = []
    for entry, manifest in (flac_rec, opus_rec):
        copy = store / manifest["recording_id"]
        shutil.copytree(entry, copy)
        blobs.append((copy / "recording.age", manifest))
    seg_copy = store / "recovered" / "recording.segments"
    seg_copy.parent.mkdir(parents=True)
    shutil.copy(segments_rec[0], seg_copy)
    blobs.append((seg_copy, segments_rec[1]))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    for path in sorted(store.rglob("*"), reverse=True):
        path.chmod(0o500 if path.is_dir() else 0o400)
    store.chmod(0o500)
    tmp.chmod(0o500)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("TMPDIR", str(tmp))
        monkeypatch.setattr(tempfile, "tempdir", str(tmp))
        _no_writes_while_decrypting(tmp_path, store, tmp, blobs, keys)


def _no_writes_while_decrypting(
    tmp_path: Path, store: Path, tmp: Path, blobs: list[tuple[Path, Any]], keys: Any
) -> None:
    before, system_before = _tree(tmp_path), _tree(Path(tempfile.gettempdir()))

    real_open, real_os_open = builtins.open, os.open
    writes: list[str] = []

    def guarded_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+"):
            writes.append(f"open({file!r}, {mode!r})")
            raise PermissionError("test: no writes")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & _WRITE_FLAGS:
            writes.append(f"os.open({path!r}, {flags:#o})")
            raise PermissionError("test: no writes")
        return real_os_open(path, flags, *args, **kwargs)

    with pytest.MonkeyPatch.context() as guard:
        guard.setattr(builtins, "open", guarded_open)
        guard.setattr(io, "open", guarded_open)
        guard.setattr(os, "open", guarded_os_open)
        results = [decrypt_playable(blob, manifest, keys) for blob, manifest in blobs]
    assert not writes
    assert [r.mime for r in results] == ["audio/flac", "audio/ogg", "audio/flac"]
    assert _tree(tmp_path) == before
    assert _tree(Path(tempfile.gettempdir())) == system_before
    for path in store.rglob("*"):
        path.chmod(0o700)
    store.chmod(0o700)
    tmp.chmod(0o700)


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_no_file_is_opened_for_writing_even_by_libsndfile(flac_rec, segments_rec, office, tmp_path):
    """In a fresh process under strace (so C code is watched too): after the imports, every
    open of the playback calls is read-only, and nothing is created, renamed or linked."""
    entry, manifest = flac_rec
    seg_path, seg_manifest, _ = segments_rec
    (tmp_path / "m.json").write_text(json.dumps([manifest, seg_manifest]))
    script = f"""
import json, os, sys
from pathlib import Path
from headoffice.web.audio import decrypt_playable
from sealedrec.age import load_identities
keys = load_identities({str(office[0])!r})
m1, m2 = json.loads(Path({str(tmp_path / "m.json")!r}).read_text())
os.write(2, b"--PLAY--\\n")
a = decrypt_playable(Path({str(entry / "recording.age")!r}), m1, keys)
b = decrypt_playable(Path({str(seg_path)!r}), m2, keys)
a.samples(); b.samples()
os.write(2, b"--DONE--\\n")
print(len(a.data), len(b.data))
"""
    trace = tmp_path / "trace.txt"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=open,openat,openat2,creat,rename,renameat,renameat2,link,linkat,"
            "mkdir,mkdirat,unlink,unlinkat,memfd_create,write",
            "-o",
            str(trace),
            sys.executable,
            "-c",
            script,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = trace.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "--PLAY--" in line)
    end = next(i for i, line in enumerate(lines) if "--DONE--" in line)
    during = lines[start + 1 : end]
    opens = [line for line in during if "open" in line and "memfd" not in line]
    assert opens  # the blobs were read
    bad = [
        line
        for line in during
        if any(s in line for s in ("O_WRONLY", "O_RDWR", "O_CREAT", "creat(", "memfd_create"))
        or any(s in line for s in ("rename", "link", "mkdir"))
    ]
    assert not bad, bad
    # writes go only to the standard streams (none happen during the calls at all)
    assert not [line for line in during if "write(" in line]


# -- HTTP Range ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("bytes=0-0", (0, 0)),
        ("bytes=0-99", (0, 99)),
        ("bytes=10-", (10, 999)),
        ("bytes=0-", (0, 999)),
        ("bytes=990-2000", (990, 999)),  # last-pos clamped to the end
        ("bytes=999-999", (999, 999)),
        ("bytes=-100", (900, 999)),  # suffix
        ("bytes=-1", (999, 999)),
        ("bytes=-5000", (0, 999)),  # suffix longer than the file: all of it
        ("Bytes = 5-6", (5, 6)),  # unit is case-insensitive, OWS tolerated
        ("bytes= 5-6 ", (5, 6)),
        ("bytes=0-1,5-6", None),  # several ranges: not honoured, the whole file (200)
        ("bytes=-1,0-1", None),
        ("bytes=5-4", None),  # invalid: last before first
        ("bytes=-", None),
        ("bytes=a-b", None),
        ("bytes=+1-2", None),
        ("bytes=1-2-3", None),
        ("items=0-10", None),  # another unit
        ("bytes", None),
        ("bytes=0x10-", None),
    ],
)
def test_byte_range(header, expected):
    assert byte_range(header, 1000) == expected


@pytest.mark.parametrize(
    "header", ["bytes=1000-", "bytes=1000-1001", "bytes=5000-6000", "bytes=-0"]
)
def test_unsatisfiable_range_is_416(header):
    with pytest.raises(RangeNotSatisfiable) as caught:
        byte_range(header, 1000)
    assert caught.value.size == 1000
    assert caught.value.headers == {"Content-Range": "bytes */1000", "Accept-Ranges": "bytes"}


def test_any_range_of_an_empty_file_is_416():
    for header in ("bytes=0-", "bytes=-1", "bytes=0-0"):
        with pytest.raises(RangeNotSatisfiable):
            byte_range(header, 0)
    assert byte_range(None, 0) is None


def test_ranged_slices_join_to_the_whole_file(flac_rec, keys):
    entry, manifest = flac_rec
    audio = decrypt_playable(entry / "recording.age", manifest, keys)
    size = audio.size
    assert size > 10_000
    parts, pos, step = [], 0, 4093
    while pos < size:
        header = f"bytes={pos}-{pos + step - 1}" if pos < size // 2 else f"bytes={pos}-"
        span = byte_range(header, size)
        assert span is not None
        start, end = span
        headers = range_response_headers(start, end, size, audio.mime)
        assert headers["Content-Range"] == f"bytes {start}-{end}/{size}"
        assert headers["Accept-Ranges"] == "bytes"
        assert headers["Content-Type"] == "audio/flac"
        chunk = audio.data[start : end + 1]
        assert int(headers["Content-Length"]) == len(chunk)
        parts.append(chunk)
        pos = end + 1
    assert b"".join(parts) == audio.data
    start, end = byte_range("bytes=-777", size) or (0, 0)
    assert audio.data[:start] + audio.data[start : end + 1] == audio.data
    assert end - start + 1 == 777


# -- peaks ---------------------------------------------------------------------------------
def _sine_then_silence() -> np.ndarray:
    t = np.arange(RATE)
    sine = np.round(16384 * np.sin(2 * np.pi * 400 * t / RATE)).astype(np.int16)
    return np.concatenate([sine, np.zeros(RATE, np.int16)])


def test_peaks_of_a_sine_then_silence():
    x = _sine_then_silence()
    assert peaks(x, RATE, 4) == [0.5, -0.5, 0.5, -0.5, 0.0, 0.0, 0.0, 0.0]
    default = peaks(x, RATE)
    assert len(default) == 2 * 200  # 100 buckets per second
    assert set(default[:200]) == {0.5, -0.5} and set(default[200:]) == {0.0}
    assert len(peaks(x, RATE, 7)) == 14  # uneven buckets: still exactly as asked
    ramp = np.arange(10, dtype=np.int16) * 3277  # 0 … 0.9
    assert peaks(ramp, RATE, 2) == pytest.approx([0.4, 0.0, 0.9, 0.5], abs=1e-3)


def test_peaks_scale_limits_and_edge_cases():
    full = np.array([32767, -32768, 0, 0], dtype=np.int16)
    assert peaks(full, RATE, 1) == [1.0, -1.0]
    assert peaks(np.array([0.25, 3.0, -7.0]), RATE, 3) == [0.25, 0.25, 1.0, 1.0, -1.0, -1.0]
    assert peaks(np.array([5, 6, 7], dtype=np.int16), RATE, 10) == pytest.approx(
        [v / 32768 for v in (5, 5, 6, 6, 7, 7)], abs=1e-4
    )  # fewer samples than buckets: one per sample
    assert peaks(np.zeros(0, np.int16), RATE, 10) == []
    stereo = np.array([[100, -16384], [16384, 0]], dtype=np.int16)
    assert peaks(stereo, RATE, 2) == [-0.5, -0.5, 0.5, 0.5]
    with pytest.raises(ValueError):
        peaks(full, RATE, 0)


def test_peaks_are_vectorised_for_an_hour():
    hour = np.tile(_sine_then_silence(), 1800)  # 60 min at 8 kHz
    began = time.perf_counter()
    values = peaks(hour, RATE, 2000)
    assert time.perf_counter() - began < 3.0
    assert len(values) == 4000
    assert max(values) == 0.5 and min(values) == -0.5


def test_peaks_json_for_wavesurfer_with_masked_regions(flac_rec, keys):
    entry, manifest = flac_rec
    audio = decrypt_playable(entry / "recording.age", manifest, keys)
    samples = audio.samples()
    spans = manifest["masked_spans"]
    assert len(spans) == 2  # the digits 4 and 2
    data = peaks_json(samples, audio.sample_rate, 500, spans)
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"peaks", "duration", "regions"}
    assert len(data["peaks"]) == 1 and len(data["peaks"][0]) == 1000
    assert all(-1.0 <= v <= 1.0 for v in data["peaks"][0])
    assert data["duration"] == pytest.approx(audio.duration_s)
    assert data["regions"] == [
        {"start": s["start_ms"] / 1000, "end": s["end_ms"] / 1000} for s in spans
    ]
    # masked with silence: the buckets wholly inside a masked span are flat
    per_bucket = data["duration"] / 500
    for region in data["regions"]:
        first = int(region["start"] / per_bucket) + 1
        last = int(region["end"] / per_bucket) - 1
        inside = data["peaks"][0][2 * first : 2 * last]
        assert inside and set(inside) == {0.0}
    assert masked_regions([{"start_ms": 1500, "end_ms": 1750}, {"start_ms": 9, "end_ms": 9}]) == [
        {"start": 1.5, "end": 1.75}
    ]
    assert peaks_json(np.zeros(0, np.int16), RATE) == {
        "peaks": [[]],
        "duration": 0.0,
        "regions": [],
    }


# -- the cache -----------------------------------------------------------------------------
def _audio(size: int, tag: int = 0) -> PlayableAudio:
    return PlayableAudio(bytes([tag]) * size, "audio/flac", RATE, 1.0)


def test_cache_evicts_the_least_recently_used_within_its_budget():
    cache = PlaybackCache(max_bytes=1000)
    cache.put("a", _audio(400, 1))
    cache.put("b", _audio(400, 2))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", _audio(400, 3))  # b goes
    assert cache.ids() == ["a", "c"] and "b" not in cache
    assert cache.total_bytes == 800
    cache.put("d", _audio(1000, 4))  # needs everything
    assert cache.ids() == ["d"] and cache.total_bytes == 1000
    cache.put("e", _audio(1001, 5))  # larger than the budget: not kept, nothing evicted
    assert cache.ids() == ["d"] and cache.get("e") is None
    cache.put("d", _audio(10, 6))  # replaced, not counted twice
    assert cache.total_bytes == 10 and len(cache) == 1
    cache.discard("d")
    assert cache.total_bytes == 0 and len(cache) == 0


def test_cache_never_exceeds_its_budget_under_threads():
    cache = PlaybackCache(max_bytes=5000)
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 2000, size=400).tolist()
    seen: list[int] = []

    def worker(offset: int) -> None:
        for i in range(offset, len(sizes), 4):
            cache.put(f"r{i % 37}", _audio(sizes[i]))
            cache.get(f"r{(i * 7) % 37}")
            seen.append(cache.total_bytes)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(seen) <= 5000
    held = [cache.get(k) for k in cache.ids()]
    assert cache.total_bytes == sum(a.size for a in held if a is not None) <= 5000


def test_cache_loads_a_recording_once_for_concurrent_requests(flac_rec, keys):
    entry, manifest = flac_rec
    cache = PlaybackCache()
    calls: list[int] = []

    def load() -> PlayableAudio:
        calls.append(1)
        time.sleep(0.2)
        return decrypt_playable(entry / "recording.age", manifest, keys)

    got: list[PlayableAudio] = []
    threads = [
        threading.Thread(target=lambda: got.append(cache.get_or_load("rec", load)))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 6 and all(g is got[0] for g in got)
    assert cache.total_bytes == got[0].size

    def broken() -> PlayableAudio:
        raise PlaybackError("nope")

    with pytest.raises(PlaybackError):
        cache.get_or_load("other", broken)
    assert "other" not in cache
