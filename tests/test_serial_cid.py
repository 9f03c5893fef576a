"""Serial caller-ID units: the text parser, the sim port's script, the reader's own rules,
pyserial's failure paths over real ptys, and the backend factory.

The behaviour every backend shares is in tests/test_serial_contract.py.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.serial import Received, SerialPortError
from drivers.serial.cid_text import MAX_LINE_BYTES, CidTextParser, SerialCallerId
from drivers.serial.factory import BACKENDS, make_serial_port
from drivers.serial.pyserial_port import PySerialPort
from drivers.serial.reader import SerialCallerIdReader
from drivers.serial.sim import ScriptedBytes, SimSerialPort
from sealedrec.errors import LinetapError
from tests.helpers import CidFields, cid_fields

MS = 1_000_000
S = 1_000_000_000
T0 = 7 * S
PORT = "/dev/ttyCID0"


def parse(data: bytes, t_ns: int = T0) -> list[SerialCallerId]:
    """All records in ``data``, fed at once, then an idle gap."""
    parser = CidTextParser(PORT)
    return parser.feed(data, t_ns) + parser.idle(t_ns + 10 * S)


# --------------------------------------------------------------------------------------
# The parser: fields
# --------------------------------------------------------------------------------------
def test_a_full_block() -> None:
    (record,) = parse(b"DATE = 0612\r\nTIME = 1423\r\nNMBR = 5551234\r\nNAME = JOHN DOE\r\n")
    assert cid_fields(record) == ("5551234", "JOHN DOE", "06121423", None, None)
    assert record.port == PORT
    assert record.raw == b"DATE = 0612\nTIME = 1423\nNMBR = 5551234\nNAME = JOHN DOE"


@pytest.mark.parametrize(
    ("number_line", "name_line", "expected"),
    [
        (b"NMBR = O", b"NAME = O", (None, None, "O", "O")),
        (b"NMBR = P", b"NAME = P", (None, None, "P", "P")),
        (b"NMBR = O", b"NAME = JOHN DOE", (None, "JOHN DOE", "O", None)),
        (b"NMBR = 5551234", b"NAME = P", ("5551234", None, None, "P")),
        (b"NMBR = +44*20#1", b"NAME = O'HARA", ("+44*20#1", "O'HARA", None, None)),
    ],
)
def test_numbers_names_and_reasons_for_absence(
    number_line: bytes, name_line: bytes, expected: tuple[str | None, ...]
) -> None:
    (record,) = parse(
        b"DATE = 0101\r\nTIME = 0000\r\n" + number_line + b"\r\n" + name_line + b"\r\n"
    )
    assert (record.number, record.name, record.absence_number, record.absence_name) == expected
    assert record.time == "01010000"


def test_blanks_tabs_case_and_junk_before_keys_are_tolerated() -> None:
    (record,) = parse(
        b"   date=0612  \r\n\x00\x00TIME\t=\t1423\r\n\xff\xfe  nmbr   =   5551234 \r\n"
        b"NAME =  ANN  LEE   \r\n"
    )
    assert cid_fields(record) == ("5551234", "ANN  LEE", "06121423", None, None)


def test_names_are_latin1_and_never_stop_the_parser() -> None:
    (record,) = parse(b"NMBR = 4930123\r\nNAME = J\xd6RG M\xdcLLER\r\n")
    assert record.name == "JÖRG MÜLLER"


def test_ddn_nmbr_is_the_number_when_there_is_no_nmbr() -> None:
    (alone,) = parse(b"DATE = 0612\r\nTIME = 1423\r\nDDN_NMBR = 5551234\r\nNAME = X\r\n")
    assert alone.number == "5551234"
    (both,) = parse(b"NMBR = 5550001\r\nDDN_NMBR = 5550002\r\nNAME = X\r\n")
    assert both.number == "5550001"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        # Out-of-range or malformed values are left out; the rest of the block is used.
        (b"DATE = 1301\r\nTIME = 1200\r\nNMBR = 555\r\n", ("555", None, None, None, None)),
        (b"DATE = 0101\r\nTIME = 2460\r\nNMBR = 555\r\n", ("555", None, None, None, None)),
        (b"DATE = 0101\r\nTIME = 12\r\nNMBR = 555\r\n", ("555", None, None, None, None)),
        (
            b"DATE = 0101\r\nTIME = 1200\r\nNMBR = 55x5\r\nNAME = A\r\n",
            (None, "A", "01011200", None, None),
        ),
        (b"NMBR = 555\r\nNAME = A\x07B\r\n", ("555", None, None, None, None)),
        (b"NMBR = \r\nNAME = A\r\n", (None, "A", None, None, None)),
        (b"TIME = 1200\r\nNMBR = 555\r\n", ("555", None, None, None, None)),  # no DATE
    ],
)
def test_malformed_values_are_left_out(lines: bytes, expected: CidFields) -> None:
    (record,) = parse(lines)
    assert cid_fields(record) == expected
    assert record.raw == lines.rstrip(b"\r\n").replace(b"\r\n", b"\n")  # kept as received


def test_unknown_keys_stay_in_raw_and_change_nothing() -> None:
    lines = (
        b"DATE = 0612\r\nMESG = 0A0B0C\r\nTIME = 1423\r\nXYZ = 1\r\nNMBR = 5551234\r\nNAME = A\r\n"
    )
    (record,) = parse(lines)
    assert cid_fields(record) == ("5551234", "A", "06121423", None, None)
    assert b"MESG = 0A0B0C" in record.raw and b"XYZ = 1" in record.raw


@pytest.mark.parametrize(
    "data",
    [
        b"RING\r\n",
        b"RING\r\nRING\r\n\r\n\r\n",
        b"OK\r\nAT#CID=1\r\nAT+VCID=1\r\nNO CARRIER\r\n",
        b"\x00\x01\xff\xfe\r\n+++\r\n",
        b"MESG = 060101\r\nRING\r\n",  # message waiting: no caller ID
        b"DATE = 0612\r\nTIME = 1423\r\nRING\r\n",  # a time alone names nobody
        b"NMBR = 55x\r\nNAME = \r\n",  # nothing usable
    ],
)
def test_blocks_without_a_caller_make_no_record(data: bytes) -> None:
    assert parse(data) == []


# --------------------------------------------------------------------------------------
# The parser: where records end
# --------------------------------------------------------------------------------------
def test_the_name_line_ends_a_record_at_once() -> None:
    parser = CidTextParser(PORT)
    assert parser.feed(b"DATE = 0612\r\nTIME = 1423\r\nNMBR = 5551234\r\nNAME = JOHN DO", T0) == []
    assert parser.pending
    (record,) = parser.feed(b"E\r", T0 + 5 * MS)
    assert record.received_ns == T0 + 5 * MS  # when the line was complete
    assert record.name == "JOHN DOE"
    assert parser.feed(b"\n", T0 + 6 * MS) == []  # the rest of CR LF
    assert not parser.pending


def test_ring_after_fields_ends_a_record() -> None:
    parser = CidTextParser(PORT)
    assert parser.feed(b"RING\r\nDATE = 0612\r\nTIME = 1423\r\nNMBR = 5551234\r\n", T0) == []
    (record,) = parser.feed(b"RING\r\n", T0 + 2 * S)  # the gap ends it too: same record
    assert cid_fields(record) == ("5551234", None, "06121423", None, None)
    assert record.received_ns == T0
    (again,) = CidTextParser(PORT).feed(b"NMBR = 5551234\r\nRING\r\n", T0)
    assert again.number == "5551234" and again.received_ns == T0


def test_a_new_date_ends_the_record_before_it() -> None:
    parser = CidTextParser(PORT)
    first, second = parser.feed(
        b"DATE = 0612\r\nTIME = 1423\r\nNMBR = 5551234\r\n"
        b"DATE = 0612\r\nTIME = 1424\r\nNMBR = 5559999\r\nNAME = B\r\n",
        T0,
    )
    assert cid_fields(first) == ("5551234", None, "06121423", None, None)
    assert cid_fields(second) == ("5559999", "B", "06121424", None, None)
    assert first.raw == b"DATE = 0612\nTIME = 1423\nNMBR = 5551234"


def test_a_repeated_field_ends_the_record_before_it() -> None:
    first, second = CidTextParser(PORT).feed(
        b"NMBR = 5551234\r\nNMBR = 5559999\r\nNAME = B\r\n", T0
    )
    assert (first.number, first.name) == ("5551234", None)
    assert (second.number, second.name) == ("5559999", "B")


def test_name_first_units_get_two_records() -> None:
    # Documented limit: the NAME line ends a record, so a unit printing it first splits.
    records = parse(b"DATE = 0612\r\nTIME = 1423\r\nNAME = A\r\nNMBR = 555\r\n")
    assert [cid_fields(r) for r in records] == [
        (None, "A", "06121423", None, None),
        ("555", None, None, None, None),
    ]


def test_idle_gap_ends_a_record_without_name() -> None:
    parser = CidTextParser(PORT, idle_gap_s=0.5)
    assert parser.feed(b"DATE = 0612\r\nTIME = 1423\r\nNMBR = 5551234\r\n", T0) == []
    assert parser.idle(T0 + 499 * MS) == []
    (record,) = parser.idle(T0 + 500 * MS)
    assert record.received_ns == T0
    assert parser.idle(T0 + 5 * S) == []  # once
    assert not parser.pending


def test_idle_gap_takes_an_unterminated_last_line() -> None:
    parser = CidTextParser(PORT, idle_gap_s=0.2)
    assert parser.feed(b"NMBR = 5551234\r\nNAME = JOHN", T0) == []
    assert parser.feed(b" DOE", T0 + 100 * MS) == []
    (record,) = parser.idle(T0 + 300 * MS)
    assert (record.number, record.name, record.received_ns) == (
        "5551234",
        "JOHN DOE",
        T0 + 100 * MS,
    )


def test_a_gap_inside_feed_ends_the_record_before_the_new_bytes() -> None:
    parser = CidTextParser(PORT, idle_gap_s=0.5)
    assert parser.feed(b"NMBR = 5551234\r\nNAME = JO", T0) == []
    # Polled late (a fast replay, a busy loop): the gap still splits what came before.
    (first,) = parser.feed(b"HN\r\nNMBR = 5559999\r\nNA", T0 + 600 * MS)
    assert cid_fields(first) == ("5551234", "JO", None, None, None)
    assert first.received_ns == T0
    (second,) = parser.feed(b"ME = B\r\n", T0 + 700 * MS)
    assert (second.number, second.name, second.received_ns) == ("5559999", "B", T0 + 700 * MS)


def test_end_of_stream_keeps_complete_lines_and_drops_a_cut_one() -> None:
    parser = CidTextParser(PORT)
    assert parser.feed(b"DATE = 0612\r\nTIME = 1423\r\nNMBR = 5551234\r\nNAME = JO", T0) == []
    (record,) = parser.end_of_stream()
    assert cid_fields(record) == ("5551234", None, "06121423", None, None)
    assert not parser.pending
    assert parser.feed(b"HN\r\n", T0 + S) == []  # the cut line's tail is not a record
    assert parser.end_of_stream() == []


def test_overlong_lines_are_dropped_and_memory_stays_bounded() -> None:
    parser = CidTextParser(PORT)
    junk = b"NAME = " + b"A" * (MAX_LINE_BYTES * 40)
    for start in range(0, len(junk), 100):
        assert parser.feed(junk[start : start + 100], T0) == []
        assert len(parser._partial) <= MAX_LINE_BYTES
    assert parser.feed(b"\r\nNMBR = 555\r\nNAME = OK\r\n", T0) == [
        SerialCallerId("555", "OK", None, None, None, T0, PORT, b"NMBR = 555\nNAME = OK")
    ]


def test_idle_gap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="idle_gap_s"):
        CidTextParser(PORT, idle_gap_s=0)


# --------------------------------------------------------------------------------------
# The parser: any split of the bytes gives the same records (hypothesis)
# --------------------------------------------------------------------------------------
DIGITS = st.text("0123456789", min_size=1, max_size=12)
NAMES = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ .'-", min_size=1, max_size=15).filter(
    lambda n: n.strip(" ") not in ("", "O", "P") and n == n.strip(" ")
)
ENDS = st.sampled_from([b"\r\n", b"\n", b"\r", b"\n\r", b"\r\r\n"])
PAD = st.sampled_from([b"", b" ", b"  ", b"\t"])
NOISE = st.lists(st.sampled_from([b"RING", b"", b"OK", b"\x00\xff\xfe", b"+++", b"~~"]), max_size=3)


@st.composite
def blocks(draw: st.DrawFn) -> tuple[bytes, CidFields]:
    """One call's lines as some unit prints them, and the record it must make."""
    month, day = draw(st.integers(1, 12)), draw(st.integers(1, 31))
    hour, minute = draw(st.integers(0, 23)), draw(st.integers(0, 59))
    with_time = draw(st.booleans())
    number = draw(st.one_of(DIGITS, st.sampled_from(["O", "P"]), st.none()))
    name = draw(st.one_of(NAMES, st.sampled_from(["O", "P"]), st.none()))
    if number is None and name is None:
        number = draw(DIGITS)
    end = draw(ENDS)

    def line(key: str, value: str) -> bytes:
        pad = draw(PAD)
        return (
            draw(PAD) + key.encode() + pad + b"=" + pad + value.encode("latin-1") + draw(PAD) + end
        )

    text = b""
    if with_time:
        text += line("DATE", f"{month:02}{day:02}") + line("TIME", f"{hour:02}{minute:02}")
    if draw(st.booleans()):
        text += line("MESG", "0A0B")
    if number is not None:
        text += line(draw(st.sampled_from(["NMBR", "DDN_NMBR"])), number)
    if name is not None:
        text += line("NAME", name)
    else:
        text += b"RING" + end  # a nameless block ends at the next RING
    for noise in draw(NOISE):
        text += noise + draw(ENDS)
    absent = ("O", "P")
    expected: CidFields = (
        number if number not in absent else None,
        name if name not in absent else None,
        f"{month:02}{day:02}{hour:02}{minute:02}" if with_time else None,
        number if number in absent else None,
        name if name in absent else None,
    )
    return text, expected


