"""One contract for every GPIO backend, plus each backend's own failure paths.

The ``backend`` fixture yields ``(factory, driver)``: the factory under test and a driver
that plays the outside world (sets the level on an input pin, reads back an output pin).

* ``sim``: always.
* ``rpigpio``: our real :mod:`drivers.gpio.rpigpio` over :class:`FakeRPiGPIO`, a small
  stand-in for the RPi.GPIO module that calls edge callbacks from its own thread as the
  real one does.
* ``gpiod``: over a gpio-sim chip made through configfs; skipped where the kernel has no
  gpio-sim (containers, most CI), since a real chip's inputs cannot be driven from here.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import pytest

from drivers.errors import GpioError
from drivers.gpio import Edge, PinFactory
from drivers.gpio.devices import Led, SwitchInput
from drivers.gpio.factory import make_pin_factory
from drivers.gpio.gpiod_backend import GpiodFactory
from drivers.gpio.rpigpio import RPiGPIOFactory
from drivers.gpio.sim import ScriptedLevel, SimPinFactory

HOOK, OPT_OUT, OTHER_IN = 17, 27, 24  # inputs
LED, LED2 = 22, 23  # outputs


# --------------------------------------------------------------------------------------
# Drivers: the outside world of each backend
# --------------------------------------------------------------------------------------
class Driver(Protocol):
    # How long after set_input() returns the backend may still stamp the edge (a kernel
    # interrupt can be handled a little later than the write that caused it).
    stamp_slack_ns: int

    def set_input(self, pin: int, level: bool) -> None: ...

    def output_level(self, pin: int) -> bool: ...

    def settle(self) -> None:
        """Wait long enough that an edge still on its way would have arrived."""
        ...


class SimDriver:
    stamp_slack_ns = 0

    def __init__(self, factory: SimPinFactory) -> None:
        self._factory = factory

    def set_input(self, pin: int, level: bool) -> None:
        self._factory.pin(pin).drive(level)

    def output_level(self, pin: int) -> bool:
        return self._factory.pin(pin).read()

    def settle(self) -> None:
        pass  # sim edges are queued synchronously by drive()


class FakeRPiGPIO:
    """Enough of RPi.GPIO (constants, errors, threading) to run RPiGPIOFactory for real.

    Edge callbacks run on one event thread, as RPi.GPIO's poll thread does; each detected
    change queues one callback, which reads the level itself when it runs.
    """

    # The real module's constant values.
    BOARD, BCM = 10, 11
    OUT, IN = 0, 1
    LOW, HIGH = 0, 1
    PUD_OFF, PUD_DOWN, PUD_UP = 20, 21, 22
    RISING, FALLING, BOTH = 31, 32, 33

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.mode: int | None = None
        self.warnings = True
        self.direction: dict[int, int] = {}  # set-up channels: IN / OUT
        self.pull: dict[int, int] = {}
        self.external: dict[int, bool] = {}  # level the outside world drives on a pin
        self.driven: dict[int, bool] = {}  # level last driven by output()/setup(initial)
        self.callbacks: dict[int, Callable[[int], None]] = {}
        self.detect_calls: list[dict[str, Any]] = []
        self.cleanup_calls: list[object] = []
        self.fail_setup: dict[int, Exception] = {}
        self.callback_threads: set[int] = set()
        self.callback_errors: list[BaseException] = []
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._gate = threading.Event()
        self._gate.set()
        self._thread: threading.Thread | None = None

    # -- the RPi.GPIO API -----------------------------------------------------------
    def setwarnings(self, flag: bool) -> None:
        self.warnings = flag

    def setmode(self, mode: int) -> None:
        if self.mode is not None and self.mode != mode:
            raise ValueError("A different mode has already been set!")
        self.mode = mode

    def setup(
        self, channel: int, direction: int, pull_up_down: int = 20, initial: int = -1
    ) -> None:
        if self.mode is None:
            raise RuntimeError("Please set pin numbering mode using GPIO.setmode(GPIO.BCM)")
        if channel in self.fail_setup:
            raise self.fail_setup[channel]
        if not 0 <= channel <= 27:
            raise ValueError("The channel sent is invalid on a Raspberry Pi")
        if direction == self.OUT and pull_up_down != self.PUD_OFF:
            raise ValueError("pull_up_down parameter is not valid for outputs")
        with self._lock:
            self.direction[channel] = direction
            self.pull[channel] = pull_up_down
            if direction == self.OUT:
                self.driven[channel] = initial == self.HIGH

    def input(self, channel: int) -> int:
        with self._lock:
            if channel not in self.direction:
                raise RuntimeError("You must setup() the GPIO channel first")
            return self.HIGH if self._level(channel) else self.LOW

    def output(self, channel: int, value: int) -> None:
        with self._lock:
            if self.direction.get(channel) != self.OUT:
                raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")
            self.driven[channel] = bool(value)

    def add_event_detect(
        self,
        channel: int,
        edge: int,
        callback: Callable[[int], None] | None = None,
        **kwargs: Any,
    ) -> None:
        with self._lock:
            if self.direction.get(channel) != self.IN:
                raise RuntimeError("You must setup() the GPIO channel as an input first")
            if channel in self.callbacks:
                raise RuntimeError(
                    "Conflicting edge detection already enabled for this GPIO channel"
                )
            self.detect_calls.append({"channel": channel, "edge": edge, **kwargs})
            if callback is not None:
                self.callbacks[channel] = callback
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="fake-rpigpio-events", daemon=True
                )
                self._thread.start()

    def remove_event_detect(self, channel: int) -> None:
        with self._lock:
            self.callbacks.pop(channel, None)

    def cleanup(self, channel: int | list[int] | tuple[int, ...] | None = None) -> None:
        self.cleanup_calls.append(channel)
        with self._lock:
            if channel is None:
                channels = list(self.direction)
            elif isinstance(channel, int):
                channels = [channel]
            else:
                channels = list(channel)
            for ch in channels:
                # Like RPi.GPIO: back to an input without pull, edge detection off.
                self.callbacks.pop(ch, None)
                self.direction.pop(ch, None)
                self.pull.pop(ch, None)

    # -- the test's side --------------------------------------------------------------
    def _level(self, channel: int) -> bool:
        if self.direction.get(channel) == self.OUT:
            return self.driven.get(channel, False)
        if channel in self.external:
            return self.external[channel]
        return self.pull.get(channel) == self.PUD_UP

    def drive(self, channel: int, levels: list[bool]) -> None:
        """Apply ``levels`` one after another, then wait for the callbacks.

        Several levels in one call are a bounce faster than RPi.GPIO's callbacks: every
        change queues a callback, but they run only after the last change.
        """
        self._gate.clear()
        try:
            for level in levels:
                with self._lock:
                    before = self._level(channel)
                    self.external[channel] = level
                    changed = self._level(channel) != before
                    if changed and channel in self.callbacks:
                        self._queue.put(channel)
        finally:
            self._gate.set()
        self._queue.join()
        if self.callback_errors:
            raise AssertionError("edge callback failed") from self.callback_errors.pop(0)

    def shutdown(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=2)
            self._thread = None

    def _run(self) -> None:
        while True:
            channel = self._queue.get()
            try:
                if channel is None:
                    return
                self._gate.wait()
                with self._lock:
                    callback = self.callbacks.get(channel)
                if callback is not None:
                    self.callback_threads.add(threading.get_ident())
                    callback(channel)
            except BaseException as exc:  # noqa: BLE001 - handed to the test in drive()
                # RPi.GPIO prints a failing callback's traceback and keeps its thread
                # alive; here the test that drove the pin gets the error instead.
                self.callback_errors.append(exc)
            finally:
                self._queue.task_done()


class RPiGPIODriver:
    stamp_slack_ns = 0  # drive() returns only after the callbacks ran

    def __init__(self, gpio: FakeRPiGPIO) -> None:
        self.gpio = gpio

    def set_input(self, pin: int, level: bool) -> None:
        self.gpio.drive(pin, [level])

    def output_level(self, pin: int) -> bool:
        # After cleanup() the pin is an input again; this is what it drove until then.
        return self.gpio.driven[pin]

    def settle(self) -> None:
        pass


class GpioSimChip:
    """A gpio-sim chip (kernel >= 5.19) made through configfs; needs root."""

    CONFIGFS = Path("/sys/kernel/config/gpio-sim")

    def __init__(self, num_lines: int = 32) -> None:
        self.dir = self.CONFIGFS / f"linetap-test-{os.getpid()}-{time.monotonic_ns()}"
        self.bank = self.dir / "bank0"
        self.dir.mkdir()
        try:
            self.bank.mkdir()
            (self.bank / "num_lines").write_text(str(num_lines))
            (self.dir / "live").write_text("1")
            chip_name = (self.bank / "chip_name").read_text().strip()
            dev_name = (self.dir / "dev_name").read_text().strip()
        except OSError:
            self.remove()
            raise
        self.path = f"/dev/{chip_name}"
        self.sysfs = Path("/sys/devices/platform") / dev_name / chip_name

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not cls.CONFIGFS.is_dir() and os.geteuid() == 0 and shutil.which("modprobe"):
            subprocess.run(["modprobe", "gpio-sim"], capture_output=True, timeout=10, check=False)
        if not cls.CONFIGFS.is_dir():
            return (
                f"gpiod contract needs a gpio-sim chip to drive: {cls.CONFIGFS} is missing "
                "(no gpio-sim kernel module or configfs here)"
            )
        if not os.access(cls.CONFIGFS, os.W_OK):
            return f"gpiod contract needs root to create a gpio-sim chip in {cls.CONFIGFS}"
        return None

    def set_pull(self, pin: int, level: bool) -> None:
        (self.sysfs / f"sim_gpio{pin}" / "pull").write_text("pull-up" if level else "pull-down")

    def value(self, pin: int) -> bool:
        return (self.sysfs / f"sim_gpio{pin}" / "value").read_text().strip() == "1"

    def remove(self) -> None:
        live = self.dir / "live"
        if live.exists() and live.read_text().strip() == "1":
            live.write_text("0")
        if self.bank.exists():
            self.bank.rmdir()
        if self.dir.exists():
            self.dir.rmdir()


class GpioSimDriver:
    stamp_slack_ns = 50_000_000  # the irq_sim interrupt may run after the sysfs write

    def __init__(self, chip: GpioSimChip) -> None:
        self.chip = chip

    def set_input(self, pin: int, level: bool) -> None:
        self.chip.set_pull(pin, level)
        # gpio-sim raises the edge's interrupt through irq_work: on a slow (emulated)
        # CPU two quick pull changes can reach gpiolib merged or out of order, which no
        # real contact does. Hardware edges are at least a debounce apart anyway.
        time.sleep(0.02)

    def output_level(self, pin: int) -> bool:
        return self.chip.value(pin)

    def settle(self) -> None:
        time.sleep(0.02)


@pytest.fixture
def gpio_sim() -> Iterator[GpioSimChip]:
    reason = GpioSimChip.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    chip = GpioSimChip()
    # gpio-sim returns a released line to its pull. The LEDs are wired active low, so
    # their lines get the board's pull-up: released, they stay dark, as on the HAT.
    for pin in (LED, LED2):
        chip.set_pull(pin, True)
    try:
        yield chip
    finally:
        chip.remove()


@pytest.fixture(params=["sim", "rpigpio", "gpiod"])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[PinFactory, Driver]]:
    factory: PinFactory
    driver: Driver
    fake: FakeRPiGPIO | None = None
    if request.param == "sim":
        # A real clock, so hand-driven edges are stamped like hardware edges.
        sim = SimPinFactory(clock=time.monotonic_ns)
        factory, driver = sim, SimDriver(sim)
    elif request.param == "rpigpio":
        fake = FakeRPiGPIO()
        factory, driver = RPiGPIOFactory(gpio_module=fake), RPiGPIODriver(fake)
    else:
        chip: GpioSimChip = request.getfixturevalue("gpio_sim")
        factory, driver = GpiodFactory(chip=chip.path), GpioSimDriver(chip)
    try:
        yield factory, driver
    finally:
        try:
            factory.close()
        finally:
            if fake is not None:
                fake.shutdown()


def collect(factory: PinFactory, count: int, timeout_s: float = 1.0) -> list[Edge]:
    """Poll until ``count`` edges came (or the timeout), as the recorder's loop would."""
    edges: list[Edge] = []
    deadline = time.monotonic() + timeout_s
    while True:
        edges += factory.poll(time.monotonic_ns())
        if len(edges) >= count or time.monotonic() > deadline:
            return edges
        time.sleep(0.001)


