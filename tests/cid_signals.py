"""FSK caller-ID test signals made by programs nobody here wrote: ``minimodem --tx`` and ``sox``.

A burst is framed the way Bellcore GR-30 and ETSI EN 300 659-1 describe it:

* channel seizure: 300 continuous bits of alternating 0 and 1, made by minimodem from 30
  bytes of 0x55 with its own 8-N-1 framing (start 0, data 1010_1010 LSB first, stop 1:
  the framed bytes join into one unbroken 0101... pattern);
* mark: 180 bits of continuous 1 (Bellcore 180, ETSI 180 ± 25), made by a second minimodem
  call with ``--startbits 0`` and a fractional ``--stopbits`` over 0xFF bytes, so that the
  minimodem leader/trailer bits plus these make exactly the requested count;
* the message: type, length, body and checksum, each byte 8-N-1 by minimodem itself.

What minimodem 0.24 really emits (measured, see ``test_caller_id``): with stdin from a file
an 8-N-1 call starts with 2 mark bits and ends with 2 mark bits; a call with
``--startbits 0`` starts straight with the data and ends with 2 mark bits. With stdin from a
pipe it may pad the start with as much idle carrier as the pipe took to fill (timing
dependent), so we always give it a file. Every call starts its sine at phase 0, so the
joins between the three calls are phase jumps inside mark tone (real exchanges are
phase-continuous; the jumps only make our job harder).

minimodem writes an integer number of samples per bit: at ``-R 8000`` that is 7 samples
(1142.9 baud, 4.8 % slow), so bursts are made at 48 kHz (exactly 40 samples per bit) and
resampled to 8 or 16 kHz with ``sox``. The baud rate and the tone frequencies of what comes
out are measured here, independently of the decoder under test, before a burst is used.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile

GEN_RATE = 48_000
BAUD = 1200
GEN_SPB = GEN_RATE // BAUD  # 40 samples per bit at 48 kHz
LEADER_BITS_8N1 = 2  # minimodem's mark leader before 8-N-1 data (stdin from a file)
TRAILER_BITS = 2  # minimodem's mark trailer after any data
FULL_SCALE = 32767.0

Floats = npt.NDArray[np.float64]
Int16s = npt.NDArray[np.int16]


@dataclass(frozen=True)
class Modem:
    name: str  # "bell202" | "v23"
    mark: int
    space: int


BELL202 = Modem("bell202", 1200, 2200)
V23 = Modem("v23", 1300, 2100)
MODEMS = (BELL202, V23)


def missing_tools() -> list[str]:
    return [t for t in ("minimodem", "sox") if shutil.which(t) is None]


def minimodem_tx(
    data: bytes,
    modem: Modem,
    workdir: Path,
    *,
    raw_stopbits: str | None = None,
    rate: int = GEN_RATE,
) -> Floats:
    """Run ``minimodem --tx`` on ``data`` (stdin from a file) and return its samples in [-1, 1].

    ``raw_stopbits=None``: 8-N-1 framing by minimodem. Otherwise ``--startbits 0
    --stopbits <raw_stopbits>``: the data bits go out as they are, each byte followed by
    that many (possibly fractional) mark bits.
    """
    src = workdir / "tx.bin"
    out = workdir / "tx.wav"
    src.write_bytes(data)
    cmd = ["minimodem", "--tx", "-q", "-R", str(rate), "-M", str(modem.mark)]
    cmd += ["-S", str(modem.space)]
    if raw_stopbits is not None:
        cmd += ["--startbits", "0", "--stopbits", raw_stopbits]
    cmd += ["-f", str(out), str(BAUD)]
    with src.open("rb") as stdin:
        subprocess.run(cmd, stdin=stdin, check=True, capture_output=True, timeout=30)
    samples, sr = soundfile.read(out, dtype="float64")
    assert sr == rate
    return np.asarray(samples, dtype=np.float64)


def _mark_call_plan(raw_bits: int) -> tuple[int, str]:
    """0xFF byte count and stop-bit count giving exactly ``raw_bits`` mark bits at 48 kHz."""
    for count in range(raw_bits // 8, 0, -1):
        rest = raw_bits - 8 * count
        if (rest * GEN_SPB) % count == 0:
            return count, f"{rest / count:g}"
    raise ValueError(f"cannot make {raw_bits} mark bits")


@dataclass(frozen=True)
class Burst:
    samples: Floats  # scaled so that the tones have unit peak (RMS 1/sqrt(2))
    rate: int
    modem: Modem
    message: bytes
    seizure_start: int | None  # sample index of the first seizure bit
    mark_start: int  # sample index of the first bit of the mark period
    message_start: int  # sample index of the start bit of the message type byte
    message_end: int  # sample index just after the checksum byte's stop bit
    baud: float  # measured
    mark_hz: float  # measured
    space_hz: float  # measured

    @property
    def bit(self) -> float:
        return self.rate / BAUD


def make_burst(
    message: bytes,
    modem: Modem,
    rate: int,
    *,
    seizure_bits: int = 300,
    mark_bits: int = 180,
    speed: float = 1.0,
) -> Burst:
    """Seizure + mark + message from minimodem at 48 kHz, resampled by sox to ``rate``.

    ``speed`` != 1 plays the 48 kHz burst that much fast (or slow), as if the exchange's
    clock were off: baud rate and both tones move together."""
    if seizure_bits % 10:
        raise ValueError("seizure is made of framed 0x55 bytes: a multiple of 10 bits")
    parts: list[Floats] = []
    with tempfile.TemporaryDirectory(prefix="cid-") as tmp:
        work = Path(tmp)
        pos = 0
        seizure_start: int | None = None
        if seizure_bits:
            seizure = minimodem_tx(b"\x55" * (seizure_bits // 10), modem, work)
            assert len(seizure) == (LEADER_BITS_8N1 + seizure_bits + TRAILER_BITS) * GEN_SPB
            seizure_start = LEADER_BITS_8N1 * GEN_SPB
            parts.append(seizure)
            pos += len(seizure)
            mark_start = pos - TRAILER_BITS * GEN_SPB
            already = TRAILER_BITS
        else:
            mark_start = 0
            already = 0
        raw_bits = mark_bits - already - TRAILER_BITS - LEADER_BITS_8N1
        count, stop = _mark_call_plan(raw_bits)
        mark = minimodem_tx(b"\xff" * count, modem, work, raw_stopbits=stop)
        assert len(mark) == (raw_bits + TRAILER_BITS) * GEN_SPB
        parts.append(mark)
        pos += len(mark)
        body = minimodem_tx(message, modem, work)
        assert len(body) == (LEADER_BITS_8N1 + 10 * len(message) + TRAILER_BITS) * GEN_SPB
        message_start = pos + LEADER_BITS_8N1 * GEN_SPB
        message_end = message_start + 10 * len(message) * GEN_SPB
        parts.append(body)
        at48 = np.concatenate(parts)
        played = round(GEN_RATE * speed)
        samples = resample(at48, played, rate, work)
        # The space tone never lasts long in a burst: measure it on a probe made the same way.
        probe = minimodem_tx(b"\x00" * 10, modem, work, raw_stopbits="0")
        space_probe = resample(probe[: 80 * GEN_SPB], played, rate, work)

    def scale(i: int) -> int:
        return round(i * rate / played)

    bit = rate / BAUD
    first = scale(message_start if seizure_start is None else seizure_start)
    baud = measure_baud(samples, rate, modem, first, scale(message_end))
    mark_a, mark_b = scale(mark_start), scale(message_start - LEADER_BITS_8N1 * GEN_SPB)
    mark_hz = zero_crossing_hz(samples[mark_a + round(5 * bit) : mark_b - round(5 * bit)], rate)
    space_hz = zero_crossing_hz(space_probe[round(5 * bit) : -round(5 * bit)], rate)
    return Burst(
        samples=samples / (np.sqrt(2 * np.mean(samples[first : scale(message_end)] ** 2))),
        rate=rate,
        modem=modem,
        message=message,
        seizure_start=None if seizure_start is None else scale(seizure_start),
        mark_start=scale(mark_start),
        message_start=scale(message_start),
        message_end=scale(message_end),
        baud=baud,
        mark_hz=mark_hz,
        space_hz=space_hz,
    )


def resample(samples: Floats, rate_in: int, rate_out: int, workdir: Path) -> Floats:
    """``sox`` (its default high-quality ``rate``), float in and out: no dither, no clipping."""
    src = workdir / "in.f32"
    (samples * 0.5).astype("<f4").tofile(src)
    fmt = ["-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1"]
    out = subprocess.run(
        ["sox", *fmt, "-r", str(rate_in), str(src), *fmt, "-r", str(rate_out), "-"],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    return np.frombuffer(out, dtype="<f4").astype(np.float64) * 2.0


# ---- measurement (independent of firmware.dsp) ----------------------------------------------


def instantaneous_frequency(samples: Floats, rate: int) -> Floats:
    """Frequency of the analytic signal (FFT Hilbert transform), one value per sample gap."""
    phase = np.unwrap(np.angle(_analytic(samples)))
    return np.diff(phase) * rate / (2 * np.pi)


def _analytic(x: Floats) -> npt.NDArray[np.complex128]:
    n = len(x)
    h = np.zeros(n)
    h[0] = 1.0
    if n % 2 == 0:
        h[n // 2] = 1.0
        h[1 : n // 2] = 2.0
    else:
        h[1 : (n + 1) // 2] = 2.0
    return np.fft.ifft(np.fft.fft(x) * h)


def bit_transitions(samples: Floats, rate: int, modem: Modem) -> Floats:
    """Sub-sample times (in samples) where the smoothed frequency crosses the tone midpoint."""
    freq = instantaneous_frequency(samples, rate)
    width = max(2, round(rate / BAUD / 3))
    smooth = np.convolve(freq, np.ones(width) / width, mode="same")
    centred = smooth - (modem.mark + modem.space) / 2
    idx = np.flatnonzero(np.signbit(centred[1:]) != np.signbit(centred[:-1]))
    a, b = centred[idx], centred[idx + 1]
    return idx + a / (a - b) + 0.5  # +0.5: freq[i] sits between samples i and i+1


def measure_baud(samples: Floats, rate: int, modem: Modem, start: int, end: int) -> float:
    """Baud rate from the bit transitions between sample ``start`` and ``end``.

    The transitions are fitted to one bit grid by least squares, first over a short stretch
    and then over longer ones (so no transition is ever assigned to the wrong bit), leaving
    out the odd spurious crossing, such as the phase jumps between minimodem calls make.
    """
    nominal = rate / BAUD
    times = bit_transitions(samples, rate, modem)
    times = times[(times > start - nominal / 2) & (times < end + nominal / 2)]
    gaps = np.diff(times)
    # One-bit gaps alternate (mark-to-space and space-to-mark crossings are not delayed
    # alike), so start from a mean, over a short span, and grow the span as the fit firms up.
    period = float(np.mean(gaps[(gaps > 0.5 * nominal) & (gaps < 1.5 * nominal)][:20]))
    origin = float(times[0])
    span = 20 * period
    while True:
        window = times[times - times[0] <= span]
        k = np.round((window - origin) / period)
        keep = np.abs(window - origin - k * period) < 0.25 * period
        period, origin = (float(v) for v in np.polyfit(k[keep], window[keep], 1))
        if len(window) == len(times):
            return rate / period
        span *= 1.5


def zero_crossing_hz(samples: Floats, rate: int) -> float:
    """Tone frequency from the zero crossings of a steady stretch of one tone."""
    s = samples - np.mean(samples)
    idx = np.flatnonzero(np.signbit(s[1:]) != np.signbit(s[:-1]))
    a, b = s[idx], s[idx + 1]
    times = idx + a / (a - b)  # sub-sample crossing times
    return (len(times) - 1) / 2 / float(times[-1] - times[0]) * rate


# ---- levels, noise and the line around the burst ----------------------------------------------


def at_level(samples: Floats, dbfs: float) -> Floats:
    """Scale a unit-peak tone signal so its RMS is ``dbfs`` relative to a full-scale sine."""
    return samples * FULL_SCALE * 10 ** (dbfs / 20)


def add_noise(samples: Floats, snr_db: float, rng: np.random.Generator, ref: Floats) -> Floats:
    """White Gaussian noise over the whole band (0..rate/2), SNR relative to ``ref``'s power."""
    power = float(np.mean(ref**2))
    sigma = np.sqrt(power / 10 ** (snr_db / 10))
    return samples + rng.normal(0.0, sigma, len(samples))


def to_int16(samples: Floats) -> Int16s:
    return np.clip(np.round(samples), -32768, 32767).astype(np.int16)