@st.composite
def transcripts(draw: st.DrawFn) -> tuple[bytes, list[CidFields], list[int]]:
    drawn = draw(st.lists(blocks(), min_size=1, max_size=5))
    data = b"".join(text for text, _ in drawn)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=30)))
    return data, [expected for _, expected in drawn], cuts


@settings(max_examples=300, deadline=None)
@given(transcripts())
def test_any_chunking_gives_the_same_records(
    case: tuple[bytes, list[CidFields], list[int]],
) -> None:
    data, expected, cuts = case
    whole = parse(data)
    assert [cid_fields(r) for r in whole] == expected

    parser = CidTextParser(PORT)
    records: list[SerialCallerId] = []
    for start, stop in zip([0, *cuts], [*cuts, len(data)], strict=True):
        records += parser.feed(data[start:stop], T0)
    records += parser.idle(T0 + 10 * S)
    assert records == whole  # every field, raw and stamp included


@settings(max_examples=200, deadline=None)
@given(transcripts(), st.lists(st.integers(0, 400), min_size=31, max_size=31))
def test_chunks_spread_inside_the_gap_give_the_same_records(
    case: tuple[bytes, list[CidFields], list[int]], steps_ms: list[int]
) -> None:
    data, expected, cuts = case
    parser = CidTextParser(PORT, idle_gap_s=0.5)
    records: list[SerialCallerId] = []
    now = T0
    for i, (start, stop) in enumerate(zip([0, *cuts], [*cuts, len(data)], strict=True)):
        if start == stop:
            continue  # no byte, no time: the gap counts from the last byte
        now += steps_ms[i] * MS  # < the gap: only the text ends records
        records += parser.feed(data[start:stop], now)
    records += parser.idle(now + S)
    assert [cid_fields(r) for r in records] == expected
    assert [r.raw for r in records] == [r.raw for r in parse(data)]
    assert all(T0 <= r.received_ns <= now for r in records)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_arbitrary_bytes_never_raise_and_yield_only_checked_values(chunks: list[bytes]) -> None:
    parser = CidTextParser(PORT)
    records: list[SerialCallerId] = []
    for i, chunk in enumerate(chunks):
        records += parser.feed(chunk, T0 + i * 300 * MS)
    records += parser.idle(T0 + 100 * S) + parser.end_of_stream()
    for record in records:
        assert record.number is None or set(record.number) <= set("0123456789+*#")
        assert record.absence_number is None or len(record.absence_number) == 1
        assert record.absence_name in (None, "O", "P")
        assert record.name is None or not any(c < " " or "\x7f" <= c < "\xa0" for c in record.name)
        assert record.time is None or (len(record.time) == 8 and record.time.isdigit())
        assert record.raw and T0 <= record.received_ns < T0 + 100 * S


