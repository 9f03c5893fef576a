"""Capture backends: AlsaCapture through real alsa-lib, FileCapture through soundfile.

The ALSA tests need no sound card. alsa-lib's ``file`` PCM plugin with a ``null`` slave
and an ``infile`` is a capture device that returns the infile's bytes as interleaved
frames, unpaced (the null slave has no clock, so reads return at once). Overruns never
happen on it, so they are injected by wrapping the real PCM object (``pcm_opener``).

How the test PCM is made visible to alsa-lib (verified on the dev machine, alsa-lib
1.2.8): alsa-lib reads its configuration once per process and caches it. Writing
``$HOME/.asoundrc`` with HOME pointing at tmp_path works only if nothing in the process
has opened a PCM before; once a PCM was opened, a changed HOME is ignored ("Unknown
PCM"), so a per-test asoundrc breaks from the second test on. What does work: on every
``snd_pcm_open`` alsa-lib compares the file list in ``ALSA_CONFIG_PATH`` (and their
mtimes) with the cached one and re-reads everything when it changed. So each test sets
``ALSA_CONFIG_PATH=<system alsa.conf>:<tmp_path>/linetap-test.conf``; tmp_path is unique
per test, so the next open re-reads, and monkeypatch restoring the variable makes the
first open after the test re-read the normal configuration. The system alsa.conf comes
first so the usual names (``null``, ``hw:...``) still resolve; our PCM names its slave
inline, so it would work without it too.
"""

from __future__ import annotations

import errno
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import alsaaudio
import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf

from drivers.audio import AudioBlock, CaptureSource
from drivers.audio.alsa import AlsaCapture
from drivers.audio.factory import open_capture
from drivers.audio.filesource import FileCapture
from drivers.audio.formats import SampleFormat
from drivers.errors import AudioDeviceError, AudioFileError
from tests.alsa_pcm import TAP, FilePcm, make_file_pcm, period_of

NS = 1_000_000_000


def pattern(frames: int, channels: int, offset: int = 0) -> npt.NDArray[np.int16]:
    """A distinct, known signal per channel: channel c, frame i -> (i*7 + c*1000) % 60000 - 30000.

    Covers negative samples, and a swapped or shifted channel never matches.
    """
    i = np.arange(offset, offset + frames, dtype=np.int64)[:, None]
    c = np.arange(channels, dtype=np.int64)[None, :]
    return (((i * 7 + c * 1000) % 60000) - 30000).astype(np.int16)


def read_frames(src: CaptureSource, frames: int) -> tuple[npt.NDArray[np.int16], list[AudioBlock]]:
    """Read blocks until ``frames`` frames arrived (or the source ended); copy each block."""
    blocks: list[AudioBlock] = []
    chunks: list[npt.NDArray[np.int16]] = []
    got = 0
    while got < frames:
        block = src.read()
        if block is None:
            break
        blocks.append(block)
        chunks.append(block.samples.copy())  # blocks may be views of a reused buffer
        got += block.frames
    data = np.concatenate(chunks) if chunks else np.zeros((0, src.channels), np.int16)
    return data, blocks


class FakeClock:
    """A monotonic-ns clock that moves only when told to."""

    def __init__(self, start_ns: int = 10 * NS) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, ns: int) -> None:
        self.now_ns += ns


@pytest.fixture
def file_pcm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FilePcm:
    return make_file_pcm(tmp_path, monkeypatch)