def drive_stamped(driver: Driver, pin: int, level: bool) -> tuple[int, int]:
    before = time.monotonic_ns()
    driver.set_input(pin, level)
    return before, time.monotonic_ns() + driver.stamp_slack_ns


# --------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------
def test_input_reads_the_driven_level(backend: tuple[PinFactory, Driver]) -> None:
    factory, driver = backend
    pin = factory.input(HOOK, "off")
    assert pin.number == HOOK
    driver.set_input(HOOK, True)
    assert pin.read() is True
    driver.set_input(HOOK, False)
    assert pin.read() is False


@pytest.mark.parametrize(("pull", "idle"), [("up", True), ("down", False)])
def test_pull_sets_the_idle_level(
    backend: tuple[PinFactory, Driver], pull: str, idle: bool
) -> None:
    factory, _ = backend
    pin = factory.input(HOOK, "up" if pull == "up" else "down")
    assert pin.read() is idle
    assert factory.poll(time.monotonic_ns()) == []  # claiming is not an edge


def test_each_change_is_one_edge_in_order_stamped_at_the_change(
    backend: tuple[PinFactory, Driver],
) -> None:
    factory, driver = backend
    factory.input(HOOK, "down")
    factory.start(time.monotonic_ns())
    windows = [(level, drive_stamped(driver, HOOK, level)) for level in (True, False, True)]
    edges = collect(factory, 3)
    driver.settle()
    edges += factory.poll(time.monotonic_ns())

    assert [(e.pin, e.level) for e in edges] == [(HOOK, True), (HOOK, False), (HOOK, True)]
    assert [e.t_ns for e in edges] == sorted(e.t_ns for e in edges)
    for edge, (_, (before, after)) in zip(edges, windows, strict=True):
        assert before <= edge.t_ns <= after