# --------------------------------------------------------------------------------------
# The sim port
# --------------------------------------------------------------------------------------
def test_sim_script_plays_on_the_timeline_with_scripted_stamps() -> None:
    port = SimSerialPort(
        PORT,
        script=[
            ScriptedBytes(2.0, b"NAME = B\r\n"),  # out of order on purpose: sorted
            ScriptedBytes(1.0, b"NMBR = 555\r\n"),
        ],
    )
    port.open()
    assert port.read(T0 + 10 * S) == []  # nothing before start()
    port.start(T0)
    assert port.read(T0 + 999 * MS) == []
    port.feed(b"X")  # hand-fed: stamped at the read that collects it
    assert port.read(T0 + 5 * S) == [
        Received(b"NMBR = 555\r\n", T0 + 1 * S),
        Received(b"NAME = B\r\n", T0 + 2 * S),
        Received(b"X", T0 + 5 * S),
    ]
    assert port.script_done


def test_sim_loses_bytes_fed_while_closed_or_unplugged() -> None:
    port = SimSerialPort(PORT)
    port.feed(b"lost while closed")
    port.open()
    port.feed(b"kept", t_ns=T0)
    assert port.read(T0 + S) == [Received(b"kept", T0)]
    port.unplug()
    port.feed(b"lost while unplugged")
    with pytest.raises(SerialPortError, match=PORT):
        port.read(T0 + S)
    with pytest.raises(SerialPortError, match=PORT):
        port.write(b"AT\r")
    port.replug()
    with pytest.raises(SerialPortError, match="Input/output"):
        port.read(T0 + S)  # the failed handle stays failed until reopened
    port.close()
    port.open()
    assert port.read(T0 + S) == []
    assert port.opens == 2