class ScriptedPcm:
    """Wraps a real pyalsaaudio PCM; ``script`` maps read numbers to injected faults.

    Every good read advances ``clock`` by one period (what a real, clocked device takes);
    an injected overrun advances it by ``stall_ns`` (the stall that caused it).
    """

    def __init__(
        self, pcm: Any, clock: FakeClock, period_ns: int, script: dict[int, str], stall_ns: int = 0
    ) -> None:
        self.pcm = pcm
        self.clock = clock
        self.period_ns = period_ns
        self.script = script
        self.stall_ns = stall_ns
        self.reads = 0
        self.drops = 0
        self.stalled: set[int] = set()

    def state(self) -> int:
        # "silent-overrun": pyalsaaudio 0.10's overrun, seen only as the stream's state
        # before the read; the read itself then returns the next period as usual.
        if self.script.get(self.reads) == "silent-overrun" and self.reads not in self.stalled:
            self.stalled.add(self.reads)
            self.clock.advance(self.stall_ns)
            return int(alsaaudio.PCM_STATE_XRUN)
        return int(self.pcm.state())

    def drop(self) -> None:
        self.drops += 1
        self.pcm.drop()

    def read(self) -> tuple[int, bytes]:
        action = self.script.get(self.reads)
        self.reads += 1
        if action == "overrun":
            self.clock.advance(self.stall_ns)
            return -errno.EPIPE, b""
        if action == "eagain":
            return 0, b""
        if action == "error":
            raise alsaaudio.ALSAAudioError(f"Input/output error [{TAP}]")
        result: tuple[int, bytes] = self.pcm.read()
        self.clock.advance(self.period_ns)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pcm, name)


def scripted_opener(
    clock: FakeClock, period_ns: int, script: dict[int, str], stall_ns: int = 0
) -> tuple[Callable[..., Any], list[ScriptedPcm]]:
    opened: list[ScriptedPcm] = []

    def opener(**kwargs: Any) -> ScriptedPcm:
        wrapper = ScriptedPcm(alsaaudio.PCM(**kwargs), clock, period_ns, script, stall_ns)
        opened.append(wrapper)
        return wrapper

    return opener, opened


def missing_alsa_capture(channels: int) -> AlsaCapture:
    """A capture of a PCM name alsa-lib does not know."""
    return AlsaCapture(
        device="linetap_no_such_pcm",
        sample_rate=8000,
        channels=channels,
        sample_format=SampleFormat.S16_LE,
        period_frames=160,
        periods=4,
    )