def test_edges_of_several_pins_come_merged_oldest_first(
    backend: tuple[PinFactory, Driver],
) -> None:
    factory, driver = backend
    factory.input(HOOK, "down")
    factory.input(OPT_OUT, "down")
    driver.set_input(HOOK, True)
    driver.set_input(OPT_OUT, True)
    driver.set_input(HOOK, False)
    edges = collect(factory, 3)
    assert [(e.pin, e.level) for e in edges] == [(HOOK, True), (OPT_OUT, True), (HOOK, False)]
    assert [e.t_ns for e in edges] == sorted(e.t_ns for e in edges)


def test_no_edge_when_the_level_does_not_change(backend: tuple[PinFactory, Driver]) -> None:
    factory, driver = backend
    factory.input(HOOK, "down")
    driver.set_input(HOOK, False)  # already low
    driver.settle()
    assert factory.poll(time.monotonic_ns()) == []
    driver.set_input(HOOK, True)
    driver.set_input(HOOK, True)  # again: still one change
    edges = collect(factory, 1)
    driver.settle()
    edges += factory.poll(time.monotonic_ns())
    assert [(e.pin, e.level) for e in edges] == [(HOOK, True)]


def test_poll_never_blocks_and_is_empty_when_nothing_happened(
    backend: tuple[PinFactory, Driver],
) -> None:
    factory, _ = backend
    assert factory.poll(time.monotonic_ns()) == []  # nothing claimed yet
    factory.input(HOOK, "up")
    factory.input(OPT_OUT, "down")
    for _ in range(20):
        started = time.monotonic()
        assert factory.poll(time.monotonic_ns()) == []
        assert time.monotonic() - started < 0.05