# --------------------------------------------------------------------------------------
# The reader's own rules (over the sim port)
# --------------------------------------------------------------------------------------
def test_replay_script_records_keep_their_scripted_times() -> None:
    port = SimSerialPort(
        PORT,
        script=[
            ScriptedBytes(1.0, b"RING\r\nDATE = 0612\r\nTIME = 1423\r\nNMBR = 5551234\r\n"),
            ScriptedBytes(5.0, b"RING\r\nDATE = 0612\r\nTIME = 1430\r\nNMBR = P\r\n"),
        ],
    )
    reader = SerialCallerIdReader(port, line_name="line2")
    reader.start(T0)
    first, second = reader.poll(T0 + 60 * S)  # a fast replay polls long after the fact
    assert (first.number, first.time, first.received_ns) == ("5551234", "06121423", T0 + 1 * S)
    assert (second.absence_number, second.received_ns) == ("P", T0 + 5 * S)
    reader.close()


def test_backoff_doubles_up_to_the_cap(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="drivers.serial")
    port = SimSerialPort(PORT)
    port.unplug()
    reader = SerialCallerIdReader(port, line_name="line1", retry_initial_s=1, retry_max_s=8)
    attempts: list[float] = []
    for step in range(0, 40_000, 100):  # 40 s of 100 ms polls
        now = T0 + step * MS
        before = len(caplog.records)
        reader.poll(now)
        if len(caplog.records) > before:  # each attempt logs (warning once, then debug)
            attempts.append(step / 1000)
    assert attempts == [0, 1, 3, 7, 15, 23, 31, 39]
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1
    reader.close()