class TestAlsaCapture:
    @pytest.mark.parametrize("rate", [8000, 16000])
    @pytest.mark.parametrize("channels", [1, 2, 4])
    def test_reads_the_lines_exactly(self, file_pcm: FilePcm, rate: int, channels: int) -> None:
        period = period_of(rate)
        frames = 25 * period  # 0.5 s
        expected = pattern(frames, channels)
        file_pcm.load(expected)
        cap = file_pcm.capture(rate=rate, channels=channels)
        cap.open()
        try:
            got, blocks = read_frames(cap, frames)
        finally:
            cap.close()
        assert all(b.samples.dtype == np.int16 for b in blocks)
        assert all(b.samples.shape == (period, channels) for b in blocks)
        np.testing.assert_array_equal(got[:frames], expected)
        assert [b.start_frame for b in blocks] == [k * period for k in range(len(blocks))]
        assert all(b.gap_frames == 0 for b in blocks)
        stats = cap.stats
        assert (stats.blocks, stats.frames, stats.xruns, stats.lost_frames) == (25, frames, 0, 0)
        assert (cap.sample_rate, cap.channels) == (rate, channels)

    def test_s32_capture_keeps_the_top_16_bits(self, file_pcm: FilePcm) -> None:
        frames, channels = 50 * 160, 2
        top = pattern(frames, channels)
        # Low 16 bits carry junk a 24/32-bit ADC would produce; they must be dropped,
        # and the sign must survive the shift.
        low = np.random.default_rng(1).integers(0, 1 << 16, size=top.shape, dtype=np.int64)
        file_pcm.load(((top.astype(np.int64) << 16) | low).astype(np.int32))
        cap = file_pcm.capture(rate=8000, channels=channels, fmt=SampleFormat.S32_LE)
        cap.open()
        try:
            got, _ = read_frames(cap, frames)
        finally:
            cap.close()
        assert got.dtype == np.int16
        np.testing.assert_array_equal(got[:frames], top)

    def test_missing_pcm_is_one_line_naming_the_device(self, file_pcm: FilePcm) -> None:
        cap = missing_alsa_capture(channels=2)
        with pytest.raises(AudioDeviceError) as err:
            cap.open()
        msg = str(err.value)
        assert "\n" not in msg
        assert msg.startswith("audio.device 'linetap_no_such_pcm': cannot open capture device (")
        assert "[linetap_no_such_pcm]" not in msg  # pyalsaaudio's suffix is not repeated
        assert "arecord -L" in msg and "overlay" in msg
        assert isinstance(err.value, OSError)

    @pytest.mark.parametrize(
        ("forced", "words"),
        [
            ({"rate": 16000}, ["rate 16000 Hz instead of 8000 Hz"]),
            ({"channels": 1}, ["1 channel(s) instead of 2"]),
            ({"format": alsaaudio.PCM_FORMAT_S32_LE}, ["format S32_LE instead of S16_LE"]),
            ({"rate": 16000, "channels": 4}, ["rate 16000 Hz", "4 channel(s) instead of 2"]),
        ],
    )
    def test_refuses_settings_the_device_did_not_give(
        self, file_pcm: FilePcm, forced: dict[str, int], words: list[str]
    ) -> None:
        # A real PCM opened with other parameters stands in for a card that cannot do
        # the requested ones (set_rate_near & co. would have picked these instead).
        opened: list[Any] = []

        def opener(**kwargs: Any) -> Any:
            pcm = alsaaudio.PCM(**{**kwargs, **forced})
            opened.append(pcm)
            return pcm

        cap = file_pcm.capture(rate=8000, channels=2, pcm_opener=opener)
        with pytest.raises(AudioDeviceError) as err:
            cap.open()
        msg = str(err.value)
        assert "\n" not in msg and f"audio.device '{TAP}'" in msg
        for word in words:
            assert word in msg
        assert "audio.sample_rate" in msg and "--dump-hw-params" in msg
        # The refused PCM was closed, not leaked (a real card would stay busy).
        with pytest.raises(alsaaudio.ALSAAudioError, match="closed"):
            opened[0].read()

    def test_overrun_becomes_a_gap_on_the_next_block(self, file_pcm: FilePcm) -> None:
        rate, channels, period = 8000, 2, 160
        period_ns = period * NS // rate
        data = pattern(40 * period, channels)
        file_pcm.load(data)
        clock = FakeClock()
        # Read 5 is an overrun after a 100 ms stall: ~800 frames lost at 8 kHz.
        opener, _ = scripted_opener(clock, period_ns, {5: "overrun"}, stall_ns=100_000_000)
        cap = file_pcm.capture(rate=rate, channels=channels, clock=clock, pcm_opener=opener)
        cap.open()
        before = [cap.read() for _ in range(5)]
        after = [cap.read() for _ in range(5)]
        cap.close()
        assert all(b is not None for b in before + after)
        blocks = [b for b in before + after if b is not None]

        gap_block = blocks[5]
        assert abs(gap_block.gap_frames - 800) <= period
        assert all(b.gap_frames == 0 for b in blocks[:5] + blocks[6:])
        stats = cap.stats
        assert stats.xruns == 1
        assert stats.lost_frames == gap_block.gap_frames
        assert stats.blocks == 10 and stats.frames == 10 * period
        # The timeline jumps by the gap, then is contiguous again.
        assert gap_block.start_frame == 5 * period + gap_block.gap_frames
        for prev, nxt in itertools.pairwise(blocks[5:]):
            assert nxt.start_frame == prev.end_frame
        # Timeline and clock agree: the jump in frames matches the jump in time.
        dt = gap_block.t_start_ns - blocks[4].t_start_ns
        assert dt == (period + gap_block.gap_frames) * NS // rate
        # Nothing duplicated or invented: after the gap come the next frames of the line.
        got = np.concatenate([b.samples for b in blocks])
        np.testing.assert_array_equal(got, data[: 10 * period])

    def test_consecutive_overruns_count_each_and_give_one_gap(self, file_pcm: FilePcm) -> None:
        rate, period = 8000, 160
        file_pcm.load(pattern(20 * period, 1))
        clock = FakeClock()
        opener, _ = scripted_opener(
            clock, period * NS // rate, {2: "overrun", 3: "overrun"}, stall_ns=50_000_000
        )
        cap = file_pcm.capture(rate=rate, channels=1, clock=clock, pcm_opener=opener)
        cap.open()
        blocks = [cap.read() for _ in range(4)]
        cap.close()
        gaps = [b.gap_frames for b in blocks if b is not None]
        assert gaps[:2] == [0, 0] and gaps[3] == 0
        # 2 x 50 ms stalled + one period to read the block = 960 frames, 160 of them here.
        assert abs(gaps[2] - 800) <= period
        assert cap.stats.xruns == 2 and cap.stats.lost_frames == gaps[2]

    def test_overrun_seen_only_in_the_stream_state_becomes_a_gap(self, file_pcm: FilePcm) -> None:
        # pyalsaaudio 0.10 re-prepares an overrun stream inside read() and reports nothing:
        # only pcm.state() before the read says XRUN. That must still count and leave a gap.
        rate, period = 8000, 160
        data = pattern(20 * period, 1)
        file_pcm.load(data)
        clock = FakeClock()
        opener, opened = scripted_opener(
            clock, period * NS // rate, {3: "silent-overrun"}, stall_ns=100_000_000
        )
        cap = file_pcm.capture(rate=rate, channels=1, clock=clock, pcm_opener=opener)
        cap.open()
        blocks = [cap.read() for _ in range(6)]
        cap.close()
        gaps = [b.gap_frames for b in blocks if b is not None]
        assert len(gaps) == 6
        assert gaps[:3] == [0, 0, 0] and gaps[4:] == [0, 0]
        assert abs(gaps[3] - 800) <= period
        assert cap.stats.xruns == 1 and cap.stats.lost_frames == gaps[3]
        assert opened[0].drops == 1  # the stale frames of the overrun stream are dropped

    def test_zero_length_reads_are_retried_not_returned(self, file_pcm: FilePcm) -> None:
        data = pattern(10 * 160, 2)
        file_pcm.load(data)
        clock = FakeClock()
        opener, opened = scripted_opener(clock, 160 * NS // 8000, {0: "eagain", 1: "eagain"})
        cap = file_pcm.capture(rate=8000, channels=2, clock=clock, pcm_opener=opener)
        cap.open()
        block = cap.read()
        cap.close()
        assert block is not None and block.frames == 160
        np.testing.assert_array_equal(block.samples, data[:160])
        assert opened[0].reads == 3
        assert cap.stats.blocks == 1 and block.gap_frames == 0

    def test_read_error_is_a_device_error_and_reopen_continues_the_timeline(
        self, file_pcm: FilePcm
    ) -> None:
        rate, period = 8000, 160
        data = pattern(20 * period, 1)
        file_pcm.load(data)
        clock = FakeClock()
        opener, _ = scripted_opener(clock, period * NS // rate, {2: "error"})
        cap = file_pcm.capture(rate=rate, channels=1, clock=clock, pcm_opener=opener)
        cap.open()
        first = [cap.read(), cap.read()]
        with pytest.raises(AudioDeviceError) as err:
            cap.read()
        msg = str(err.value)
        assert "\n" not in msg and f"'{TAP}'" in msg and "Input/output error" in msg
        assert f"[{TAP}]" not in msg
        # The recorder reopens after a second of outage; the line went on meanwhile.
        clock.advance(NS)
        cap.open()
        block = cap.read()
        cap.close()
        assert block is not None and first[1] is not None
        assert abs(block.gap_frames - rate) <= period
        assert block.start_frame == first[1].end_frame + block.gap_frames
        assert cap.stats.xruns == 0 and cap.stats.lost_frames == block.gap_frames
        # A reopened file PCM starts its infile again.
        np.testing.assert_array_equal(block.samples, data[:period])

    def test_read_without_a_successful_open_is_a_programming_error(self, file_pcm: FilePcm) -> None:
        with pytest.raises(RuntimeError, match="open"):
            file_pcm.capture(rate=8000, channels=1).read()
        # After a failed open, read() must not return None: that would look like the
        # end of the stream to the recorder.
        missing = missing_alsa_capture(channels=1)
        with pytest.raises(AudioDeviceError):
            missing.open()
        with pytest.raises(RuntimeError, match="open"):
            missing.read()


# -- FileCapture ----------------------------------------------------------------------


def write_audio(path: Path, data: npt.NDArray[np.int16], rate: int) -> Path:
    if path.suffix in (".raw", ".pcm", ".s16"):
        path.write_bytes(data.astype("<i2").tobytes())
    else:
        sf.write(str(path), data, rate, subtype="PCM_16")
    return path


def file_capture(
    path: Path,
    channels: int,
    *,
    rate: int = 8000,
    period: int = 160,
    realtime: bool = False,
    **options: Any,
) -> FileCapture:
    """A FileCapture of ``path``, unpaced unless ``realtime``."""
    return FileCapture(
        path=path,
        sample_rate=rate,
        channels=channels,
        period_frames=period,
        realtime=realtime,
        **options,
    )


class TestFileCapture:
    @pytest.mark.parametrize("suffix", [".wav", ".flac", ".raw"])
    @pytest.mark.parametrize("channels", [1, 2, 4])
    def test_fast_replay_is_exact_with_a_partial_last_period(
        self, tmp_path: Path, suffix: str, channels: int
    ) -> None:
        rate, period, frames = 8000, 160, 1000  # 6 full periods and 40 frames
        data = pattern(frames, channels)
        path = write_audio(tmp_path / f"line{suffix}", data, rate)
        cap = file_capture(path, channels, rate=rate, period=period)
        cap.open()
        got, blocks = read_frames(cap, 10**9)
        assert cap.read() is None  # stays at the end
        cap.close()
        np.testing.assert_array_equal(got, data)
        assert [b.frames for b in blocks] == [160] * 6 + [40]
        assert [b.start_frame for b in blocks] == [k * period for k in range(7)]
        # Virtual clock: t0 = 0, exact frame times.
        assert [b.t_start_ns for b in blocks] == [k * period * NS // rate for k in range(7)]
        assert cap.stats.blocks == 7 and cap.stats.frames == frames

    def test_raw_format_s32_given_explicitly(self, tmp_path: Path) -> None:
        top = pattern(500, 2)
        path = tmp_path / "line.bin"  # not a raw suffix: raw_format decides
        path.write_bytes(((top.astype("<i4") << 16) | 0x1234).astype("<i4").tobytes())
        cap = file_capture(path, 2, raw_format=SampleFormat.S32_LE)
        cap.open()
        got, _ = read_frames(cap, 10**9)
        cap.close()
        np.testing.assert_array_equal(got, top)

    def test_realtime_takes_as_long_as_the_audio(self, tmp_path: Path) -> None:
        rate, period = 8000, 160
        path = write_audio(tmp_path / "line.wav", pattern(rate // 2, 1), rate)  # 0.5 s
        cap = file_capture(path, 1, rate=rate, period=period, realtime=True)
        t_open = time.monotonic_ns()
        cap.open()
        blocks: list[AudioBlock] = []
        while (block := cap.read()) is not None:
            # A block is never handed out before its last frame "was spoken".
            assert time.monotonic_ns() >= block.t_start_ns + block.frames * NS // rate
            blocks.append(block)
        elapsed = (time.monotonic_ns() - t_open) / NS
        cap.close()
        assert 0.45 <= elapsed < 1.5
        assert sum(b.frames for b in blocks) == rate // 2
        t0 = blocks[0].t_start_ns
        assert t_open <= t0 <= t_open + 100_000_000  # t0 is the clock at open()
        assert [b.t_start_ns - t0 for b in blocks] == [b.start_frame * NS // rate for b in blocks]

    def test_stop_event_ends_a_realtime_wait_promptly(self, tmp_path: Path) -> None:
        rate = 8000
        path = write_audio(tmp_path / "line.wav", pattern(10 * rate, 1), rate)
        stop = threading.Event()
        # One-second periods: the first read waits ~1 s unless the stop cuts it short.
        cap = file_capture(path, 1, rate=rate, period=rate, realtime=True, stop_event=stop)
        cap.open()
        timer = threading.Timer(0.1, stop.set)
        timer.start()
        t = time.monotonic()
        try:
            assert cap.read() is None
            assert time.monotonic() - t < 0.5
            assert cap.read() is None  # stays stopped
        finally:
            timer.cancel()
            cap.close()

    @pytest.mark.parametrize(("file_rate", "file_channels"), [(16000, 1), (8000, 1), (16000, 2)])
    def test_rate_or_channels_differing_from_config(
        self, tmp_path: Path, file_rate: int, file_channels: int
    ) -> None:
        path = write_audio(tmp_path / "x.wav", pattern(100, file_channels), file_rate)
        cap = file_capture(path, 2)
        with pytest.raises(AudioFileError) as err:
            cap.open()
        assert str(err.value) == (
            f"audio file {path} is {file_rate} Hz, {file_channels} channel(s); the config "
            f"expects audio.sample_rate = 8000 and audio.channels = 2"
        )

    def test_corrupt_file(self, tmp_path: Path) -> None:
        path = tmp_path / "junk.wav"
        path.write_bytes(np.random.default_rng(7).bytes(4096))
        cap = file_capture(path, 1)
        with pytest.raises(AudioFileError) as err:
            cap.open()
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg and "Format not recognised" in msg

    def test_missing_file(self, tmp_path: Path) -> None:
        path = tmp_path / "nope.flac"
        cap = file_capture(path, 1)
        with pytest.raises(AudioFileError, match=r"nope\.flac: no such file"):
            cap.open()
        with pytest.raises(RuntimeError, match="open"):
            cap.read()  # a failed open is not the end of the file

    def test_stop_event_also_ends_a_fast_replay(self, tmp_path: Path) -> None:
        path = write_audio(tmp_path / "line.wav", pattern(1600, 1), 8000)
        stop = threading.Event()
        cap = file_capture(path, 1, stop_event=stop)
        cap.open()
        assert cap.read() is not None
        stop.set()
        assert cap.read() is None
        cap.close()

    def test_reopen_replays_from_the_start(self, tmp_path: Path) -> None:
        data = pattern(400, 2)
        path = write_audio(tmp_path / "line.flac", data, 8000)
        cap = file_capture(path, 2)
        cap.open()
        first, _ = read_frames(cap, 10**9)
        cap.close()
        cap.open()
        again, blocks = read_frames(cap, 10**9)
        cap.close()
        np.testing.assert_array_equal(first, data)
        np.testing.assert_array_equal(again, data)
        assert blocks[0].start_frame == 0 and cap.stats.frames == 400

    def test_memory_stays_constant_whatever_the_length(self, tmp_path: Path) -> None:
        rate, channels, seconds = 8000, 2, 120  # 3.8 MB of samples
        path = write_audio(tmp_path / "long.wav", pattern(rate * seconds, channels), rate)
        # Measured in a fresh interpreter: inside the full suite, caches that other tests'
        # imports leave behind (soundfile/cffi) swing tracemalloc's figure by ~1-2 MB.
        script = (
            "import sys, tracemalloc\n"
            "from pathlib import Path\n"
            "from drivers.audio.filesource import FileCapture\n"
            f"cap = FileCapture(path=Path({str(path)!r}), sample_rate={rate}, channels={channels},"
            " period_frames=160, realtime=False)\n"
            "cap.open()\n"
            "tracemalloc.start()\n"
            "frames = 0\n"
            "while (block := cap.read()) is not None:\n"
            "    frames += block.frames\n"
            "print(frames, tracemalloc.get_traced_memory()[1])\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        frames, peak = map(int, done.stdout.split())
        assert frames == rate * seconds
        assert peak < 256 * 1024


# -- the contract every backend keeps -----------------------------------------------


@dataclass
class Backend:
    name: str
    finite: bool  # a file ends; a live line does not
    make: Callable[[npt.NDArray[np.int16], int, int], CaptureSource]


@pytest.fixture(params=["alsa", "file"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    if request.param == "alsa":
        pcm = make_file_pcm(tmp_path, monkeypatch)

        def make_alsa(data: npt.NDArray[np.int16], rate: int, period: int) -> CaptureSource:
            pcm.load(data)
            return pcm.capture(rate=rate, channels=int(data.shape[1]), period=period)

        yield Backend("alsa", False, make_alsa)
    else:

        def make_file(data: npt.NDArray[np.int16], rate: int, period: int) -> CaptureSource:
            path = write_audio(tmp_path / "line.wav", data, rate)
            return file_capture(path, int(data.shape[1]), rate=rate, period=period)

        yield Backend("file", True, make_file)


@pytest.mark.parametrize(("rate", "channels"), [(8000, 2), (16000, 4)])
class TestCaptureContract:
    def test_exact_samples_on_a_contiguous_timeline(
        self, backend: Backend, rate: int, channels: int
    ) -> None:
        period = period_of(rate)
        frames = 30 * period
        data = pattern(frames, channels)
        src = backend.make(data, rate, period)
        src.open()
        got, blocks = read_frames(src, frames)
        src.close()
        np.testing.assert_array_equal(got[:frames], data)
        assert all(b.samples.dtype == np.int16 and b.samples.ndim == 2 for b in blocks)
        assert all(b.samples.shape[1] == channels for b in blocks)
        assert all(0 < b.frames <= period for b in blocks)
        assert blocks[0].start_frame == 0
        for prev, nxt in itertools.pairwise(blocks):
            assert nxt.start_frame == prev.end_frame and nxt.gap_frames == 0

    def test_monotone_time_stamps(self, backend: Backend, rate: int, channels: int) -> None:
        period = period_of(rate)
        src = backend.make(pattern(20 * period, channels), rate, period)
        src.open()
        _, blocks = read_frames(src, 20 * period)
        src.close()
        stamps = [b.t_start_ns for b in blocks]
        assert stamps == sorted(stamps)
        assert len(stamps) == 20

    def test_stats_count_blocks_and_frames(
        self, backend: Backend, rate: int, channels: int
    ) -> None:
        period = period_of(rate)
        src = backend.make(pattern(12 * period, channels), rate, period)
        src.open()
        for _ in range(7):
            assert src.read() is not None
        stats = src.stats
        src.close()
        assert (stats.blocks, stats.frames, stats.xruns, stats.lost_frames) == (7, 7 * period, 0, 0)

    def test_end_of_source(self, backend: Backend, rate: int, channels: int) -> None:
        period = period_of(rate)
        src = backend.make(pattern(3 * period, channels), rate, period)
        src.open()
        _, blocks = read_frames(src, 3 * period)
        extra = src.read()
        src.close()
        assert len(blocks) == 3
        if backend.finite:
            assert extra is None
        else:
            # A live line never ends: past the data there is still one period per read.
            assert extra is not None and extra.frames == period

    def test_none_after_close_and_close_is_idempotent(
        self, backend: Backend, rate: int, channels: int
    ) -> None:
        period = period_of(rate)
        src = backend.make(pattern(10 * period, channels), rate, period)
        src.open()
        assert src.read() is not None
        src.close()
        src.close()
        assert src.read() is None
        assert src.read() is None
        assert (src.sample_rate, src.channels) == (rate, channels)


# ---------------------------------------------------------------------------------------
# open_capture: plain settings in, an unopened backend out


def test_open_capture_builds_alsa_from_plain_settings() -> None:
    cap = open_capture(
        "alsa", sample_rate=16000, channels=2, period_frames=320, device="linetap_no_such_pcm"
    )
    assert isinstance(cap, AlsaCapture)
    assert (cap.sample_rate, cap.channels) == (16000, 2)
    with pytest.raises(AudioDeviceError, match=r"^audio\.device 'linetap_no_such_pcm'"):
        cap.open()


def test_open_capture_plays_a_raw_file_in_the_given_format(tmp_path: Path) -> None:
    frames, channels = 4 * 160, 2
    top = pattern(frames, channels)
    raw = tmp_path / "line.raw"
    raw.write_bytes((top.astype("<i4") << 16).tobytes())
    cap = open_capture(
        "file",
        sample_rate=8000,
        channels=channels,
        period_frames=160,
        sample_format="S32_LE",
        file=raw,
        file_realtime=False,
    )
    assert isinstance(cap, FileCapture)
    cap.open()
    try:
        got, _ = read_frames(cap, frames)
    finally:
        cap.close()
    np.testing.assert_array_equal(got[:frames], top)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"backend": "pulse"},
            AudioDeviceError,
            "audio.backend 'pulse' is unknown; use one of: alsa, file",
        ),
        (
            {"backend": "alsa", "sample_format": "S24_LE"},
            AudioDeviceError,
            "audio.sample_format 'S24_LE' is unknown; use one of: S16_LE, S32_LE",
        ),
        (
            {"backend": "file"},
            AudioFileError,
            'audio.backend = "file" plays audio.file; set audio.file',
        ),
    ],
)
def test_open_capture_refuses_bad_settings_naming_the_fix(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as err:
        open_capture(sample_rate=8000, channels=1, period_frames=160, **kwargs)
    assert str(err.value) == message
