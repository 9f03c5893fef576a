"""One contract for every serial port backend, run through the real caller-ID reader.

The ``rig`` fixture gives a port under test and the ``unit`` at its far end: the caller-ID
box that prints text, reads what the port sends, and can be unplugged and plugged back.

* ``sim``: :class:`SimSerialPort`; the unit feeds it and reads its ``written`` bytes.
* ``pyserial``: :class:`PySerialPort` on the slave of a real pty pair, opened through a
  symlink (as /dev/serial/by-id/... is); the unit writes and reads the master side.
  Unplugging closes the pty and removes the symlink; plugging back makes a new pty and
  points the symlink at it, as udev does for a replugged USB adapter.

Times: polls pass a made-up ``now_ns``, which both backends stamp on what they read, so
stamps and retry backoff are checked exactly; real time is only waited for the pty to carry
bytes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from drivers.serial import SerialPort
from drivers.serial.cid_text import SerialCallerId
from drivers.serial.pyserial_port import PySerialPort
from drivers.serial.reader import SerialCallerIdReader
from drivers.serial.sim import SimSerialPort
from tests.helpers import cid_fields

MS = 1_000_000
S = 1_000_000_000
T0 = 1_000 * S
INIT = b"AT#CID=1\r"


class Unit(Protocol):
    """The caller-ID box at the far end of the port."""

    def send(self, data: bytes) -> None: ...

    def received(self, expect: int) -> bytes:
        """What the port sent to the unit since the last call; waits for ``expect`` bytes
        (at most a second) or, with ``expect=0``, for anything still on its way."""
        ...

    def settle(self) -> None:
        """Wait until bytes sent would have reached the port's side."""
        ...

    def unplug(self) -> None: ...

    def replug(self) -> None: ...


class SimUnit:
    def __init__(self, port: SimSerialPort) -> None:
        self.port = port
        self._seen = 0

    def send(self, data: bytes) -> None:
        self.port.feed(data)

    def received(self, expect: int) -> bytes:
        new = bytes(self.port.written[self._seen :])
        self._seen = len(self.port.written)
        return new

    def settle(self) -> None:
        pass  # fed bytes are queued synchronously

    def unplug(self) -> None:
        self.port.unplug()

    def replug(self) -> None:
        self.port.replug()


