"""Caller ID from the line tap: FSK (Bell 202, V.23) and DTMF CLIP.

The FSK bursts are made by ``minimodem --tx`` at 48 kHz and resampled by ``sox``
(``tests/cid_signals.py`` documents the framing and what minimodem really emits); every
burst's baud rate and tone frequencies are measured before it is used. Peers check that
the bursts are what the standards say: ``minimodem --rx callerid`` and ``multimon-ng -a
CLIPFSK`` decode them too.
"""

from __future__ import annotations

import functools
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from firmware.dsp.cid_messages import (
    CallerIdError,
    CallerIdMessage,
    MessageError,
    build_mdmf,
    build_sdmf,
    checksum,
    parse_dtmf_clip,
    parse_message,
)
from firmware.dsp.fsk import CallerIdDecoder
from tests.cid_signals import (
    BAUD,
    BELL202,
    MODEMS,
    V23,
    Burst,
    Modem,
    add_noise,
    at_level,
    make_burst,
    measure_baud,
    minimodem_tx,
    missing_tools,
    to_int16,
)
from tests.helpers import espeak_word

RATES = (8000, 16000)

if missing_tools():
    pytest.fail(
        f"missing {missing_tools()}: `make test` installs them (Debian packages)",
        pytrace=False,
    )


@functools.cache
def burst(message: bytes, modem: Modem, rate: int, **shape: Any) -> Burst:
    """:func:`make_burst` (``shape``: its seizure_bits, mark_bits, speed), cached and
    measured: refused unless its baud rate and tones are within 1 % of nominal."""
    b = make_burst(message, modem, rate, **shape)
    speed = shape.get("speed", 1.0)
    assert abs(b.baud / (BAUD * speed) - 1) < 0.01, b.baud
    assert abs(b.mark_hz / (modem.mark * speed) - 1) < 0.01, b.mark_hz
    assert abs(b.space_hz / (modem.space * speed) - 1) < 0.01, b.space_hz
    return b


