"""The image's ALSA PCM for USB Audio Class interfaces, through real alsa-lib.

image/rootfs/etc/alsa/conf.d/60-linetap-usb.conf (the file the image ships, read as it
is) defines ``linetap_usb``: a plug over ``linetap_usb_interface``, the interface's
``hw`` device, that converts its rate to linetap's and routes input n to line channel
n-1. Here the interface is replaced by alsa-lib's ``file`` PCM with an ``infile``
holding a multi-channel recording at the interface's rate, one tone per input (a second
config file after the shipped one redefines ``linetap_usb_interface``; see
tests/test_audio_capture.py for why ALSA_CONFIG_PATH). AlsaCapture captures through
``linetap_usb:CARD=...`` at 8 and 16 kHz, and an FFT of each line channel must find
its input's tone and none of the others.

The file plugin reads its infile ahead of what a rate converter above it consumes once
that converter has gone round its buffer twice (alsa-lib 1.2.8: the next periods then
come from further on in the file). So each capture keeps to 1.5 s with a 1 s buffer;
a real interface has no infile and no such limit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from drivers.audio.alsa import AlsaCapture
from drivers.audio.formats import SampleFormat
from drivers.errors import AudioDeviceError
from tests.alsa_pcm import _system_alsa_conf

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "image" / "rootfs" / "etc" / "alsa" / "conf.d" / "60-linetap-usb.conf"
# One tone per interface input, none a harmonic of another, all under 4 kHz (8 kHz rate).
TONES_HZ = (450.0, 750.0, 1250.0, 1950.0)
CAPTURE_S = 1.5
# Analysed: 1 s (1 Hz FFT bins) after the converter has settled.
WINDOW = (0.25, 1.25)
# Another input's tone in a line channel: at least this far below the line's own.
CROSSTALK_DB = -40.0


def interface(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make ``linetap_usb_interface`` a file PCM; returns its infile."""
    infile = tmp_path / "interface.raw"
    infile.write_bytes(b"")
    override = tmp_path / "interface.conf"
    override.write_text(
        "pcm.!linetap_usb_interface {\n"
        "    @args [ CARD ]\n"
        "    @args.CARD { type string }\n"
        "    type file\n"
        "    slave.pcm null\n"
        '    file "/dev/null"\n'
        f'    infile "{infile}"\n'
        '    format "raw"\n'
        "}\n"
    )
    system = _system_alsa_conf()
    files = [str(f) for f in (system, SHIPPED, override) if f is not None]
    monkeypatch.setenv("ALSA_CONFIG_PATH", ":".join(files))
    return infile


def tones(rate: int, inputs: int, seconds: float) -> npt.NDArray[np.int16]:
    """``inputs`` channels at ``rate``: input n carries TONES_HZ[n] at -12 dBFS."""
    t = np.arange(round(rate * seconds)) / rate
    waves = [np.sin(2 * np.pi * hz * t) for hz in TONES_HZ[:inputs]]
    return np.round(np.stack(waves, axis=1) * 8192).astype("<i2")


def capture(device: str, rate: int, channels: int) -> npt.NDArray[np.int16]:
    period = rate // 8
    src = AlsaCapture(
        device=device,
        sample_rate=rate,
        channels=channels,
        sample_format=SampleFormat.S16_LE,
        period_frames=period,
        periods=8,
    )
    src.open()
    blocks: list[npt.NDArray[np.int16]] = []
    got = 0
    try:
        while got < CAPTURE_S * rate:
            block = src.read()
            assert block is not None
            blocks.append(block.samples.copy())
            got += block.frames
    finally:
        src.close()
    return np.concatenate(blocks)


def spectrum_db(channel: npt.NDArray[np.int16], rate: int) -> tuple[float, dict[float, float]]:
    """The strongest frequency of the analysed window and each tone's level (dB re it)."""
    start, stop = (round(rate * s) for s in WINDOW)
    x = channel[start:stop].astype(np.float64)
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    peak = float(freqs[int(np.argmax(mag))])
    levels = {
        hz: float(20 * np.log10(mag[int(np.argmin(np.abs(freqs - hz)))] / mag.max() + 1e-12))
        for hz in TONES_HZ
    }
    return peak, levels


@pytest.mark.parametrize(
    ("device", "interface_rate", "inputs", "rate", "lines"),
    [
        ("linetap_usb:CARD=UMC404HD", 48000, 4, 8000, 4),
        ("linetap_usb:CARD=UMC404HD", 48000, 4, 16000, 4),
        # Fewer lines than inputs: the first inputs, nothing of the others. One line
        # is input 1 alone (a plain plug, plughw, averages all four into it).
        ("linetap_usb:CARD=UMC404HD", 48000, 4, 8000, 2),
        ("linetap_usb:CARD=UMC404HD", 48000, 4, 8000, 1),
        # A two-input interface that runs at 44.1 kHz only.
        ("linetap_usb:CARD=Device,RATE=44100,CHANNELS=2", 44100, 2, 16000, 2),
    ],
)
def test_each_input_reaches_its_line_channel_at_linetaps_rate(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    device: str,
    interface_rate: int,
    inputs: int,
    *,
    rate: int,
    lines: int,
) -> None:
    infile = interface(tmp_path, monkeypatch)
    infile.write_bytes(tones(interface_rate, inputs, 3.0).tobytes())
    captured = capture(device, rate, lines)
    assert captured.shape[1] == lines
    for line in range(lines):
        peak, levels = spectrum_db(captured[:, line], rate)
        own = TONES_HZ[line]
        assert abs(peak - own) <= 1.0, f"line {line}: strongest at {peak} Hz, not {own} Hz"
        others = {hz: db for hz, db in levels.items() if hz != own}
        assert max(others.values()) < CROSSTALK_DB, f"line {line}: other inputs {others}"


def test_a_card_is_required(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CARD= the PCM does not open, and the error names the device."""
    interface(tmp_path, monkeypatch)
    src = AlsaCapture(
        device="linetap_usb",
        sample_rate=8000,
        channels=2,
        sample_format=SampleFormat.S16_LE,
        period_frames=160,
        periods=4,
    )
    with pytest.raises(AudioDeviceError, match=r"audio.device 'linetap_usb': cannot open capture"):
        src.open()