def test_a_device_that_opens_but_fails_at_once_backs_off_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenAfterOpen(SimSerialPort):
        def read(self, now_ns: int) -> list[Received]:
            raise SerialPortError(f"serial port {self.device}: read failed (Input/output error)")

    caplog.set_level(logging.INFO, logger="drivers.serial")
    port = BrokenAfterOpen(PORT)
    reader = SerialCallerIdReader(port, line_name="line1", retry_initial_s=1, retry_max_s=4)
    for step in range(0, 20_000, 100):
        reader.poll(T0 + step * MS)
    assert port.opens == 7  # at 0, 1, 3, 7, 11, 15 and 19 s
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    reader.close()


def test_init_string_goes_out_even_when_the_port_takes_it_in_pieces() -> None:
    class SlowPort(SimSerialPort):
        def write(self, data: bytes) -> int:
            return super().write(data[:3])

    port = SlowPort(PORT)
    reader = SerialCallerIdReader(port, line_name="line1", init=b"ATZ\rAT#CID=1\r")
    for i in range(4):
        reader.poll(T0 + i * 100 * MS)
    assert bytes(port.written) == b"ATZ\rAT#CID=1"
    reader.poll(T0 + 400 * MS)
    reader.poll(T0 + 500 * MS)
    assert bytes(port.written) == b"ATZ\rAT#CID=1\r"  # whole, once
    reader.close()