def test_output_writes_are_visible_outside(backend: tuple[PinFactory, Driver]) -> None:
    factory, driver = backend
    led = factory.output(LED)  # initial defaults to low
    lit = factory.output(LED2, initial=True)
    assert led.number == LED
    assert driver.output_level(LED) is False
    assert driver.output_level(LED2) is True
    led.write(True)
    assert driver.output_level(LED) is True
    lit.write(False)
    assert driver.output_level(LED2) is False


@pytest.mark.parametrize(
    ("first", "second"),
    [("input", "input"), ("input", "output"), ("output", "input"), ("output", "output")],
)
def test_claiming_a_pin_twice_names_the_pin(
    backend: tuple[PinFactory, Driver], first: str, second: str
) -> None:
    factory, _ = backend

    def claim(how: str) -> object:
        return factory.input(HOOK, "up") if how == "input" else factory.output(HOOK)

    claim(first)
    with pytest.raises(GpioError, match=rf"(?<!\d){HOOK}(?!\d)"):
        claim(second)


def test_close_keeps_output_levels_and_frees_pins(backend: tuple[PinFactory, Driver]) -> None:
    factory, driver = backend
    factory.input(HOOK, "up")
    led = Led(factory, LED, active="low")
    led.set(True)
    assert driver.output_level(LED) is False
    led.set(False)  # what the recorder does on the way out
    factory.close()
    # Releasing must not drive the pin low: that would light an active-low LED.
    assert driver.output_level(LED) is True
    # Claimable again (a restart of the recorder on the same factory).
    factory.input(HOOK, "up")
    out = factory.output(LED)
    out.write(True)
    assert driver.output_level(LED) is True


