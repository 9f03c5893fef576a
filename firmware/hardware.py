"""The capture hardware linetap knows, and which of it a sound card is.

:data:`HARDWARE` has one row per capture device and system: how ALSA names its card,
the overlay that makes it, the kernel modules and config symbols it needs, what was
verified without the device and what still needs a real unit. Three readers keep it
honest:

- ``linetap check`` (``audio.card``) names the card behind ``audio.device`` and its row
  (:func:`read_cards`, :func:`device_card`);
- ``image/check-hardware.py`` checks the image's kernel against the rows the image
  drives (modules, config symbols, overlays, and the overlay's card name against
  ``card_ids``) and fails the build when one is missing;
- ``image/README.md``'s "Supported capture hardware" table shows the same rows and card
  names (tests/test_hardware_table.py compares them).

Pure data and text matching, standard library only: the image build imports this module
with the build host's python3, outside linetap's venv.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

CARDS_PATH = Path("/proc/asound/cards")

# Where a row applies.
IMAGE = "linetap image (Debian kernel), Pi 3/4"
IMAGE_PI5 = "linetap image (Debian kernel), Pi 5"
RASPIOS = "Raspberry Pi OS (Pi kernel) + linetap .deb, Pi 3/4/5"

# ALSA's card ids are at most 15 characters (struct snd_card.id is 16 bytes).
_CARD_ID_MAX = 15


@dataclass(frozen=True)
class CaptureHardware:
    """One capture device on one system.

    A sound card is this row when its ALSA id matches one of ``card_ids`` or its driver
    one of ``drivers`` (shell patterns). ``device`` is the ``audio.device`` to use, with
    ``{card}`` for the card's id; ``device_why``, if set, is why another PCM on that card
    is wrong (``linetap check`` warns). ``in_image``: the image's kernel drives it, so the
    image build checks ``modules``, ``config_symbols`` and ``overlay`` (compiled from
    image/overlays/<overlay>.dts and applied to the device trees matching ``dtbs``).
    """

    id: str
    name: str
    system: str
    inputs: str
    verified: str
    needs_unit: str
    card_ids: tuple[str, ...] = ()
    drivers: tuple[str, ...] = ()
    overlay: str | None = None
    modules: tuple[str, ...] = ()
    config_symbols: tuple[str, ...] = ()
    dtbs: tuple[str, ...] = ()
    device: str | None = None
    device_why: str | None = None
    in_image: bool = False

    def matches(self, card: SoundCard) -> bool:
        return any(fnmatchcase(card.id, p) for p in self.card_ids) or any(
            fnmatchcase(card.driver, p) for p in self.drivers
        )

    def device_for(self, card: SoundCard) -> str | None:
        return self.device.format(card=card.id) if self.device else None


HARDWARE: tuple[CaptureHardware, ...] = (
    CaptureHardware(
        id="wm8960-image",
        name="WM8960 Audio HAT",
        system=IMAGE,
        inputs="2 (the codec's left and right ADC)",
        card_ids=("linetap",),
        overlay="linetap-wm8960",
        modules=(
            "snd-soc-bcm2835-i2s",
            "snd-soc-simple-card",
            "snd-soc-simple-card-utils",
            "snd-soc-wm8960",
            "i2c-bcm2835",
        ),
        config_symbols=(
            "CONFIG_SND_BCM2835_SOC_I2S",
            "CONFIG_SND_SIMPLE_CARD",
            "CONFIG_SND_SOC_WM8960",
            "CONFIG_I2C_BCM2835",
            "CONFIG_DMA_BCM2835",
            "CONFIG_COMMON_CLK",
        ),
        dtbs=("bcm2837-rpi-*.dtb", "bcm2711-rpi-*.dtb"),
        device="hw:CARD={card}",
        in_image=True,
        verified=(
            "modules and config symbols in Debian's 6.12 arm64 kernel; the overlay compiles"
            " (dtc -@) and applies (fdtoverlay) on every bcm2837-rpi-* and bcm2711-rpi-*"
            " device tree, card, I2S (with DMA), codec and clock enabled"
        ),
        needs_unit=(
            "the card probing on a Pi 3 and a Pi 4 (Pi 4: I2S DMA under Debian's tree);"
            " 8 and 16 kHz capture with the codec as clock master from a 12.288 MHz"
            " crystal; which inputs the HAT brings out for a line tap; mixer settings"
        ),
    ),
    CaptureHardware(
        id="wm8960-raspios",
        name="WM8960 Audio HAT",
        system=RASPIOS,
        inputs="2 (the codec's left and right ADC)",
        card_ids=("wm8960soundcard",),
        overlay="wm8960-soundcard",
        modules=("snd-soc-bcm2835-i2s", "snd-soc-simple-card", "snd-soc-wm8960"),
        device="hw:CARD={card}",
        verified=(
            "nothing run here: the card id follows from the name in Raspberry Pi OS's"
            ' overlay source (simple-audio-card,name = "wm8960-soundcard")'
        ),
        needs_unit="everything: Raspberry Pi OS's kernel and overlay on a Pi 3, 4 and 5",
    ),
    CaptureHardware(
        id="usb-audio",
        name="USB Audio Class interface (class-compliant)",
        system=f"{IMAGE}; {RASPIOS}",
        inputs="1–4 (input n is line channel n-1)",
        drivers=("USB-Audio",),
        modules=("snd-usb-audio",),
        config_symbols=("CONFIG_SND_USB_AUDIO",),
        device="linetap_usb:CARD={card}",
        device_why=(
            "keeps each input on a line channel of its own (plughw averages all inputs into"
            " the one channel of a one-line unit) at a rate the interface has"
        ),
        in_image=True,
        verified=(
            "snd-usb-audio in Debian's 6.12 arm64 kernel; the image's linetap_usb PCM"
            " (/etc/alsa/conf.d/60-linetap-usb.conf) through alsa-lib: a 4-channel"
            " 48 kHz stream comes out at 8 and 16 kHz, each input on its own line channel"
        ),
        needs_unit=(
            "a real interface: its card id, the rate and channel count it captures at"
            " (RATE=, CHANNELS=), input levels"
        ),
    ),
    CaptureHardware(
        id="pi5-image",
        name="any HAT or USB interface",
        system=IMAGE_PI5,
        inputs="none",
        verified=(
            "the overlay does not apply on Debian's bcm2712-rpi-5-b tree (no i2s, i2c1:"
            " RP1, which carries the Pi 5's GPIO header, I2S and USB, is not described)"
        ),
        needs_unit=(
            "not supported: use Raspberry Pi OS and the linetap .deb"
            " (rows wm8960-raspios, usb-audio)"
        ),
    ),
)


@dataclass(frozen=True)
class SoundCard:
    """One card of /proc/asound/cards: `` 1 [U192k          ]: USB-Audio - UMC404HD 192k``."""

    index: int
    id: str
    driver: str
    name: str
    long_name: str

    def describe(self) -> str:
        return f"card {self.index} [{self.id}] ({self.driver}: {self.name})"


_CARD_LINE = re.compile(r"^\s*(\d+)\s+\[([^\]\s]+)\s*\]:\s(.*?)\s-\s(.*)$")


def parse_cards(text: str) -> list[SoundCard]:
    """The cards in /proc/asound/cards text (none for "--- no soundcards ---")."""
    cards: list[SoundCard] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _CARD_LINE.match(line)
        if m is None:
            continue
        long_name = lines[i + 1].strip() if i + 1 < len(lines) else ""
        cards.append(SoundCard(int(m[1]), m[2], m[3].strip(), m[4].strip(), long_name))
    return cards


def match_card(
    card: SoundCard, rows: tuple[CaptureHardware, ...] = HARDWARE
) -> CaptureHardware | None:
    """The first row ``card`` matches; None for a card linetap was not tested with."""
    return next((row for row in rows if row.matches(card)), None)


def read_cards(
    path: Path = CARDS_PATH,
) -> list[tuple[SoundCard, CaptureHardware | None]]:
    """Every card the kernel has, with its row. No /proc/asound at all (a kernel without
    ALSA, or no card ever registered) is no cards."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [(card, match_card(card)) for card in parse_cards(text)]


