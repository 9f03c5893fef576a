"""The hardware table (firmware/hardware.py): its README twin, card matching on real
/proc/asound/cards text, and ``linetap check``'s ``audio.card`` line.

The /proc/asound/cards texts below have the kernel's format (sound/core/init.c:
``"%2i [%-15s]: %s - %s\\n"`` then the long name indented by 22 spaces); the cards are
ones such units show: the Pi 4's two HDMI cards under Debian's kernel, the image's
WM8960 overlay card, a Behringer UMC404HD, and Raspberry Pi OS's wm8960-soundcard.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from firmware.config import AudioConfig
from firmware.hardware import (
    HARDWARE,
    SoundCard,
    alsa_card_id,
    device_card,
    match_card,
    parse_cards,
    read_cards,
    rows_by_id,
)
from firmware.tools import _checks as c
from firmware.tools.check import format_check, run_checks
from tests.alsa_pcm import make_file_pcm

REPO = Path(__file__).resolve().parent.parent
README = REPO / "image" / "README.md"
OVERLAYS = REPO / "image" / "overlays"
FIRMWARE_CUSTOM = REPO / "image" / "rootfs" / "etc" / "default" / "raspi-firmware-custom"

# A Pi 4 on the image with the WM8960 HAT's overlay enabled and a USB interface plugged in.
IMAGE_CARDS = """\
 0 [vc4hdmi0       ]: vc4-hdmi - vc4-hdmi-0
                      vc4-hdmi-0
 1 [vc4hdmi1       ]: vc4-hdmi - vc4-hdmi-1
                      vc4-hdmi-1
 2 [linetap        ]: simple-card - linetap
                      linetap
 3 [U192k          ]: USB-Audio - UMC404HD 192k
                      BEHRINGER UMC404HD 192k at usb-0000:01:00.0-1.4, high speed
"""
# Raspberry Pi OS with its own wm8960-soundcard overlay.
RASPIOS_CARDS = """\
 0 [vc4hdmi0       ]: vc4-hdmi - vc4-hdmi-0
                      vc4-hdmi-0
 1 [vc4hdmi1       ]: vc4-hdmi - vc4-hdmi-1
                      vc4-hdmi-1
 2 [Headphones     ]: bcm2835_headpho - bcm2835 Headphones
                      bcm2835 Headphones
 3 [wm8960soundcard]: simple-card - wm8960-soundcard
                      wm8960-soundcard
"""
NO_CARDS = "--- no soundcards ---\n"


def proc_line(index: int, card_id: str, driver: str, name: str, long_name: str) -> str:
    """A card's two lines, printed as the kernel prints them."""
    return f"{index:2d} [{card_id:<15s}]: {driver} - {name}\n{' ' * 22}{long_name}\n"


def cards_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cards"
    path.write_text(text)
    return path


def alsa(device: str) -> AudioConfig:
    return AudioConfig(backend="alsa", device=device, channels=2)


# -- README table == code table -----------------------------------------------------------


def readme_rows() -> dict[str, dict[str, str]]:
    text = README.read_text()
    section = text[text.index("## 6. Supported capture hardware") :]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows: dict[str, dict[str, str]] = {}
    for line in lines[2:]:
        cells = dict(
            zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True)
        )
        rows[cells["row"].strip("`")] = cells
    return rows


def test_the_readme_table_has_the_code_tables_rows_and_card_names() -> None:
    readme = readme_rows()
    assert list(readme) == [row.id for row in HARDWARE]
    for row in HARDWARE:
        cells = readme[row.id]
        assert cells["device"] == row.name, row.id
        assert cells["system"] == row.system, row.id
        assert cells["inputs"] == row.inputs, row.id
        named = re.findall(r"`([^`]+)`", cells["ALSA card"])
        assert named == [*row.card_ids, *row.drivers], row.id
        if row.drivers:
            assert f"driver `{row.drivers[0]}`" in cells["ALSA card"]
        device = (
            row.device.format(card=row.card_ids[0] if row.card_ids else "<id>")
            if row.device
            else "none"
        )
        assert cells["audio.device"].strip("`") == device, row.id
        overlay = re.findall(r"^`([^`]+)`", cells["overlay"])
        assert overlay == ([row.overlay] if row.overlay else []), row.id