# -- devices over every backend ---------------------------------------------------------
def test_active_low_switch(backend: tuple[PinFactory, Driver]) -> None:
    factory, driver = backend
    hook = SwitchInput(factory, HOOK, active="low", pull="up")
    assert hook.pin == HOOK
    assert hook.is_active is False  # pulled up: contact open
    driver.set_input(HOOK, False)
    assert hook.is_active is True
    driver.set_input(HOOK, True)
    assert hook.is_active is False
    edges = collect(factory, 2)
    assert [hook.edge_is_active(e) for e in edges] == [True, False]


def test_active_high_switch(backend: tuple[PinFactory, Driver]) -> None:
    factory, driver = backend
    opt_out = SwitchInput(factory, OPT_OUT, active="high", pull="down")
    assert opt_out.is_active is False
    driver.set_input(OPT_OUT, True)
    assert opt_out.is_active is True
    (edge,) = collect(factory, 1)
    assert opt_out.edge_is_active(edge) is True


@pytest.mark.parametrize(("active", "off_level"), [("low", True), ("high", False)])
def test_led_drives_its_active_level_when_lit(
    backend: tuple[PinFactory, Driver], active: str, off_level: bool
) -> None:
    factory, driver = backend
    led = Led(factory, LED, active="low" if active == "low" else "high")
    assert led.lit is False
    assert driver.output_level(LED) is off_level  # starts dark
    led.set(True)
    assert driver.output_level(LED) is (not off_level)
    led.set(False)
    assert driver.output_level(LED) is off_level


# --------------------------------------------------------------------------------------
# rpigpio specifics (over the fake module)
# --------------------------------------------------------------------------------------
@pytest.fixture
def fake_gpio() -> Iterator[FakeRPiGPIO]:
    fake = FakeRPiGPIO()
    try:
        yield fake
    finally:
        fake.shutdown()


def test_rpigpio_uses_bcm_both_edges_and_no_bouncetime(fake_gpio: FakeRPiGPIO) -> None:
    factory = RPiGPIOFactory(gpio_module=fake_gpio)
    factory.input(HOOK, "up")
    factory.input(OPT_OUT, "down")
    assert fake_gpio.mode == fake_gpio.BCM
    assert fake_gpio.pull == {HOOK: fake_gpio.PUD_UP, OPT_OUT: fake_gpio.PUD_DOWN}
    assert [c["edge"] for c in fake_gpio.detect_calls] == [fake_gpio.BOTH] * 2
    # RPi.GPIO's bouncetime would swallow edges the recorder's debouncer needs.
    assert all("bouncetime" not in c for c in fake_gpio.detect_calls)
    factory.close()


def test_rpigpio_callback_runs_on_the_event_thread(fake_gpio: FakeRPiGPIO) -> None:
    factory = RPiGPIOFactory(gpio_module=fake_gpio)
    factory.input(HOOK, "down")
    fake_gpio.drive(HOOK, [True])
    assert fake_gpio.callback_threads and threading.get_ident() not in fake_gpio.callback_threads
    assert [(e.pin, e.level) for e in factory.poll(time.monotonic_ns())] == [(HOOK, True)]
    factory.close()


@pytest.mark.parametrize(
    ("burst", "expected"),
    [
        ([True, False, True], [True]),  # callbacks all read high: one rising edge
        ([True, False], []),  # a pulse shorter than the callbacks: no net change
    ],
)
def test_rpigpio_bounce_faster_than_callbacks_keeps_levels_consistent(
    fake_gpio: FakeRPiGPIO, burst: list[bool], expected: list[bool]
) -> None:
    factory = RPiGPIOFactory(gpio_module=fake_gpio)
    pin = factory.input(HOOK, "down")
    fake_gpio.drive(HOOK, burst)
    edges = factory.poll(time.monotonic_ns())
    assert [e.level for e in edges] == expected
    assert edges[-1:] == [] or edges[-1].level == pin.read()
    factory.close()