def device_card(device: str) -> str | None:
    """The card an ALSA PCM name names (its id or index), or None if it names none.

    ``hw:CARD=X,DEV=0``, ``linetap_usb:CARD=X``, ``plughw:1,0``, ``hw:X``: ALSA's own
    PCMs and ``linetap_usb`` take the card as their first argument. ``default`` or a
    PCM without arguments names no card.
    """
    _name, sep, args = device.partition(":")
    if not sep or not args:
        return None
    parts = [p.strip() for p in args.split(",")]
    for part in parts:
        key, eq, value = part.partition("=")
        if eq and key.strip().upper() == "CARD":
            return value.strip().strip("'\"") or None
    first = parts[0]
    if "=" in first:
        return None  # KEY=value arguments without CARD
    return first.strip("'\"") or None


def find_card(
    found: list[tuple[SoundCard, CaptureHardware | None]], named: str
) -> tuple[SoundCard, CaptureHardware | None] | None:
    """The entry of ``found`` that ALSA's ``CARD=named`` opens (by index or by id)."""
    for card, row in found:
        if (named.isdigit() and card.index == int(named)) or card.id == named:
            return card, row
    return None


def alsa_card_id(name: str) -> str:
    """The id ALSA gives a card registered without one (ASoC cards, e.g. an overlay's
    simple-audio-card): the last word of its name, letters and digits only, at most 15,
    with a leading digit prefixed by the name's first letter (or "D").

    "wm8960-soundcard" -> "wm8960soundcard"; "UMC404HD 192k" -> "U192k".
    """
    words = name.split()
    last = words[-1] if words else ""
    kept = "".join(ch for ch in last if ch.isascii() and ch.isalnum())
    if kept[:1].isdigit():
        kept = (name[0] if name[:1].isascii() and name[:1].isalpha() else "D") + kept
    return kept[:_CARD_ID_MAX]


def rows_by_id() -> dict[str, CaptureHardware]:
    return {row.id: row for row in HARDWARE}
