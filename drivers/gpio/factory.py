"""Pick the GPIO backend named by ``gpio.backend``.

There is no fallback from one hardware backend to another: a board that silently ended
up on the wrong backend (or on ``sim``) would record nothing and hide a wiring or setup
problem, so a backend that cannot start raises :class:`GpioError` with the fix.
"""

from __future__ import annotations

from collections.abc import Sequence

from drivers.errors import GpioError
from drivers.gpio import PinFactory
from drivers.gpio.sim import ScriptedLevel, SimPinFactory

BACKENDS = ("gpiod", "rpigpio", "sim")


def make_pin_factory(
    backend: str,
    *,
    chip: str = "/dev/gpiochip0",
    script: Sequence[ScriptedLevel] = (),
) -> PinFactory:
    """The backend ``backend`` ("gpiod", "rpigpio" or "sim"); ``chip`` is for gpiod only,
    ``script`` (a timeline of pin levels) for sim only."""
    if backend not in BACKENDS:
        raise GpioError(f"gpio.backend '{backend}' is unknown; use one of: {', '.join(BACKENDS)}")
    if backend == "sim":
        return SimPinFactory(script=script)
    if script:
        # Hardware pins follow the wires; a script given here would be silently ignored.
        raise GpioError(f'gpio.script drives pins only with gpio.backend = "sim", not "{backend}"')
    # Hardware backends are imported only when chosen, so that a broken or missing binding
    # for one board type never stops the other (or sim) from loading.
    if backend == "rpigpio":
        from drivers.gpio.rpigpio import RPiGPIOFactory

        return RPiGPIOFactory()
    from drivers.gpio.gpiod_backend import GpiodFactory

    return GpiodFactory(chip=chip)