def test_reader_rejects_a_backoff_that_makes_no_sense() -> None:
    with pytest.raises(ValueError, match="retry_initial_s"):
        SerialCallerIdReader(SimSerialPort(), line_name="line1", retry_initial_s=5, retry_max_s=1)
    with pytest.raises(ValueError, match="retry_initial_s"):
        SerialCallerIdReader(SimSerialPort(), line_name="line1", retry_initial_s=0)


# --------------------------------------------------------------------------------------
# pyserial over real ptys
# --------------------------------------------------------------------------------------
@pytest.fixture
def pty() -> Iterator[tuple[int, str]]:
    """(master fd, slave path) of a fresh pty pair."""
    master, slave = os.openpty()
    os.set_blocking(master, False)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def read_master(master: int, count: int, timeout_s: float = 1.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        try:
            got += os.read(master, 4096)
        except BlockingIOError:
            time.sleep(0.002)
    return got


def test_pyserial_reads_a_unit_on_a_pty_slave_path(pty: tuple[int, str]) -> None:
    master, path = pty
    reader = SerialCallerIdReader(
        PySerialPort(path, baudrate=1200), line_name="line1", init=b"AT+VCID=1\r"
    )
    try:
        assert reader.poll(T0) == []
        assert read_master(master, 10) == b"AT+VCID=1\r"
        os.write(master, b"\r\nRING\r\n\r\nDATE = 0612\r\nTIME = 1423\r\nNMBR = 5551234\r\n")
        time.sleep(0.01)
        os.write(master, b"NAME = JOHN DOE\r\n\r\nRING\r\n")
        records: list[SerialCallerId] = []
        deadline = time.monotonic() + 2
        while not records and time.monotonic() < deadline:
            records += reader.poll(T0 + S)
            time.sleep(0.002)
        (record,) = records
        assert cid_fields(record) == ("5551234", "JOHN DOE", "06121423", None, None)
        assert record.port == path
    finally:
        reader.close()


def test_pyserial_missing_device_names_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "ttyUSB7")
    port = PySerialPort(missing, baudrate=9600)
    with pytest.raises(SerialPortError) as info:
        port.open()
    message = str(info.value)
    assert missing in message and "No such file or directory" in message and "\n" not in message
    assert isinstance(info.value, LinetapError) and isinstance(info.value, OSError)
    assert not port.is_open
    with pytest.raises(SerialPortError, match="not open"):
        port.read(T0)


