"""AlsaCapture through a real kernel sound driver: snd-aloop, the ALSA loopback card.

What is played into ``hw:Loopback,0,N`` comes out of ``hw:Loopback,1,N``, paced by the
kernel's own clock (a timer standing in for a card's DMA), so overruns, lost frames and a
card going away are the kernel's, not a wrapper's (tests/test_audio_capture.py injects them).

These run in the test VM (tests/test_vm_kernel.py boots the image's kernel, loads
snd-aloop and runs this file there). Where no Loopback card exists (this container's
kernel has no sound at all) they skip; the unplug test also needs root to unbind the card
and reload the module.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import alsaaudio
import numpy as np
import numpy.typing as npt
import pytest

from drivers.audio import AudioBlock
from drivers.audio.alsa import AlsaCapture
from drivers.audio.formats import SampleFormat
from drivers.errors import AudioDeviceError

CARD = Path("/proc/asound/Loopback")
# The card's platform device: unbinding it is what a USB disconnect does to a sound card
# (snd_card_disconnect); an open PCM pins the module itself, so rmmod alone is refused.
ALOOP_UNBIND = Path("/sys/bus/platform/drivers/snd_aloop/unbind")
ALOOP_DEVICE = "snd_aloop.0"
MODULE = "snd_aloop"
PERIOD_S = 0.02  # the config's default period
RAMP = 30000  # channel 0 counts frames modulo this (never 0: silence is told apart)
STEPS = (1, 7, 11, 13)  # per channel: a swapped, shifted or mixed channel never matches


def loopback_missing() -> str | None:
    if not CARD.exists():
        return (
            f"no snd-aloop card here ({CARD} missing: 'modprobe snd-aloop' on a kernel with sound)"
        )
    return None


@pytest.fixture
def loopback() -> None:
    reason = loopback_missing()
    if reason is not None:
        pytest.skip(reason)


def line_signal(frames: int, channels: int, offset: int = 0) -> npt.NDArray[np.int16]:
    """Frame i, channel c: ((i*STEPS[c] + 1013c) mod RAMP) + 1, negated on odd channels."""
    i = np.arange(offset, offset + frames, dtype=np.int64)[:, None]
    c = np.arange(channels, dtype=np.int64)[None, :]
    steps = np.asarray(STEPS[:channels], dtype=np.int64)[None, :]
    sign = np.where(c % 2 == 1, -1, 1)
    return (((i * steps + c * 1013) % RAMP + 1) * sign).astype(np.int16)


def ramp_index(samples: npt.NDArray[np.int16]) -> npt.NDArray[np.int64]:
    """The played frame number (modulo RAMP) of each captured frame, from channel 0."""
    return samples[:, 0].astype(np.int64) - 1


def play(subdevice: int, rate: int, signal: npt.NDArray[np.int16], period: int) -> Any:
    """Play ``signal`` into the loopback's playback side; the open PCM (close it after).

    The playback buffer holds the whole signal and one write() fills it, so the kernel plays
    it out on its own clock: a player thread could fall behind in an emulated guest and
    underrun, which would put silence in the middle of what the capture must see.
    """
    pcm = alsaaudio.PCM(
        type=alsaaudio.PCM_PLAYBACK,
        mode=alsaaudio.PCM_NORMAL,
        device=f"hw:Loopback,0,{subdevice}",
        channels=int(signal.shape[1]),
        rate=rate,
        format=alsaaudio.PCM_FORMAT_S16_LE,
        periodsize=period,
        periods=-(-signal.shape[0] // period) + 1,
    )
    try:
        written = pcm.write(signal.tobytes())
        assert written == signal.shape[0], f"played {written} of {signal.shape[0]} frames"
    except BaseException:
        pcm.close()
        raise
    return pcm


def capture(subdevice: int, rate: int, channels: int, periods: int) -> AlsaCapture:
    return AlsaCapture(
        device=f"hw:Loopback,1,{subdevice}",
        sample_rate=rate,
        channels=channels,
        sample_format=SampleFormat.S16_LE,
        period_frames=int(rate * PERIOD_S),
        periods=periods,
    )


def read_block(cap: AlsaCapture) -> AudioBlock:
    block = cap.read()
    assert block is not None, "the capture ended while open"
    # Blocks may be views of a reused buffer: keep copies.
    return AudioBlock(block.samples.copy(), block.start_frame, block.t_start_ns, block.gap_frames)


def read_until(cap: AlsaCapture, done: int, timeout_s: float) -> list[AudioBlock]:
    """Blocks until ``done`` frames of signal (non-silent) came after the first one."""
    blocks: list[AudioBlock] = []
    first: int | None = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        block = read_block(cap)
        blocks.append(block)
        if first is None and np.any(block.samples):
            first = block.start_frame + int(np.flatnonzero(block.samples.any(axis=1))[0])
        if first is not None and block.end_frame - first >= done:
            return blocks
    pytest.fail(f"{done} frames of the played signal did not arrive within {timeout_s} s")


def assert_contiguous(blocks: list[AudioBlock]) -> None:
    for before, after in itertools.pairwise(blocks):
        assert after.start_frame == before.end_frame + after.gap_frames, (before, after)


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_captures_the_played_lines_exactly(loopback: None, rate: int, channels: int) -> None:
    subdevice = channels - 1 + (4 if rate == 16000 else 0)  # 8 combinations, 8 substreams
    period = int(rate * PERIOD_S)
    played = line_signal(rate // 2, channels)  # 0.5 s
    # A roomy buffer (0.2 s): an emulated guest must not overrun here; that is the next test.
    cap = capture(subdevice, rate, channels, periods=10)
    cap.open()
    try:
        blocks = [read_block(cap)]  # the capture runs (silence) before anything is played
        player = play(subdevice, rate, played, period)
        try:
            blocks += read_until(cap, played.shape[0] + 2 * period, timeout_s=10)
        finally:
            player.close()
    finally:
        cap.close()
    got = np.concatenate([b.samples for b in blocks])
    assert all(b.samples.shape == (period, channels) for b in blocks)
    assert [b.start_frame for b in blocks] == [k * period for k in range(len(blocks))]
    assert all(b.gap_frames == 0 for b in blocks)
    stats = cap.stats
    assert (stats.xruns, stats.lost_frames) == (0, 0)
    assert (stats.blocks, stats.frames) == (len(blocks), got.shape[0])
    start = int(np.flatnonzero(got.any(axis=1))[0])
    assert not got[:start].any()  # silence until the player started
    np.testing.assert_array_equal(got[start : start + played.shape[0]], played)
    # What follows is not checked: a late timer tick (an emulated CPU) lets the playback
    # side run past its last frame into stale buffer contents before it stops, and those
    # reach the capture side as faithfully as the signal did.


def test_a_stalled_reader_overruns_and_the_gap_keeps_frames_in_place(loopback: None) -> None:
    rate, period, stall_s = 8000, 160, 0.5
    # A 4-period (80 ms) buffer: the stall overflows it six times over.
    cap = capture(0, rate, 1, periods=4)
    cap.open()
    try:
        blocks = [read_block(cap)]
        player = play(0, rate, line_signal(3 * rate, 1), period)  # 3 s < RAMP frames
        try:
            blocks += read_until(cap, 10 * period, timeout_s=10)
            assert cap.stats.xruns == 0, "overran before the stall: the guest is too slow"
            before = len(blocks)
            time.sleep(stall_s)  # the reader stalls; the card keeps capturing
            blocks += [read_block(cap) for _ in range(11)]  # the first one carries the gap
        finally:
            player.close()
    finally:
        cap.close()
    stats = cap.stats
    assert stats.xruns == 1
    gaps = [(k, b.gap_frames) for k, b in enumerate(blocks) if b.gap_frames]
    assert [k for k, _ in gaps] == [before], gaps  # one gap: on the first block after it
    assert_contiguous(blocks)
    gap = gaps[0][1]
    assert stats.lost_frames == gap
    assert (stall_s * rate) - 4 * period <= gap <= (stall_s * rate) + 4 * period, gap
    # The played frame number minus the timeline position: constant while nothing is lost,
    # and the same again after the gap if the gap was measured right.
    signal = [b for b in blocks if b.samples.all()]
    offsets = [int(ramp_index(b.samples)[0]) - b.start_frame for b in signal]
    for block in signal:  # each block is an unbroken run of the played ramp
        assert np.all(np.diff(ramp_index(block.samples)) % RAMP == 1)
    drift = max(offsets) - min(offsets)
    print(f"snd-aloop overrun: gap {gap} frames for a {stall_s} s stall, position error {drift}")
    assert drift <= period, (gap, offsets)


def modprobe_missing() -> str | None:
    if os.geteuid() != 0 or not shutil.which("modprobe") or not shutil.which("rmmod"):
        return "unplugging the loopback card needs root, modprobe and rmmod"
    return loopback_missing()


def wait_for(what: str, ready: Path, present: bool, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while ready.exists() != present:
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: {ready} still {'missing' if present else 'there'}")
        time.sleep(0.05)


def test_the_card_unplugged_while_capturing_then_back(loopback: None) -> None:
    reason = modprobe_missing()
    if reason is not None:
        pytest.skip(reason)
    rate = 8000
    # Half a second of buffer: running rmmod below keeps this thread from reading for a while.
    cap = capture(0, rate, 2, periods=25)
    cap.open()
    unplug: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(5):
            read_block(cap)
        # Open, the PCM pins the module: rmmod alone cannot take the card away.
        refused = subprocess.run(["rmmod", MODULE], capture_output=True, text=True, check=False)
        assert refused.returncode != 0 and "in use" in refused.stderr, refused
        # The card goes away under the reader. The unbind disconnects the card at once
        # (reads fail) but returns only when the last open file is closed, which is ours:
        # so from another process, as a USB disconnect comes from another thread.
        unplug = subprocess.Popen(["sh", "-c", f"echo {ALOOP_DEVICE} > {ALOOP_UNBIND}"])
        with pytest.raises(AudioDeviceError) as gone:
            for _ in range(100):
                read_block(cap)
        message = str(gone.value)
        assert "hw:Loopback,1,0" in message and "\n" not in message
        print(f"snd-aloop unplugged: {message}")
    finally:
        cap.close()
        if unplug is not None:
            assert unplug.wait(timeout=30) == 0, "unbinding the loopback card failed"
    away_since = time.monotonic()
    xruns = cap.stats.xruns
    subprocess.run(["rmmod", MODULE], check=True, timeout=30)
    wait_for("rmmod", CARD, present=False)
    with pytest.raises(AudioDeviceError, match=r"'hw:Loopback,1,0'.*cannot open"):
        cap.open()
    subprocess.run(["modprobe", MODULE], check=True, timeout=60)
    wait_for("modprobe", CARD, present=True)
    cap.open()  # the same object, as the recorder reopens it
    try:
        back = [read_block(cap) for _ in range(5)]
    finally:
        cap.close()
    away_frames = (time.monotonic() - away_since) * rate
    assert back[0].gap_frames >= 0.5 * away_frames, (back[0].gap_frames, away_frames)
    assert all(b.gap_frames == 0 for b in back[1:])
    assert_contiguous(back)
    assert cap.stats.xruns == xruns  # a reopen is a gap, not an overrun