class PtyUnit:
    """A pty pair whose slave is reached through the symlink ``link``."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self._master: int | None = None
        self._slave: int | None = None  # held so the pty stays usable between opens
        self.replug()

    def replug(self) -> None:
        master, slave = os.openpty()
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        fresh = self.link.with_name(self.link.name + ".new")
        fresh.symlink_to(os.ttyname(slave))
        fresh.replace(self.link)

    def unplug(self) -> None:
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None
        self.link.unlink(missing_ok=True)

    def send(self, data: bytes) -> None:
        assert self._master is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._master, view) :]

    def received(self, expect: int) -> bytes:
        assert self._master is not None
        got = b""
        deadline = time.monotonic() + (1.0 if expect else 0.05)
        while time.monotonic() < deadline and (not expect or len(got) < expect):
            try:
                got += os.read(self._master, 4096)
            except BlockingIOError:
                time.sleep(0.002)
        return got

    def settle(self) -> None:
        time.sleep(0.003)


@dataclass
class Rig:
    backend: str
    port: SerialPort
    unit: Unit
    device: str

    def reader(
        self,
        *,
        init: bytes | None = None,
        idle_gap_s: float = 0.5,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
    ) -> SerialCallerIdReader:
        return SerialCallerIdReader(
            self.port,
            line_name="line1",
            init=init,
            idle_gap_s=idle_gap_s,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
        )

    def fresh_port(self) -> SerialPort:
        """Another port on the same device (a sim device is its port object)."""
        return (
            self.port
            if isinstance(self.port, SimSerialPort)
            else PySerialPort(self.device, baudrate=9600)
        )


@pytest.fixture(params=["sim", "pyserial"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    pty: PtyUnit | None = None
    port: SerialPort
    unit: Unit
    if request.param == "sim":
        sim = SimSerialPort("/dev/ttyCID0")
        port, unit, device = sim, SimUnit(sim), sim.device
    else:
        device = str(tmp_path / "ttyCID0")
        pty = PtyUnit(Path(device))
        port, unit = PySerialPort(device, baudrate=9600), pty
    try:
        yield Rig(request.param, port, unit, device)
    finally:
        port.close()
        if pty is not None:
            pty.unplug()


def collect(
    reader: SerialCallerIdReader, count: int, now_ns: int, timeout_s: float = 2.0
) -> list[SerialCallerId]:
    """Poll at ``now_ns`` until ``count`` records came (or the timeout)."""
    records: list[SerialCallerId] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        records += reader.poll(now_ns)
        if len(records) < count:
            time.sleep(0.002)
    return records


SENTINEL = b"DATE = 1231\r\nTIME = 2359\r\nNMBR = 999\r\nNAME = END\r\n"
SENTINEL_SUMMARY = ("999", "END", "12312359", None, None)

# What a unit printed over four calls: noise, RINGs, absence codes, every line-end style,
# blanks, DDN_NMBR, MESG, a block with no TIME.
TRANSCRIPT = (
    b"\x00\xff~+\r\n"
    b"RING\r\n\r\n"
    b"DATE = 0612\r\nTIME = 1423\r\nNMBR = 5551234\r\nNAME = JOHN DOE\r\n"
    b"RING\r\nRING\n"
    b"DATE = 0613\nTIME = 0905\nNMBR = O\nNAME = O\n"
    b"RING\r"
    b"  DATE =  0614 \rTIME=2359\rDDN_NMBR = +4930123\rMESG = 0A0B\rRING\r"
    b"DATE = 0615\r\nNMBR = P\r\nNAME = P\r\n"
)
EXPECTED = [
    ("5551234", "JOHN DOE", "06121423", None, None),
    (None, None, "06130905", "O", "O"),
    ("+4930123", None, "06142359", None, None),
    (None, None, None, "P", "P"),
]


# --------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [3, 11, len(TRANSCRIPT)])
def test_records_from_a_transcript_split_mid_line(rig: Rig, chunk_size: int) -> None:
    reader = rig.reader()
    assert reader.poll(T0) == []  # opens the port
    assert reader.connected
    records: list[SerialCallerId] = []
    now = T0
    for start in range(0, len(TRANSCRIPT), chunk_size):
        rig.unit.send(TRANSCRIPT[start : start + chunk_size])
        rig.unit.settle()
        now += 1 * MS  # well inside the idle gap: only line content ends records
        records += reader.poll(now)
    rig.unit.send(SENTINEL)
    records += collect(reader, len(EXPECTED) + 1 - len(records), now)
    assert [cid_fields(r) for r in records] == [*EXPECTED, SENTINEL_SUMMARY]
    assert all(r.port == rig.device for r in records)
    assert all(T0 < r.received_ns <= now for r in records)
    assert [r.received_ns for r in records] == sorted(r.received_ns for r in records)
    assert records[0].raw == (b"DATE = 0612\nTIME = 1423\nNMBR = 5551234\nNAME = JOHN DOE")
    assert b"MESG = 0A0B" in records[2].raw  # unknown keys stay in raw
    reader.close()


def test_bare_rings_and_noise_make_no_record(rig: Rig) -> None:
    reader = rig.reader()
    reader.poll(T0)
    rig.unit.send(b"RING\r\nRING\r\n\xfe\xfd\r\nOK\r\nMESG = 0102\r\nRING\r\n" + SENTINEL)
    records = collect(reader, 1, T0)
    assert [cid_fields(r) for r in records] == [SENTINEL_SUMMARY]
    rig.unit.settle()
    assert reader.poll(T0 + 10 * S) == []  # nothing was left waiting
    reader.close()


def test_record_stamped_with_the_poll_that_completed_it(rig: Rig) -> None:
    reader = rig.reader()
    reader.poll(T0)
    rig.unit.send(b"DATE = 0612\r\nTIME = 1423\r\nNMBR = 5551234\r\nNAM")
    rig.unit.settle()
    assert reader.poll(T0 + 10 * MS) == []  # NAME not finished
    rig.unit.send(b"E = JANE\r\n")
    (record,) = collect(reader, 1, T0 + 20 * MS)
    assert cid_fields(record) == ("5551234", "JANE", "06121423", None, None)
    assert record.received_ns == T0 + 20 * MS
    reader.close()


def test_a_record_without_name_ends_after_the_idle_gap(rig: Rig) -> None:
    reader = rig.reader(idle_gap_s=0.5)
    reader.poll(T0)
    rig.unit.send(b"DATE = 0612\r\nTIME = 1423\r\nNMBR = 5551234\r\n")
    rig.unit.settle()
    read_at = T0 + 10 * MS
    assert collect(reader, 1, read_at, timeout_s=0.2) == []  # all read, none finished
    assert reader.poll(read_at + 499 * MS) == []
    (record,) = reader.poll(read_at + 500 * MS)
    assert cid_fields(record) == ("5551234", None, "06121423", None, None)
    assert record.received_ns == read_at  # when its last line came, not when the gap ended
    reader.close()


def test_init_string_is_sent_on_open(rig: Rig) -> None:
    reader = rig.reader(init=INIT)
    reader.poll(T0)
    assert rig.unit.received(len(INIT)) == INIT
    reader.poll(T0 + 100 * MS)
    assert rig.unit.received(0) == b""  # once per open, not per poll
    reader.close()


def test_no_init_string_sends_nothing(rig: Rig) -> None:
    reader = rig.reader()
    reader.poll(T0)
    reader.poll(T0 + 100 * MS)
    assert reader.connected
    assert rig.unit.received(0) == b""
    reader.close()


def test_poll_never_blocks(rig: Rig) -> None:
    reader = rig.reader(init=INIT)
    worst = 0.0
    for i in range(50):
        before = time.perf_counter()
        assert reader.poll(T0 + i * 100 * MS) == []
        worst = max(worst, time.perf_counter() - before)
    assert worst < 0.05, f"a poll of an idle port took {worst * 1000:.1f} ms"
    reader.close()


def test_unplugged_unit_warns_once_backs_off_and_comes_back(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="drivers.serial")
    reader = rig.reader(init=INIT, retry_initial_s=1.0, retry_max_s=4.0)
    reader.poll(T0)
    assert rig.unit.received(len(INIT)) == INIT
    rig.unit.send(SENTINEL)
    assert [cid_fields(r) for r in collect(reader, 1, T0)] == [SENTINEL_SUMMARY]

    # The unit vanishes in the middle of a call's block: its complete lines are kept.
    rig.unit.send(b"DATE = 0701\r\nTIME = 0800\r\nNMBR = 5550000\r\nNA")
    rig.unit.settle()
    t_fail = T0 + 1 * S
    assert reader.poll(t_fail - 1 * MS) == []
    rig.unit.unplug()
    records: list[SerialCallerId] = []
    deadline = time.monotonic() + 2.0
    while reader.connected and time.monotonic() < deadline:
        records += reader.poll(t_fail)  # no exception: the recorder keeps running
    assert not reader.connected
    assert [cid_fields(r) for r in records] == [("5550000", None, "07010800", None, None)]

    # Retries follow the backoff on the clock it is given: 1 s, then 2 s, then 4 s.
    assert reader.poll(t_fail + 999 * MS) == []
    assert reader.poll(t_fail + 1000 * MS) == []  # retried, still missing; next in 2 s
    assert not reader.connected
    rig.unit.replug()
    assert reader.poll(t_fail + 2999 * MS) == []
    assert not reader.connected  # not retried early although the device is back
    assert reader.poll(t_fail + 3000 * MS) == []
    assert reader.connected
    assert rig.unit.received(len(INIT)) == INIT  # a replugged modem is told again

    rig.unit.send(SENTINEL)
    assert [cid_fields(r) for r in collect(reader, 1, t_fail + 3100 * MS)] == [SENTINEL_SUMMARY]

    ours = [r for r in caplog.records if r.name.startswith("drivers.serial")]
    warnings = [r for r in ours if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    warning = warnings[0].getMessage()
    assert rig.device in warning and "line1" in warning and "\n" not in warning
    assert any("is back" in r.getMessage() and rig.device in r.getMessage() for r in ours)
    reader.close()


def test_missing_unit_at_start_warns_once_and_is_picked_up_later(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="drivers.serial")
    rig.unit.unplug()
    reader = rig.reader(retry_initial_s=0.5, retry_max_s=0.5)
    for i in range(10):  # 5 s of polls; capped backoff: a retry every 0.5 s
        assert reader.poll(T0 + i * 500 * MS) == []
    assert not reader.connected
    assert len(caplog.records) == 1 and rig.device in caplog.records[0].getMessage()
    rig.unit.replug()
    assert reader.poll(T0 + 5 * S) == []
    assert reader.connected
    rig.unit.send(SENTINEL)
    assert [cid_fields(r) for r in collect(reader, 1, T0 + 5 * S)] == [SENTINEL_SUMMARY]
    reader.close()


def test_close_releases_the_port(rig: Rig) -> None:
    reader = rig.reader()
    reader.poll(T0)
    assert rig.port.is_open
    reader.close()
    assert not rig.port.is_open and not reader.connected
    reader.close()  # twice is fine
    again = SerialCallerIdReader(rig.fresh_port(), line_name="line1")
    try:
        again.poll(T0)
        assert again.connected
        rig.unit.send(SENTINEL)
        assert [cid_fields(r) for r in collect(again, 1, T0)] == [SENTINEL_SUMMARY]
    finally:
        again.close()