def test_every_image_overlay_has_a_row_a_card_id_and_a_commented_config_line() -> None:
    """The overlay's card name gives the row's ALSA id; config.txt offers its line."""
    custom = FIRMWARE_CUSTOM.read_text()
    image_overlays = {row.overlay: row for row in HARDWARE if row.in_image and row.overlay}
    sources = sorted(OVERLAYS.glob("*.dts"))
    assert [src.stem for src in sources] == sorted(image_overlays)
    for src in sources:
        row = image_overlays[src.stem]
        name = re.search(r'simple-audio-card,name = "([^"]+)"', src.read_text())
        assert name is not None, src
        assert alsa_card_id(name[1]) in row.card_ids
        assert f"\n#dtoverlay={src.stem}\n" in f"\n{custom}"
        device = row.device.format(card=alsa_card_id(name[1])) if row.device else ""
        assert f'device = "{device}"' in custom
    # Only comments: the field tech enables the one HAT fitted.
    assert all(not ln or ln.startswith("#") for ln in custom.splitlines())


# -- ALSA's names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "card_id"),
    [
        ("wm8960-soundcard", "wm8960soundcard"),  # Raspberry Pi OS's overlay
        ("linetap", "linetap"),  # ours
        ("linetap-wm8960", "linetapwm8960"),  # '-' dropped
        ("UMC404HD 192k", "U192k"),  # snd-usb-audio's short name: last word, digit first
        ("Starfive-Multi-Sound-Card", "StarfiveMultiSo"),  # cut to 15
        ("bcm2835 Headphones", "Headphones"),
    ],
)
def test_alsa_card_id_as_the_kernel_makes_it(name: str, card_id: str) -> None:
    assert alsa_card_id(name) == card_id


def test_the_fixtures_are_in_the_kernels_format() -> None:
    assert IMAGE_CARDS.endswith(
        proc_line(
            3,
            "U192k",
            "USB-Audio",
            "UMC404HD 192k",
            "BEHRINGER UMC404HD 192k at usb-0000:01:00.0-1.4, high speed",
        )
    )
    assert (
        proc_line(3, "wm8960soundcard", "simple-card", "wm8960-soundcard", "wm8960-soundcard")
        in RASPIOS_CARDS
    )


@pytest.mark.parametrize(
    ("device", "card"),
    [
        ("hw:CARD=linetap", "linetap"),
        ("hw:CARD=linetap,DEV=0", "linetap"),
        ("plughw:DEV=0,CARD=U192k", "U192k"),
        ("linetap_usb:CARD=U192k,RATE=44100", "U192k"),
        ("linetap_usb:U192k", "U192k"),
        ("hw:2,0", "2"),
        ("plughw:1", "1"),
        ("hw:CARD='U192k'", "U192k"),
        ("default", None),
        ("linetap_usb", None),
        ("sysdefault:DEV=0", None),
    ],
)
def test_the_card_an_alsa_device_names(device: str, card: str | None) -> None:
    assert device_card(device) == card


# -- matching /proc/asound/cards ----------------------------------------------------------


def test_cards_and_their_rows_on_the_image(tmp_path: Path) -> None:
    found = read_cards(cards_file(tmp_path, IMAGE_CARDS))
    rows = rows_by_id()
    assert [(card.index, card.id, row.id if row else None) for card, row in found] == [
        (0, "vc4hdmi0", None),
        (1, "vc4hdmi1", None),
        (2, "linetap", "wm8960-image"),
        (3, "U192k", "usb-audio"),
    ]
    usb = found[3][0]
    assert usb == SoundCard(
        3,
        "U192k",
        "USB-Audio",
        "UMC404HD 192k",
        "BEHRINGER UMC404HD 192k at usb-0000:01:00.0-1.4, high speed",
    )
    assert rows["usb-audio"].device_for(usb) == "linetap_usb:CARD=U192k"


def test_cards_on_raspberry_pi_os_and_none_at_all(tmp_path: Path) -> None:
    found = {card.id: row for card, row in parse_and_match(RASPIOS_CARDS)}
    assert found["wm8960soundcard"] is rows_by_id()["wm8960-raspios"]
    assert found["Headphones"] is None
    assert parse_cards(NO_CARDS) == []
    assert read_cards(tmp_path / "no-such-file") == []


def parse_and_match(text: str) -> list[tuple[SoundCard, object]]:
    return [(card, match_card(card)) for card in parse_cards(text)]


# -- audio.card ---------------------------------------------------------------------------


def test_audio_card_names_the_hat_and_its_row(tmp_path: Path) -> None:
    check = c.check_card(alsa("hw:CARD=linetap"), cards_file(tmp_path, IMAGE_CARDS))
    assert check.status is c.Status.PASS
    assert format_check(check) == [
        "PASS  audio.card     audio.device 'hw:CARD=linetap' is card 2 [linetap]"
        " (simple-card: linetap): WM8960 Audio HAT, linetap image (Debian kernel),"
        " Pi 3/4 (row wm8960-image)"
    ]