def test_rpigpio_close_releases_only_our_pins(fake_gpio: FakeRPiGPIO) -> None:
    fake_gpio.setmode(fake_gpio.BCM)
    fake_gpio.setup(5, fake_gpio.OUT, initial=fake_gpio.HIGH)  # someone else's pin
    factory = RPiGPIOFactory(gpio_module=fake_gpio)
    factory.input(HOOK, "up")
    factory.output(LED, initial=True)
    factory.close()
    assert fake_gpio.callbacks == {}
    assert len(fake_gpio.cleanup_calls) == 1
    cleaned = fake_gpio.cleanup_calls[0]
    assert isinstance(cleaned, list) and sorted(cleaned) == [HOOK, LED]
    assert fake_gpio.direction == {5: fake_gpio.OUT}
    assert fake_gpio.driven[LED] is True  # released as it was, not driven on the way out


def test_rpigpio_setup_failure_names_the_pin(fake_gpio: FakeRPiGPIO) -> None:
    # What RPi.GPIO says on a Pi 5, whose GPIOs are not on the SoC any more.
    fake_gpio.fail_setup[HOOK] = RuntimeError("Cannot determine SOC peripheral base address")
    factory = RPiGPIOFactory(gpio_module=fake_gpio)
    with pytest.raises(GpioError) as info:
        factory.input(HOOK, "up")
    message = str(info.value)
    assert f"GPIO{HOOK}" in message and "SOC peripheral" in message and "gpiod" in message
    assert "\n" not in message
    factory.close()


def test_rpigpio_invalid_pin_is_a_gpio_error(fake_gpio: FakeRPiGPIO) -> None:
    factory = RPiGPIOFactory(gpio_module=fake_gpio)
    with pytest.raises(GpioError, match="GPIO40"):
        factory.output(40)
    with pytest.raises(GpioError, match="GPIO-1"):
        factory.input(-1, "up")
    factory.close()


def test_rpigpio_without_the_module_points_to_gpiod() -> None:
    if importlib.util.find_spec("RPi") is not None:
        pytest.skip("RPi.GPIO is installed here; this checks a machine without it")
    with pytest.raises(GpioError) as info:
        RPiGPIOFactory()  # the real import
    message = str(info.value)
    assert "Pi 3/4" in message and "Pi 5" in message and 'gpio.backend = "gpiod"' in message
    assert "\n" not in message


def test_rpigpio_refusing_the_board_points_to_gpiod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RPi.GPIO raises RuntimeError at import on hardware it does not know.
    package = tmp_path / "RPi"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "GPIO.py").write_text(
        'raise RuntimeError("This module can only be run on a Raspberry Pi!")\n'
    )
    saved: dict[str, ModuleType] = {
        name: sys.modules.pop(name) for name in ("RPi", "RPi.GPIO") if name in sys.modules
    }
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(GpioError) as info:
            RPiGPIOFactory()
    finally:
        for name in ("RPi", "RPi.GPIO"):
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    message = str(info.value)
    assert "only be run on a Raspberry Pi" in message and 'gpio.backend = "gpiod"' in message


# --------------------------------------------------------------------------------------
# gpiod specifics
# --------------------------------------------------------------------------------------
def test_gpiod_missing_chip_is_one_line_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "gpiochip9")
    with pytest.raises(GpioError) as info:
        GpiodFactory(chip=missing)
    message = str(info.value)
    assert f"'{missing}'" in message and "not found" in message and "gpiodetect" in message
    assert "\n" not in message
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOENT


def test_gpiod_a_file_that_is_no_chip(tmp_path: Path) -> None:
    not_a_chip = tmp_path / "gpiochip0"
    not_a_chip.write_text("")
    with pytest.raises(GpioError, match=rf"'{not_a_chip}'.*not a GPIO chip.*gpiodetect"):
        GpiodFactory(chip=str(not_a_chip))


