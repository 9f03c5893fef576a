"""The manifest's ``levels``: measured by the recorder as a call is stored, signed with the
manifest, bounded by the office's model.

Calls go through the real pipeline (``linetap replay --format sealed``); every figure is
compared with numpy computed here over the audio the office decrypts
(:func:`sealedrec.verify.decrypt_samples`), and the line judgements with the limits
``linetap check`` uses (:mod:`firmware.dsp.levels`, ``CLIP_FAIL_FRACTION``).
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware.app import make_sealing_sink
from firmware.cli import main
from firmware.config import load_config
from firmware.dsp.calllevels import CallLevelMeter
from firmware.dsp.levels import HUM_BAD_DBFS, hum_is_bad, hum_is_noticeable, line_is_silent
from firmware.recorder import StorageHealth
from firmware.sinks import RecordingEnd, RecordingStart
from firmware.tools._checks.base import CLIP_FAIL_FRACTION
from sealedrec.age import load_identities
from sealedrec.keys import create_device_key, load_device_key
from sealedrec.levels import CallLevels
from sealedrec.manifest import ManifestError, sign_manifest, verify_signature
from sealedrec.model import validate_manifest
from sealedrec.verify import blob_path, decrypt_samples, read_manifest
from tests.helpers import RATE, START_UTC, config_text, espeak_word, replay_argv, signed_manifest

SECONDS = 20
SAMPLES = Path(__file__).resolve().parent.parent / "firmware" / "samples"
# 50 Hz hum from sox at amplitude 0.1: power 0.1**2 / 2, i.e. -23.01 dBFS.
HUM_AMPLITUDE = 0.1
HUM_DBFS = 10 * math.log10(HUM_AMPLITUDE**2 / 2)


def _sox(out: Path, *effects: str) -> npt.NDArray[np.int16]:
    """``SECONDS`` of a tone made by sox, mono at ``RATE``."""
    subprocess.run(
        ["sox", "-n", "-r", str(RATE), "-b", "16", "-c", "1", str(out), "synth", str(SECONDS),
         *effects],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    samples, rate = soundfile.read(out, dtype="int16")
    assert rate == RATE
    return np.asarray(samples, dtype=np.int16)


def _replay(tmp: Path, office: tuple[Path, str], audio: Path, events: str, lines: int) -> Path:
    out = tmp / "data"
    conf = tmp / "linetap.toml"
    conf.write_text(
        config_text(tmp / "wav", lines=lines, storage_format="sealed", recipients=(office[1],))
    )
    (tmp / "events.txt").write_text(events)
    argv = replay_argv(conf, audio, tmp / "events.txt", out, "--format", "sealed")
    assert main([*argv, "--start-utc", START_UTC]) == 0
    return out


def _stored(entry: Path, office: tuple[Path, str]) -> tuple[npt.NDArray[np.int16], dict[str, Any]]:
    """What the office decrypts, and the manifest (whose signature must verify)."""
    manifest = read_manifest(entry)
    device = load_device_key(entry.parents[2] / "keys" / "device.key").public_key()
    verify_signature(manifest, device)
    path = blob_path(entry, manifest)
    assert path is not None
    return decrypt_samples(path, manifest["container"], load_identities(office[0])), manifest


def _db(power: npt.NDArray[np.float64] | float) -> npt.NDArray[np.float64]:
    return np.asarray(10 * np.log10(np.maximum(power, 1e-12)))


def _nearest_rank(values: npt.NDArray[np.float64], q: float) -> float:
    ordered = np.sort(values)
    return float(ordered[math.ceil(q * ordered.size) - 1])


def _independent(samples: npt.NDArray[np.int16]) -> dict[str, float]:
    """The figures ``levels`` claims, from the samples, written out again here."""
    x = samples.astype(np.float64) / 32768
    window, block = RATE // 50, RATE // 10  # 20 ms, 100 ms
    windows = x[: x.size // window * window].reshape(-1, window)
    blocks_db = _db((x[: x.size // block * block].reshape(-1, block) ** 2).mean(axis=1))
    return {
        "windows": windows.shape[0],
        "silent_windows": int(np.count_nonzero((windows**2).mean(axis=1) < 10 ** (-55 / 10))),
        "blocks": blocks_db.size,
        "rms": float(_db(float(np.mean(x**2)))),
        "median": _nearest_rank(blocks_db, 0.5),
        "p95": _nearest_rank(blocks_db, 0.95),
        "peak": 20 * math.log10(np.abs(samples.astype(np.int32)).max() / 32768),
        "clipped": int(np.count_nonzero(np.abs(samples.astype(np.int32)) >= 32767)),
    }


def _assert_levels_match(levels: CallLevels, samples: npt.NDArray[np.int16]) -> None:
    want = _independent(samples)
    assert levels.frames == samples.size
    assert levels.measured_ms == round(samples.size * 1000 / RATE)
    assert (levels.windows, levels.silent_windows) == (want["windows"], want["silent_windows"])
    assert levels.blocks == want["blocks"]
    assert levels.rms_dbfs == pytest.approx(want["rms"], abs=0.02)
    # The device keeps a 0.1 dB histogram of the blocks: each quantile to its bin.
    assert levels.rms_median_dbfs_x100 / 100 == pytest.approx(want["median"], abs=0.06)
    assert levels.rms_p95_dbfs_x100 / 100 == pytest.approx(want["p95"], abs=0.06)
    assert levels.peak_dbfs == pytest.approx(want["peak"], abs=0.01)
    assert levels.clipped_samples == want["clipped"]


@pytest.fixture(scope="module")
def four_lines(tmp_path_factory: pytest.TempPathFactory, office) -> dict[str, Path]:
    """One replay, four lines, one 17 s call each: a silent line (a dead tap: noise far
    under the floor), espeak-ng speech, 50 Hz hum from sox, and a sox tone that clips."""
    tmp = tmp_path_factory.mktemp("levels")
    frames = SECONDS * RATE
    silence = np.random.default_rng(7).normal(0, 2, frames).astype(np.int16)
    speech = np.resize(espeak_word("hello, this line records every word we say"), frames)
    hum = _sox(tmp / "hum.wav", "sine", "50", "vol", str(HUM_AMPLITUDE))
    clipping = _sox(tmp / "clip.wav", "sine", "440", "vol", "1.2")
    audio = tmp / "lines.wav"
    soundfile.write(audio, np.stack([silence, speech, hum, clipping], axis=1), RATE)
    events = "".join(f"1 line{n} offhook\n16 line{n} onhook\n" for n in range(1, 5))
    out = _replay(tmp, office, audio, events, lines=4)
    entries = {read_manifest(e)["line"]: e for e in sorted((out / "outbox" / "sealed").iterdir())}
    assert sorted(entries) == ["line1", "line2", "line3", "line4"]
    return {
        "silence": entries["line1"],
        "speech": entries["line2"],
        "hum": entries["line3"],
        "clipping": entries["line4"],
    }


@pytest.mark.parametrize("line", ["silence", "speech", "hum", "clipping"])
def test_levels_are_those_of_the_stored_audio(four_lines: dict[str, Path], office, line: str):
    samples, manifest = _stored(four_lines[line], office)
    assert manifest["duration_ms"] > 10_000  # a call the office's silent-line rule judges
    levels = validate_manifest(manifest).levels
    assert levels is not None
    assert levels.silence_floor_dbfs_x100 == -5500  # linetap check's floor
    _assert_levels_match(levels, samples)


def test_a_silent_line_is_silent_through_the_whole_call(four_lines: dict[str, Path], office):
    levels = validate_manifest(_stored(four_lines["silence"], office)[1]).levels
    assert levels is not None
    assert levels.silent_fraction == 1.0 and line_is_silent(levels.silent_fraction)
    assert levels.rms_dbfs < -70 and levels.clipped_samples == 0


def test_speech_is_not_silent(four_lines: dict[str, Path], office):
    levels = validate_manifest(_stored(four_lines["speech"], office)[1]).levels
    assert levels is not None
    assert 0 < levels.silent_fraction < 0.5 and not line_is_silent(levels.silent_fraction)
    assert -30 < levels.rms_median_dbfs_x100 / 100 < levels.rms_p95_dbfs_x100 / 100 < 0
    hum = levels.hum
    assert hum is not None and not hum_is_noticeable(hum[1], levels.rms_dbfs)


def test_a_50_hz_hum_line_is_over_the_checks_limit(four_lines: dict[str, Path], office):
    levels = validate_manifest(_stored(four_lines["hum"], office)[1]).levels
    assert levels is not None
    assert levels.hum_50hz_dbfs_x100 is not None and levels.hum_60hz_dbfs_x100 is not None
    assert levels.hum_50hz_dbfs_x100 / 100 == pytest.approx(HUM_DBFS, abs=0.2)
    assert levels.hum_50hz_dbfs_x100 >= HUM_BAD_DBFS * 100
    assert levels.hum == (50, levels.hum_50hz_dbfs_x100 / 100) and hum_is_bad(levels.hum[1])
    assert levels.hum_60hz_dbfs_x100 / 100 < HUM_DBFS - 40  # no 60 Hz in it


def test_a_clipping_line_has_clipped_samples(four_lines: dict[str, Path], office):
    levels = validate_manifest(_stored(four_lines["clipping"], office)[1]).levels
    assert levels is not None
    assert levels.clipped_samples > 0
    assert levels.clipped_fraction > CLIP_FAIL_FRACTION  # linetap check's FAIL
    assert levels.peak_dbfs == 0.0
    for other in ("silence", "speech", "hum"):
        quiet = validate_manifest(_stored(four_lines[other], office)[1]).levels
        assert quiet is not None and quiet.clipped_samples == 0


def test_levels_are_measured_after_dtmf_masking(tmp_path: Path, office):
    """The sample call keys a card number in DTMF; the levels are of the stored audio,
    in which those tones are masked, not of what the line carried."""
    out = _replay(
        tmp_path, office, SAMPLES / "sample_call.flac",
        (SAMPLES / "sample_call.events").read_text(), lines=1,
    )  # fmt: skip
    [entry] = sorted((out / "outbox" / "sealed").iterdir())
    samples, manifest = _stored(entry, office)
    assert len(manifest["masked_spans"]) > 1
    levels = validate_manifest(manifest).levels
    assert levels is not None
    _assert_levels_match(levels, samples)
    line, _ = soundfile.read(SAMPLES / "sample_call.flac", dtype="int16")
    start = round(manifest["start_monotonic_ns"] * RATE / 1_000_000_000)
    heard = _independent(np.asarray(line[start : start + samples.size], dtype=np.int16))
    # The key tones (-21 dBFS) were on the line; in the recording and its levels their
    # spans are comfort noise (about -71 dBFS), under the silence floor.
    on_line = np.asarray(line[start : start + samples.size], dtype=np.float64) / 32768
    window_db = _db((on_line[: on_line.size // 160 * 160].reshape(-1, 160) ** 2).mean(axis=1))
    loud_masked = sum(
        int(np.count_nonzero(window_db[-(-span["start_ms"] // 20) : span["end_ms"] // 20] >= -55))
        for span in manifest["masked_spans"]
    )
    assert loud_masked > 50  # ~5 per key press
    assert levels.silent_windows - heard["silent_windows"] >= loud_masked


# -- the meter alone -----------------------------------------------------------------------


def test_capture_periods_do_not_change_the_summary():
    """Fed in 20 ms periods or all at once, with a tail shorter than a stretch: the same."""
    data = np.random.default_rng(1).normal(0, 3000, 7 * RATE + 1234).astype(np.int16)
    data[RATE : 2 * RATE] = 0  # a silent second
    whole = CallLevelMeter(RATE)
    whole.update(data)
    periods = CallLevelMeter(RATE)
    for i in range(0, data.size, 160):
        periods.update(data[i : i + 160])
    summary = whole.summary()
    assert summary is not None and summary == periods.summary()
    assert summary.windows == data.size // 160 and summary.blocks == data.size // 800


def test_short_and_empty_recordings():
    assert CallLevelMeter(RATE).summary() is None  # nothing stored (a discarded call)
    meter = CallLevelMeter(RATE)
    meter.update(np.full(round(0.15 * RATE), 1000, dtype=np.int16))
    levels = meter.summary()
    assert levels is not None
    assert (levels.windows, levels.blocks) == (7, 1)  # whole 20 ms windows, 100 ms blocks
    assert levels.hum is None  # the hum fit needs 200 ms
    assert levels.rms_dbfs == pytest.approx(20 * math.log10(1000 / 32768), abs=0.01)


def test_16_khz_lines():
    rate = 16_000
    t = np.arange(3 * rate) / rate
    data = (0.1 * 32768 * np.sin(2 * np.pi * 60 * t)).astype(np.int16)
    meter = CallLevelMeter(rate)
    meter.update(data)
    levels = meter.summary()
    assert levels is not None
    assert (levels.windows, levels.blocks) == (150, 30)
    assert levels.hum is not None and levels.hum[0] == 60
    assert levels.hum[1] == pytest.approx(HUM_DBFS, abs=0.2)


# -- sealing: calls without levels ---------------------------------------------------------


def _sink(tmp_path: Path, office: tuple[Path, str], opt_out_mode: str = "pause"):
    conf = tmp_path / "linetap.toml"
    conf.write_text(
        config_text(
            tmp_path / "wav", lines=1, storage_format="sealed", recipients=(office[1],),
            data_dir=tmp_path / "data", opt_out_mode=opt_out_mode,
        )
    )  # fmt: skip
    cfg = load_config(conf)
    create_device_key(tmp_path / "data" / "keys" / "device.key")
    return cfg, make_sealing_sink(cfg, StorageHealth())


def _start(rec: str) -> RecordingStart:
    return RecordingStart(rec, "dev", "line1", 0, RATE, "offhook", START_UTC, 0, 0, 0.0)


def _outbox_manifests(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {
        m["recording_id"]: m
        for m in map(read_manifest, (tmp_path / "data" / "outbox" / "sealed").iterdir())
    }


def test_discarded_and_recovered_calls_have_no_levels(tmp_path: Path, office):
    """A discarded call stores no audio; a call cut by a crash has no end record, and the
    device cannot read its sealed audio back: both say ``levels: null``."""
    cfg, sink = _sink(tmp_path, office)
    audio = np.random.default_rng(2).normal(0, 3000, 3 * RATE).astype(np.int16)
    end = RecordingEnd("onhook", START_UTC, audio.size, 3.0, audio.size)
    kept = sink.open(_start("kept"))
    kept.write(audio)
    kept.close(end)
    dropped = sink.open(_start("dropped"))
    dropped.write(audio)
    dropped.discard()
    dropped.close(end)
    while sink.pending:
        sink.poll()
    sink.open(_start("cut")).write(audio)  # ... and the power goes
    assert make_sealing_sink(cfg, StorageHealth()).recover() == ["cut"]
    manifests = _outbox_manifests(tmp_path)
    assert manifests["kept"]["levels"]["frames"] == audio.size
    assert manifests["dropped"]["discarded"] is True and manifests["dropped"]["levels"] is None
    assert manifests["cut"]["recovered"] is True and manifests["cut"]["levels"] is None
    for manifest in manifests.values():
        validate_manifest(manifest)


# -- the office's model ----------------------------------------------------------------------


@pytest.fixture
def measured(four_lines: dict[str, Path]) -> dict[str, Any]:
    levels: dict[str, Any] = read_manifest(four_lines["speech"])["levels"]
    return levels


def _with_levels(levels: object) -> dict[str, Any]:
    """A signed manifest carrying ``levels`` (none at all for "absent")."""
    key = Ed25519PrivateKey.generate()
    body = signed_manifest(key, device_id="dev", rec="rec-1", seq=1, prev="0" * 64, blob=b"x")
    del body["signature"]
    if levels != "absent":
        body["levels"] = levels
    return sign_manifest(body, key)


def test_the_model_takes_manifests_with_and_without_levels(measured: dict[str, Any]):
    assert validate_manifest(_with_levels("absent")).levels is None  # older firmware
    assert validate_manifest(_with_levels(None)).levels is None
    model = validate_manifest(_with_levels(measured)).levels
    assert model is not None and model.model_dump() == measured
    newer = {**measured, "crest_db_x100": 1200}  # a field of newer firmware: kept
    assert validate_manifest(_with_levels(newer)).levels is not None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"silent_windows": 10**9}, "silent_windows: more than windows"),
        ({"clipped_samples": 10**12}, "clipped_samples: more than frames"),
        ({"rms_median_dbfs_x100": -100, "rms_p95_dbfs_x100": -2000}, "below the median"),
        ({"rms_dbfs_x100": -12_001}, "levels.rms_dbfs_x100"),
        ({"peak_dbfs_x100": 5_000}, "levels.peak_dbfs_x100"),
        ({"windows": -1}, "levels.windows"),
        ({"window_ms": 0}, "levels.window_ms"),
        ({"hum_50hz_dbfs_x100": "-30"}, "levels.hum_50hz_dbfs_x100"),
        ({"frames": True}, "levels.frames"),
        ({"blocks": None}, "levels.blocks"),
    ],
)
def test_the_model_bounds_levels(measured: dict[str, Any], change: dict[str, Any], field: str):
    with pytest.raises(ManifestError, match="manifest field levels") as caught:
        validate_manifest(_with_levels({**measured, **change}))
    assert field in str(caught.value)


def test_levels_missing_a_field_or_not_an_object_are_refused(measured: dict[str, Any]):
    partial = {k: v for k, v in measured.items() if k != "rms_p95_dbfs_x100"}
    with pytest.raises(ManifestError, match=r"levels\.rms_p95_dbfs_x100"):
        validate_manifest(_with_levels(partial))
    with pytest.raises(ManifestError, match="manifest field levels"):
        validate_manifest(_with_levels([1, 2, 3]))