def test_pyserial_a_file_that_is_no_tty(tmp_path: Path) -> None:
    not_a_tty = tmp_path / "ttyS0"
    not_a_tty.write_text("")
    with pytest.raises(SerialPortError, match=rf"{not_a_tty}.*cannot open"):
        PySerialPort(str(not_a_tty), baudrate=9600).open()


def test_pyserial_port_held_by_another_program(pty: tuple[int, str]) -> None:
    _, path = pty
    first, second = PySerialPort(path, baudrate=9600), PySerialPort(path, baudrate=9600)
    try:
        first.open()
        with pytest.raises(SerialPortError, match=rf"{path}.*locked by another program"):
            second.open()
        first.close()
        second.open()  # free once the first let go
        assert second.is_open
    finally:
        first.close()
        second.close()


def test_pyserial_unit_vanishing_is_one_warning_not_an_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="drivers.serial")
    master, slave = os.openpty()
    path = os.ttyname(slave)
    reader = SerialCallerIdReader(PySerialPort(path, baudrate=9600), line_name="line3")
    try:
        reader.poll(T0)
        assert reader.connected
        os.close(master)  # the far end is gone: reads see EOF / EIO
        os.close(slave)
        for i in range(30):
            assert reader.poll(T0 + i * 100 * MS) == []
        assert not reader.connected
    finally:
        reader.close()
    (warning,) = caplog.records
    assert path in warning.getMessage() and "line3" in warning.getMessage()


def test_pyserial_rejects_a_bad_baud_rate() -> None:
    with pytest.raises(SerialPortError, match=r"/dev/ttyUSB0.*baud"):
        PySerialPort("/dev/ttyUSB0", baudrate=0)


# --------------------------------------------------------------------------------------
# make_serial_port and the error type
# --------------------------------------------------------------------------------------
def test_unknown_backend_names_the_setting_and_the_choices() -> None:
    with pytest.raises(SerialPortError) as info:
        make_serial_port(
            "usb", device="/dev/ttyUSB0", baudrate=9600, setting="lines.line1.cid_serial"
        )
    message = str(info.value)
    assert "lines.line1.cid_serial" in message and "'usb'" in message
    assert all(name in message for name in BACKENDS)


def test_factory_builds_each_backend() -> None:
    script = [ScriptedBytes(1.0, b"NMBR = 5\r\n")]
    sim = make_serial_port("sim", device="/dev/ttyCID1", baudrate=9600, script=script)
    assert isinstance(sim, SimSerialPort) and sim.backend == "sim" and sim.device == "/dev/ttyCID1"
    sim.open()
    sim.start(T0)
    assert sim.read(T0 + S) == [Received(b"NMBR = 5\r\n", T0 + S)]
    real = make_serial_port("pyserial", device="/dev/ttyUSB0", baudrate=1200)
    assert isinstance(real, PySerialPort) and real.baudrate == 1200 and not real.is_open


def test_a_script_for_a_real_port_is_refused() -> None:
    with pytest.raises(SerialPortError, match='"sim"'):
        make_serial_port(
            "pyserial", device="/dev/ttyUSB0", baudrate=9600, script=[ScriptedBytes(1, b"x")]
        )


def test_serial_port_error_is_an_oserror_and_a_linetap_error() -> None:
    error = SerialPortError("serial port /dev/ttyUSB0: read failed (Input/output error)")
    assert isinstance(error, OSError) and isinstance(error, LinetapError)
    assert str(error) == "serial port /dev/ttyUSB0: read failed (Input/output error)"
    assert error.errno is None  # no errno invented