def test_gpiod_line_held_by_another_process_is_busy(gpio_sim: GpioSimChip) -> None:
    first, second = GpiodFactory(chip=gpio_sim.path), GpiodFactory(chip=gpio_sim.path)
    try:
        first.input(HOOK, "up")
        with pytest.raises(GpioError, match=rf"GPIO{HOOK}.*busy.*gpioinfo"):
            second.input(HOOK, "up")
        first.close()
        second.input(HOOK, "up")  # free again once the first released it
    finally:
        first.close()
        second.close()


def test_gpiod_offset_beyond_the_chip(gpio_sim: GpioSimChip) -> None:
    factory = GpiodFactory(chip=gpio_sim.path)
    try:
        with pytest.raises(GpioError, match=r"GPIO40.*gpiodetect"):
            factory.input(40, "up")  # the sim chip has 32 lines
    finally:
        factory.close()


# --------------------------------------------------------------------------------------
# make_pin_factory
# --------------------------------------------------------------------------------------
def test_unknown_backend_lists_the_valid_ones() -> None:
    with pytest.raises(GpioError) as info:
        make_pin_factory("pigpio")
    message = str(info.value)
    assert "'pigpio'" in message
    assert all(name in message for name in ("gpiod", "rpigpio", "sim"))


def test_sim_backend_gets_the_script() -> None:
    pins = make_pin_factory("sim", script=[ScriptedLevel(0, HOOK, True)])
    assert isinstance(pins, SimPinFactory) and pins.name == "sim"
    assert pins.input(HOOK, "down").read() is True


def test_no_fallback_when_gpiod_cannot_start(tmp_path: Path) -> None:
    missing = str(tmp_path / "gpiochip0")
    with pytest.raises(GpioError, match=missing):
        make_pin_factory("gpiod", chip=missing)


def test_no_fallback_when_rpigpio_cannot_start() -> None:
    if importlib.util.find_spec("RPi") is not None:
        pytest.skip("RPi.GPIO is installed here; this checks a machine without it")
    with pytest.raises(GpioError, match="gpiod"):
        make_pin_factory("rpigpio")


def test_a_script_for_a_hardware_backend_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GpioError, match="sim"):
        make_pin_factory(
            "gpiod", chip=str(tmp_path / "gpiochip0"), script=[ScriptedLevel(1, HOOK, True)]
        )


# --------------------------------------------------------------------------------------
# The sim backend's script
# --------------------------------------------------------------------------------------
T0 = 5_000_000_000
MS = 1_000_000


def test_script_levels_at_or_before_zero_are_initial_levels_not_edges() -> None:
    pins = SimPinFactory(script=[ScriptedLevel(0, HOOK, False), ScriptedLevel(-2.0, OPT_OUT, True)])
    hook, opt_out = pins.input(HOOK, "up"), pins.input(OPT_OUT, "down")
    other = pins.input(OTHER_IN, "up")
    assert (hook.read(), opt_out.read(), other.read()) == (False, True, True)  # script beats pull
    pins.start(T0)
    assert pins.poll(T0) == []
    assert pins.poll(T0 + 10_000 * MS) == []
    assert pins.script_done


def test_script_edges_are_stamped_at_their_scripted_time_once_passed() -> None:
    pins = SimPinFactory(
        script=[
            ScriptedLevel(1.5, HOOK, True),  # out of order on purpose: the script is sorted
            ScriptedLevel(0.25, HOOK, False),
            ScriptedLevel(0.25, OPT_OUT, True),
            ScriptedLevel(2.0, HOOK, True),  # no change: no edge
        ]
    )
    pins.input(HOOK, "up")
    pins.input(OPT_OUT, "down")
    assert pins.poll(T0 + 10_000 * MS) == []  # nothing before start()
    pins.start(T0)
    assert pins.poll(T0 + 249 * MS) == []
    assert pins.poll(T0 + 250 * MS) == [
        Edge(HOOK, False, T0 + 250 * MS),
        Edge(OPT_OUT, True, T0 + 250 * MS),
    ]
    assert pins.poll(T0 + 1_499_999_999) == []
    assert not pins.script_done
    # Polled late: the edge keeps its scripted time, not the poll's.
    assert pins.poll(T0 + 60_000 * MS) == [Edge(HOOK, True, T0 + 1500 * MS)]
    assert pins.script_done
    assert pins.poll(T0 + 61_000 * MS) == []