def decode(
    x: np.ndarray, rate: int, blocks: list[int] | None = None
) -> tuple[list[CallerIdMessage], list[CallerIdError]]:
    """Run a decoder over ``x`` in 20 ms blocks (or the given block sizes, cycled)."""
    dec = CallerIdDecoder(rate)
    sizes = blocks or [rate // 50]
    found: list[CallerIdMessage] = []
    pos = k = 0
    while pos < len(x):
        size = sizes[k % len(sizes)]
        found += dec.process(x[pos : pos + size], pos)
        pos += size
        k += 1
    return found, dec.errors


def line(
    b: Burst,
    *,
    level: float = -20.0,
    snr: float | None = None,
    seed: int = 0,
    pad_s: float = 0.25,
) -> tuple[np.ndarray, int]:
    """``(int16 audio, frame of the message's first start bit)``: silence, burst, silence."""
    pad = np.zeros(round(pad_s * b.rate))
    tone = at_level(b.samples, level)
    x = np.concatenate((pad, tone, pad))
    if snr is not None:
        x = add_noise(x, snr, np.random.default_rng(seed), tone)
    return to_int16(x), len(pad) + b.message_start


SDMF = build_sdmf("09301224", "6095551212")
MESSAGES = {
    "sdmf-number": SDMF,
    "sdmf-private": build_sdmf("12312359", absence="P"),
    "sdmf-out-of-area": build_sdmf("01010000", absence="O"),
    "mdmf-name": build_mdmf(time="03141530", number="5559876543", name="JOHN Q PUBLIC"),
    "mdmf-private": build_mdmf(time="07041730", absence_number="P", absence_name="P"),
    "mdmf-out-of-area": build_mdmf(time="11110811", absence_number="O", name="CITY OF LONDON"),
}
EXPECTED = {
    "sdmf-number": ("sdmf", "6095551212", None, "09301224", None, None),
    "sdmf-private": ("sdmf", None, None, "12312359", "P", None),
    "sdmf-out-of-area": ("sdmf", None, None, "01010000", "O", None),
    "mdmf-name": ("mdmf", "5559876543", "JOHN Q PUBLIC", "03141530", None, None),
    "mdmf-private": ("mdmf", None, None, "07041730", "P", "P"),
    "mdmf-out-of-area": ("mdmf", None, "CITY OF LONDON", "11110811", "O", None),
}


def fields(m: CallerIdMessage) -> tuple[str | None, ...]:
    return (m.format, m.number, m.name, m.time, m.absence_number, m.absence_name)


def assert_one(
    found: list[CallerIdMessage],
    errors: list[CallerIdError],
    b: Burst,
    key: str,
    start: int,
) -> None:
    assert errors == []
    assert len(found) == 1, found
    m = found[0]
    assert fields(m) == EXPECTED[key]
    assert m.standard == b.modem.name
    assert m.raw == b.message
    assert abs(m.start_frame - start) <= b.bit / 2, (m.start_frame, start)


# ---- the test signals themselves ------------------------------------------------------------


def test_minimodem_at_8k_is_slow_which_is_why_bursts_are_made_at_48k(tmp_path: Path) -> None:
    """minimodem writes whole samples per bit: 7 at 8 kHz is 1142.9 baud. The measurement
    that guards every burst sees it."""
    x = minimodem_tx(b"\x55" * 30, BELL202, tmp_path, rate=8000)
    assert len(x) == (2 + 300 + 2) * 7  # 2 leader bits, 30 framed bytes, 2 trailer bits
    baud = measure_baud(x, 8000, BELL202, 14, len(x) - 14)
    assert abs(baud - 8000 / 7) < 1.0
    assert abs(baud / BAUD - 1) > 0.04


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("modem", MODEMS, ids=lambda m: m.name)
def test_bursts_measure_true_and_peers_decode_them(modem: Modem, rate: int) -> None:
    mdmf = MESSAGES["mdmf-name"]
    b = burst(mdmf, modem, rate)
    assert abs(b.baud - BAUD) < 1.0  # made at 48 kHz: 40 samples per bit exactly
    assert abs(b.mark_hz - modem.mark) < 5 and abs(b.space_hz - modem.space) < 5
    x, _ = line(b)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "burst.wav"
        soundfile.write(wav, x, rate, subtype="PCM_16")
        cmd = ["minimodem", "--rx", "-q", "-M", str(modem.mark), "-S", str(modem.space)]
        out = subprocess.run(
            [*cmd, "callerid", "-f", str(wav)], check=True, capture_output=True, text=True
        ).stdout
        assert re.search(r"Phone:\s*555-987-6543", out), out
        assert re.search(r"Name:\s*JOHN Q PUBLIC", out), out
        assert re.search(r"Time:\s*03/14 15:30", out), out
        if modem is V23:  # multimon-ng's CLIP decoder: ETSI, MDMF
            out = subprocess.run(
                ["multimon-ng", "-q", "-c", "-a", "CLIPFSK", "-t", "wav", str(wav)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            assert "DATE=03141530 CID=5559876543 CNT=JOHN Q PUBLIC" in out, out


# ---- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(MESSAGES))
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("modem", MODEMS, ids=lambda m: m.name)
def test_decodes_sdmf_and_mdmf(modem: Modem, rate: int, key: str) -> None:
    b = burst(MESSAGES[key], modem, rate)
    x, start = line(b)
    found, errors = decode(x, rate)
    assert_one(found, errors, b, key, start)
    assert found[0].seizure


@pytest.mark.parametrize("level", [-10.0, -20.0, -30.0, -40.0])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("modem", MODEMS, ids=lambda m: m.name)
def test_levels(modem: Modem, rate: int, level: float) -> None:
    b = burst(MESSAGES["mdmf-name"], modem, rate)
    x, start = line(b, level=level, snr=30.0, seed=int(-level))
    assert_one(*decode(x, rate), b, "mdmf-name", start)


@pytest.mark.parametrize("rate", RATES)
def test_dc_offset(rate: int) -> None:
    """An offset of 4000 (-18 dBFS) under a -40 dBFS burst: as loud, in the tone
    correlators' sidelobes, as the burst itself were it not removed first."""
    b = burst(MESSAGES["mdmf-name"], BELL202, rate)
    x, start = line(b, level=-40.0, snr=30.0)
    assert_one(*decode(x + np.int16(4000), rate), b, "mdmf-name", start)


def test_below_the_level_floor_is_ignored() -> None:
    b = burst(MESSAGES["mdmf-name"], BELL202, 8000)
    assert decode(line(b, level=-40.0)[0], 8000)[0]  # -40 dBFS: decoded
    assert decode(line(b, level=-58.0)[0], 8000) == ([], [])  # below -50 dBFS: not a carrier


@pytest.mark.parametrize("snr", [20.0, 12.0])
@pytest.mark.parametrize("key", ["sdmf-number", "mdmf-name"])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("modem", MODEMS, ids=lambda m: m.name)
def test_white_noise(modem: Modem, rate: int, key: str, snr: float) -> None:
    b = burst(MESSAGES[key], modem, rate)
    for seed in range(4):
        x, start = line(b, snr=snr, seed=seed, level=-25.0)
        assert_one(*decode(x, rate), b, key, start)


@pytest.mark.parametrize("speed", [0.99, 1.01])
@pytest.mark.parametrize("modem", MODEMS, ids=lambda m: m.name)
def test_one_percent_clock_error(modem: Modem, speed: float) -> None:
    """The standards allow baud rate and tones 1 % off."""
    b = burst(MESSAGES["mdmf-name"], modem, 8000, speed=speed)
    assert abs(b.baud / BAUD - speed) < 0.001
    x, start = line(b, snr=20.0)
    assert_one(*decode(x, 8000), b, "mdmf-name", start)


@pytest.mark.parametrize("modem", MODEMS, ids=lambda m: m.name)
def test_no_seizure_short_mark(modem: Modem) -> None:
    """Off-hook (call waiting) caller ID: no seizure, 80 bits of mark."""
    b = burst(MESSAGES["mdmf-name"], modem, 8000, seizure_bits=0, mark_bits=80)
    x, start = line(b, snr=20.0)
    found, errors = decode(x, 8000)
    assert_one(found, errors, b, "mdmf-name", start)
    assert not found[0].seizure


def test_sensitivity_v23_at_8k_9db() -> None:
    """V.23 at 8 kHz is the hardest case (800 Hz shift, 4 kHz of noise). bench/cid_accuracy.py
    has the whole curve; this pins one point of it with fixed noise."""
    b = burst(MESSAGES["mdmf-name"], V23, 8000)
    decoded = 0
    for seed in range(40):
        found, _ = decode(line(b, snr=9.0, seed=100 + seed)[0], 8000)
        assert all(fields(m) == EXPECTED["mdmf-name"] for m in found)
        decoded += len(found)
    assert decoded >= 36  # 90 %; the bench measures about 96 %


def test_fsk_far_off_the_standard_tones_is_not_caller_id() -> None:
    """1000/2000 Hz FSK at 1200 baud: the Bell 202 correlators alone would read it, but its
    "mark" is neither 1200 nor 1300 Hz (the standards allow 1 %)."""
    off = Modem("bell202", 1000, 2000)
    b = burst(MESSAGES["mdmf-name"], off, 8000)
    assert decode(line(b)[0], 8000) == ([], [])
    near = Modem("bell202", 1212, 2222)  # 1 % high: still Bell 202
    b = burst(MESSAGES["mdmf-name"], near, 8000)
    assert_one(*decode(line(b)[0], 8000), b, "mdmf-name", line(b)[1])


@pytest.mark.parametrize(
    "message",
    [
        build_mdmf(absence_number="P", absence_name="P"),  # 80 06 04 01 50 08 01 50 cs
        MESSAGES["mdmf-private"],  # 80 10 01 08 <date> 04 01 50 08 01 50 cs
    ],
    ids=["length-0x06", "param-0x04"],
)
def test_no_message_starts_inside_another(message: bytes) -> None:
    """With its type byte lost, a message is dropped whole: a byte inside it that is also
    a message type (here the length 0x06, or the parameter 0x04) is not taken for the start
    of another message, which would be reported as an error."""
    lost = corrupt(message, 0, 0x04)  # 0x80 -> 0x84, not a message type
    b = burst(lost, BELL202, 8000)
    assert decode(line(b)[0], 8000) == ([], [])


def corrupt(message: bytes, index: int, xor: int) -> bytes:
    out = bytearray(message)
    out[index] ^= xor
    return bytes(out)


@pytest.mark.parametrize(
    ("key", "index", "xor"),
    [
        ("sdmf-number", -1, 0x01),  # the checksum byte itself
        ("sdmf-number", 12, 0x04),  # a digit of the number
        ("mdmf-name", -1, 0x80),
        ("mdmf-name", 30, 0x20),  # a letter of the name: still printable
    ],
)
@pytest.mark.parametrize("modem", MODEMS, ids=lambda m: m.name)
def test_bad_checksum_is_an_error_not_a_caller_id(
    modem: Modem, key: str, index: int, xor: int
) -> None:
    bad = corrupt(MESSAGES[key], index, xor)
    assert sum(bad) & 0xFF
    b = burst(bad, modem, 8000)
    x, start = line(b, snr=20.0)
    found, errors = decode(x, 8000)
    assert found == []
    assert len(errors) == 1
    e = errors[0]
    assert (e.reason, e.standard, e.raw) == ("checksum", modem.name, bad)
    assert abs(e.start_frame - start) <= b.bit / 2


def test_checksum_right_but_contents_impossible_is_an_error() -> None:
    """Two bit errors that cancel in the sum pass the checksum; the fields catch most."""
    good = build_mdmf(time="05130139", number="0628653", name="SMITH J")
    bad = bytearray(good)
    bad[5] ^= 0x40  # '5' -> 'u' in the date (+0x40)
    bad[16] ^= 0x80  # '2' -> 0xb2 in the number (+0x80)
    bad[-3] ^= 0x40  # ' ' -> '`' in the name (+0x40): the sum is unchanged
    assert sum(bad) & 0xFF == 0
    b = burst(bytes(bad), V23, 8000)
    found, errors = decode(line(b)[0], 8000)
    assert found == []
    assert [e.reason for e in errors] == ["malformed"]


def ring_like(rate: int, seconds: float) -> npt.NDArray[np.float64]:
    """Ringing as a tap might pass it: 25 Hz driven into clipping (harmonics all through
    the band, some 25 Hz from each FSK tone), plus a 425 Hz and a 440 + 480 Hz tone."""
    t = np.arange(round(seconds * rate)) / rate
    ring = np.clip(1.5 * np.sin(2 * np.pi * 25 * t), -1, 1) * 20000
    tones = 1500 * (np.sin(2 * np.pi * 425 * t) + np.sin(2 * np.pi * 440 * t))
    tones += 1500 * np.sin(2 * np.pi * 480 * t)
    out: npt.NDArray[np.float64] = ring + tones
    return out


@pytest.mark.parametrize("rate", RATES)
def test_burst_between_rings(rate: int) -> None:
    b = burst(MESSAGES["mdmf-name"], V23, rate)
    gap = np.zeros(round(0.5 * rate))
    rng = np.random.default_rng(5)
    tone = at_level(b.samples, -30.0)
    x = np.concatenate((ring_like(rate, 2.0), gap, tone, gap, ring_like(rate, 2.0)))
    audio = to_int16(add_noise(x, 30.0, rng, tone))
    start = round(2.0 * rate) + len(gap) + b.message_start
    assert_one(*decode(audio, rate), b, "mdmf-name", start)


def stream(rate: int) -> np.ndarray:
    """Two good bursts (Bell 202 SDMF, V.23 MDMF) and a bad-checksum one, with rings."""
    rng = np.random.default_rng(11)
    parts: list[np.ndarray] = []
    for message, modem in (
        (MESSAGES["sdmf-number"], BELL202),
        (corrupt(MESSAGES["mdmf-name"], -1, 0x10), BELL202),
        (MESSAGES["mdmf-out-of-area"], V23),
    ):
        tone = at_level(burst(message, modem, rate).samples, -25.0)
        parts += [ring_like(rate, 1.0), np.zeros(rate // 3), tone, np.zeros(rate // 3)]
        parts[-2] = add_noise(tone, 20.0, rng, tone)
    return to_int16(np.concatenate(parts))


@pytest.mark.parametrize("rate", RATES)
def test_any_block_boundaries_give_the_same_result(rate: int) -> None:
    x = stream(rate)
    whole = decode(x, rate, [len(x)])
    assert [m.number for m in whole[0]] == ["6095551212", None]
    assert [m.standard for m in whole[0]] == ["bell202", "v23"]
    assert [e.reason for e in whole[1]] == ["checksum"]
    assert decode(x, rate) == whole  # 20 ms blocks
    assert decode(x, rate, [160]) == whole
    rng = np.random.default_rng(rate)
    assert decode(x, rate, [int(n) for n in rng.integers(0, 700, 400)]) == whole
    assert decode(x, rate, [1, 2, 3, 997]) == whole


def test_a_gap_in_the_frames_resets_the_decoder() -> None:
    b = burst(MESSAGES["mdmf-name"], BELL202, 8000)
    x, start = line(b)
    dec = CallerIdDecoder(8000)
    cut = start + 200  # lose a block in the middle of the message
    assert dec.process(x[:cut], 0) == []
    assert dec.process(x[cut + 160 :], cut + 160) == []
    again = dec.process(x, 10 * 8000)  # the same burst later, uninterrupted
    assert [m.number for m in again] == ["5559876543"]
    assert again[0].start_frame == pytest.approx(10 * 8000 + start, abs=b.bit / 2)


@pytest.mark.parametrize("rate", RATES)
def test_nothing_from_noise_tones_and_speech(rate: int) -> None:
    rng = np.random.default_rng(3)
    t = np.arange(2 * rate) / rate
    speech = espeak_word("the quick brown fox jumps over the lazy dog, twelve hundred", rate)
    x = np.concatenate(
        (
            rng.normal(0, 1000, 10 * rate),  # -30 dBFS white noise
            rng.normal(0, 10, 5 * rate),
            8000 * np.sin(2 * np.pi * 1200 * t),  # a steady mark tone: no message follows
            8000 * np.sin(2 * np.pi * 1300 * t),
            ring_like(rate, 3.0),
            speech.astype(np.float64) * 3,
        )
    )
    assert decode(to_int16(x), rate) == ([], [])


# ---- messages -------------------------------------------------------------------------------


def test_sdmf_known_vector() -> None:
    """The GR-30 example: 09/30 12:24 from 609-555-1212, checksum 0x51."""
    assert SDMF.hex(" ") == "04 12 30 39 33 30 31 32 32 34 36 30 39 35 35 35 31 32 31 32 51"
    assert checksum(SDMF[:-1]) == 0x51
    m = parse_message(SDMF, standard="v23", start_frame=7)
    assert m is not None
    assert (m.standard, m.start_frame, m.raw) == ("v23", 7, SDMF)
    assert fields(m) == EXPECTED["sdmf-number"]


def test_mdmf_round_trip_and_unknown_parameters_skipped() -> None:
    raw = build_mdmf(
        time="02290000",
        number="+4412345",
        name="Ærøskøbing Bådværft",
        extra=[(0x03, b"5551000"), (0x11, b"\x01")],
    )
    assert raw[0] == 0x80 and raw[1] == len(raw) - 3 and sum(raw) & 0xFF == 0
    m = parse_message(raw)
    assert m is not None
    assert fields(m) == ("mdmf", "+4412345", "Ærøskøbing Bådværft", "02290000", None, None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (SDMF[:-1], "truncated"),
        (SDMF[:-1] + b"\x52", "checksum"),
        (build_sdmf("13301224", "6095551212"), "malformed"),  # month 13
        (build_sdmf("09301224", "60955512x2"), "malformed"),
        (build_mdmf(number="123", name="A\x07B"), "malformed"),
        (build_mdmf(absence_number="PP"), "malformed"),
        (b"\x80\x03\x02\x05\x31" + bytes([checksum(b"\x80\x03\x02\x05\x31")]), "malformed"),
    ],
)
def test_bad_messages(raw: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as info:
        parse_message(raw)
    assert info.value.reason == reason


def test_message_waiting_is_not_a_caller_id() -> None:
    mwi = bytes([0x06, 0x03, 0x42, 0x42, 0x42])
    mwi += bytes([checksum(mwi)])
    assert parse_message(mwi) is None


def test_builders_refuse_bad_fields() -> None:
    with pytest.raises(ValueError):
        build_sdmf("0930122", "123")
    with pytest.raises(ValueError):
        build_sdmf("09301224", "123", absence="P")


# ---- DTMF CLIP ------------------------------------------------------------------------------


def digits(text: str, start: float = 1.0, step: float = 0.12) -> list[tuple[str, float]]:
    return [(d, start + i * step) for i, d in enumerate(text)]


@pytest.mark.parametrize(
    ("sent", "number", "absence"),
    [
        ("A5551234C", "5551234", None),
        ("D87654321#", "87654321", None),  # Taiwan / India style
        ("a0201234567c", "0201234567", None),
        ("B00C", None, "O"),
        ("B10C", None, "P"),
        ("D1#", None, "P"),  # Danish special codes
        ("D3#", None, "O"),
    ],
)
def test_dtmf_clip(sent: str, number: str | None, absence: str | None) -> None:
    errors: list[CallerIdError] = []
    found = parse_dtmf_clip(digits(sent), rate=16000, errors=errors)
    assert errors == []
    assert len(found) == 1
    m = found[0]
    assert (m.standard, m.format, m.number, m.absence_number) == ("dtmf", "dtmf", number, absence)
    assert m.start_frame == 16000
    assert m.raw == sent.upper().encode()


def test_dtmf_clip_in_a_longer_digit_list() -> None:
    events = digits("12", 0.0) + digits("A123", 2.0) + digits("4C", 4.0)  # gap: truncated
    events += digits("B99C", 6.0) + digits("A12A5551212C", 8.0) + digits("A99", 10.0)
    errors: list[CallerIdError] = []
    found = parse_dtmf_clip(events, errors=errors)
    assert [m.number for m in found] == ["5551212"]
    assert found[0].start_frame == round((8.0 + 3 * 0.12) * 8000)
    assert [(e.reason, e.raw) for e in errors] == [
        ("truncated", b"A123"),
        ("malformed", b"B99C"),
        ("truncated", b"A12"),
        ("truncated", b"A99"),
    ]
    assert parse_dtmf_clip(events) == found  # errors are optional


def test_dtmf_clip_digit_gap() -> None:
    assert parse_dtmf_clip(digits("A5551234C", step=0.4)) != []
    assert parse_dtmf_clip(digits("A5551234C", step=0.6)) == []
    assert parse_dtmf_clip(digits("A5551234C", step=0.6), max_gap_s=1.0) != []
    assert parse_dtmf_clip([]) == []
    assert parse_dtmf_clip(digits("AC")) == []


def test_errors_are_not_messages() -> None:
    """What the decoder hands on as a caller ID is a CallerIdMessage, never an error."""
    bad = corrupt(SDMF, -1, 0x01)
    with pytest.raises(MessageError):
        parse_message(bad)
    assert not issubclass(CallerIdError, CallerIdMessage)