def test_audio_card_usb_through_linetap_usb_passes_through_plughw_warns(tmp_path: Path) -> None:
    cards = cards_file(tmp_path, IMAGE_CARDS)
    check = c.check_card(alsa("linetap_usb:CARD=U192k"), cards)
    assert check.status is c.Status.PASS
    assert (
        "is card 3 [U192k] (USB-Audio: UMC404HD 192k): USB Audio Class interface" in check.message
    )
    assert "(row usb-audio)" in check.message
    check = c.check_card(alsa("plughw:CARD=U192k"), cards)
    assert check.status is c.Status.WARN
    assert "opened through 'plughw', not 'linetap_usb'" in check.message
    assert check.fix == 'set audio.device = "linetap_usb:CARD=U192k"'


def test_audio_card_a_missing_card_fails_and_says_what_to_set(tmp_path: Path) -> None:
    # A card that is not fitted, on a unit whose HAT overlay is enabled.
    check = c.check_card(alsa("hw:CARD=Headset"), cards_file(tmp_path, IMAGE_CARDS))
    assert check.status is c.Status.FAIL
    assert check.message.startswith(
        "audio.device 'hw:CARD=Headset' names card 'Headset', which is not there; sound cards:"
        " card 0 [vc4hdmi0] (vc4-hdmi: vc4-hdmi-0): not in the hardware table;"
    )
    assert "card 2 [linetap] (simple-card: linetap): WM8960 Audio HAT" in check.message
    assert check.fix == 'set audio.device = "hw:CARD=linetap" (WM8960 Audio HAT)'
    # No card at all: fit the HAT and enable its overlay.
    check = c.check_card(alsa("hw:CARD=linetap"), cards_file(tmp_path, NO_CARDS))
    assert check.status is c.Status.FAIL
    assert check.message.endswith(f"sound cards: none in {tmp_path / 'cards'}")
    assert check.fix is not None and "dtoverlay=" in check.fix and "config.txt" in check.fix


def test_audio_card_an_unknown_card_is_not_a_tested_capture_device(tmp_path: Path) -> None:
    check = c.check_card(alsa("hw:1"), cards_file(tmp_path, IMAGE_CARDS))
    assert check.status is c.Status.WARN
    assert check.message == (
        "audio.device 'hw:1' is card 1 [vc4hdmi1] (vc4-hdmi: vc4-hdmi-1):"
        " not a tested capture device"
    )
    assert check.fix is not None and "Supported capture hardware" in check.fix


def test_audio_card_no_card_named_and_the_file_backend(tmp_path: Path) -> None:
    check = c.check_card(alsa("default"), cards_file(tmp_path, RASPIOS_CARDS))
    assert check.status is c.Status.INFO
    assert "audio.device 'default' names no card" in check.message
    assert check.fix == 'set audio.device = "hw:CARD=wm8960soundcard" (WM8960 Audio HAT)'
    check = c.check_card(AudioConfig(backend="file", file=tmp_path / "x.wav"), tmp_path / "cards")
    assert check.status is c.Status.SKIP


def test_linetap_check_prints_audio_card_before_audio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through run_checks, on this machine's /proc/asound/cards (whatever it holds): the
    test PCM is a file plugin, which names no card."""
    pcm = make_file_pcm(tmp_path, monkeypatch)
    cfg = tmp_path / "linetap.toml"
    cfg.write_text(
        f'[audio]\nbackend = "alsa"\ndevice = "{pcm.name}"\n'
        f'[storage]\nformat = "wav"\ndata_dir = "{tmp_path / "data"}"\n'
        f'runtime_dir = "{tmp_path / "run"}"\n'
        "[development]\nallow_plain_audio = true\n"
        '[gpio]\nbackend = "sim"\n'
        '[[lines]]\nname = "line1"\nchannel = 0\nhook_pin = 17\n'
    )
    checks = run_checks(cfg, skip=frozenset({"signal", "storage", "keys", "tls", "broker"}))
    ids = [ch.id for ch in checks]
    assert ids.index("audio.card") == ids.index("audio") - 1
    card = checks[ids.index("audio.card")]
    assert card.status is c.Status.INFO
    assert card.message.startswith(f"audio.device '{pcm.name}' names no card")
    skipped = run_checks(cfg, skip=frozenset({"audio", "storage", "keys", "tls", "broker"}))
    assert "audio.card" not in [ch.id for ch in skipped]
