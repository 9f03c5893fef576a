"""The ALSA ``file`` PCM the tests capture from (no sound card needed).

See the docstring of tests/test_audio_capture.py for why ALSA_CONFIG_PATH, not
~/.asoundrc, points alsa-lib at it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from drivers.audio.alsa import AlsaCapture
from drivers.audio.formats import SampleFormat

TAP = "linetap_test_tap"


def period_of(rate: int) -> int:
    return rate // 50  # 20 ms, the config's default period


def _system_alsa_conf() -> str | None:
    for candidate in (Path("/usr/share/alsa/alsa.conf"), Path("/usr/local/share/alsa/alsa.conf")):
        if candidate.is_file():
            return str(candidate)
    return None


@dataclass
class FilePcm:
    """The ``file`` PCM of one test: write ``infile`` (raw bytes) before opening ``name``."""

    name: str
    infile: Path

    def load(self, data: npt.NDArray[np.integer[Any]]) -> None:
        # The file plugin opens the infile at snd_pcm_open(), so each open starts at its
        # beginning and sees what was written last.
        self.infile.write_bytes(data.astype(data.dtype.newbyteorder("<")).tobytes())

    def capture(
        self,
        *,
        rate: int,
        channels: int,
        fmt: SampleFormat = SampleFormat.S16_LE,
        period: int | None = None,
        **kwargs: Any,
    ) -> AlsaCapture:
        return AlsaCapture(
            device=self.name,
            sample_rate=rate,
            channels=channels,
            sample_format=fmt,
            period_frames=period or period_of(rate),
            periods=4,
            **kwargs,
        )


def make_file_pcm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FilePcm:
    infile = tmp_path / "line.raw"
    infile.write_bytes(b"")
    conf = tmp_path / "linetap-test.conf"
    conf.write_text(
        f"pcm.{TAP} {{\n"
        f"    type file\n"
        f"    slave {{ pcm {{ type null }} }}\n"
        f'    file "/dev/null"\n'
        f'    infile "{infile}"\n'
        f'    format "raw"\n'
        f"}}\n"
    )
    system = _system_alsa_conf()
    monkeypatch.setenv("ALSA_CONFIG_PATH", f"{system}:{conf}" if system else str(conf))
    return FilePcm(TAP, infile)


class PacedClock:
    """A monotonic clock that advances one capture period per call. The file PCM plays as
    fast as it is read; with this clock AlsaCapture (which reads the clock once per open
    and per block) stamps its blocks as a real card's would be."""

    def __init__(self, period_ns: int, start_ns: int = 0) -> None:
        self.now = start_ns
        self.period_ns = period_ns

    def __call__(self) -> int:
        self.now += self.period_ns
        return self.now
