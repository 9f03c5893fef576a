"""``audio.card``: the sound card behind ``audio.device`` and its hardware-table row."""

from __future__ import annotations

from pathlib import Path

from firmware.config import AudioConfig
from firmware.hardware import (
    CARDS_PATH,
    CaptureHardware,
    SoundCard,
    device_card,
    find_card,
    read_cards,
)
from firmware.tools._checks.base import Check, Status, skipped

CHECK_ID = "audio.card"
_TABLE = "image/README.md, 'Supported capture hardware'"
_NO_CARD_FIX = (
    "fit the HAT and remove the '#' before its dtoverlay= line in config.txt on LTBOOT"
    " (or plug in the USB interface), then reboot"
)


def _row_text(row: CaptureHardware | None) -> str:
    return f"{row.name}, {row.system} (row {row.id})" if row else "not in the hardware table"


def _summary(found: list[tuple[SoundCard, CaptureHardware | None]]) -> str:
    return "; ".join(f"{card.describe()}: {_row_text(row)}" for card, row in found)


def _suggestion(found: list[tuple[SoundCard, CaptureHardware | None]]) -> str | None:
    """``set audio.device = ...`` for the first card of a known row, if any."""
    for card, row in found:
        device = row.device_for(card) if row else None
        if device:
            return f'set audio.device = "{device}" ({row.name if row else card.id})'
    return None


def check_card(audio: AudioConfig, cards_path: Path = CARDS_PATH) -> Check:
    """Which card ``audio.device`` opens, and which row of firmware.hardware it is.

    FAIL when the device names a card the kernel does not have; WARN for a card
    linetap was not tested with, or one used other than its row says; INFO when the
    device names no card (an ALSA PCM of its own, or ALSA's default card).
    """
    if audio.backend != "alsa":
        return skipped(CHECK_ID, f'audio.backend = "{audio.backend}": no sound card')
    where = f"audio.device {audio.device!r}"
    try:
        found = read_cards(cards_path)
    except OSError as exc:
        return Check(
            CHECK_ID,
            Status.WARN,
            f"cannot read {cards_path} ({exc.strerror or exc}): the card behind {where} is unknown",
            "run 'linetap check' as root or in the audio group",
        )
    named = device_card(audio.device)
    cards = _summary(found) if found else f"none in {cards_path}"
    if named is None:
        return Check(
            CHECK_ID,
            Status.INFO,
            f"{where} names no card (an ALSA PCM of its own, or ALSA's default card);"
            f" sound cards: {cards}",
            _suggestion(found),
        )
    hit = find_card(found, named)
    if hit is None:
        return Check(
            CHECK_ID,
            Status.FAIL,
            f"{where} names card {named!r}, which is not there; sound cards: {cards}",
            _suggestion(found) or _NO_CARD_FIX,
        )
    card, row = hit
    if row is None:
        return Check(
            CHECK_ID,
            Status.WARN,
            f"{where} is {card.describe()}: not a tested capture device",
            f"use a device from the hardware table ({_TABLE}), or check every line with"
            " 'linetap levels' before leaving it in the field",
        )
    found_text = f"{where} is {card.describe()}: {_row_text(row)}"
    wanted = row.device_for(card)
    pcm = audio.device.partition(":")[0]
    if wanted and row.device_why and pcm != wanted.partition(":")[0]:
        return Check(
            CHECK_ID,
            Status.WARN,
            f"{found_text}; opened through {pcm!r}, not {wanted.partition(':')[0]!r},"
            f" which {row.device_why}",
            f'set audio.device = "{wanted}"',
        )
    return Check(CHECK_ID, Status.PASS, found_text)
