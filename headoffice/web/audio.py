"""In-page playback of sealed recordings: decrypted in RAM, served by HTTP Range, drawn
from server-side peaks.

Plain audio never touches the office's disk. :func:`decrypt_playable` reads the sealed
blob and returns the whole playable file in memory (:class:`PlayableAudio`):

- a FLAC-in-age recording: the decrypted FLAC as it was sealed;
- an Opus recording: the decrypted Ogg Opus as it was sealed;
- a recovered recording (container ``segments``, :mod:`sealedrec.segments`): from a
  version-2 journal the one FLAC stream its records make, as it is; from a version-1
  journal (one FLAC file per record) the records decoded, joined and encoded again as
  one FLAC, in a :class:`io.BytesIO` (libsndfile's virtual I/O: no temp file).

:class:`PlaybackCache` keeps recently played recordings in RAM (bounded by total bytes,
least recently used out first), so the browser's Range requests for one playback do not
decrypt the blob again each time. Authorize and log *before* looking in the cache: it is
keyed by recording id only.

:func:`byte_range` parses a ``Range`` header (RFC 9110 §14.2) and
:func:`range_response_headers` makes the 206 headers. :func:`peaks` and
:func:`peaks_json` give what wavesurfer.js draws without fetching the audio:
``wavesurfer.load(url, data.peaks, data.duration)`` (peaks per channel, duration in
seconds), and ``data.regions`` (the masked DTMF spans) for its Regions plugin.
"""

from __future__ import annotations

import io
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sealedrec.age import AgeError, AgeReader
from sealedrec.errors import LinetapError
from sealedrec.segments import JournalFormatError
from sealedrec.verify import check_blob, decode_audio, decrypt_segments

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "MIME_TYPES",
    "PlayableAudio",
    "PlaybackCache",
    "PlaybackError",
    "RangeNotSatisfiable",
    "byte_range",
    "decrypt_playable",
    "masked_regions",
    "peaks",
    "peaks_json",
    "range_response_headers",
]

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
MIME_TYPES = {"flac": "audio/flac", "opus": "audio/ogg"}
PEAKS_PER_SECOND = 100  # default resolution of :func:`peaks` (one bucket per 10 ms)
MAX_BUCKETS = 100_000  # an hour at 100/s would be 360,000: coarser for long calls


class PlaybackError(LinetapError, ValueError):
    """A recording cannot be played: no audio, an unknown container or codec, a blob
    that differs from its manifest, or one that does not decrypt or decode."""


class RangeNotSatisfiable(LinetapError, ValueError):
    """A ``Range`` none of whose ranges overlaps the file: answer 416 with
    :attr:`headers` (``Content-Range: bytes */size``)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable for a {size}-byte file")
        self.size = size
        self.headers = {"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"}


@dataclass(frozen=True, slots=True)
class PlayableAudio:
    """A complete audio file the browser plays, held in RAM only."""

    data: bytes
    mime: str  # audio/flac or audio/ogg
    sample_rate: int
    duration_s: float

    @property
    def size(self) -> int:
        return len(self.data)

    def samples(self) -> npt.NDArray[np.int16]:
        """The decoded samples (int16; for :func:`peaks`), decoded from RAM."""
        return decode_audio(self.data)


Identities = Sequence[X25519PrivateKey] | X25519PrivateKey


def _identities(identity: Identities) -> Sequence[X25519PrivateKey]:
    return (identity,) if isinstance(identity, X25519PrivateKey) else identity


def _encode_flac(samples: npt.NDArray[np.int16], rate: int) -> bytes:
    buf = io.BytesIO()
    channels = 1 if samples.ndim == 1 else int(samples.shape[1])
    with soundfile.SoundFile(buf, "w", rate, channels, format="FLAC", subtype="PCM_16") as out:
        out.write(samples)
    return buf.getvalue()


def _info(data: bytes) -> tuple[int, float]:
    info = soundfile.info(io.BytesIO(data))
    rate = int(info.samplerate)
    return rate, (float(info.frames) / rate if rate else 0.0)


def decrypt_playable(
    blob_path: Path,
    manifest: Mapping[str, Any],
    identity: Identities,
    *,
    check: bool = True,
) -> PlayableAudio:
    """The recording in ``blob_path`` (as :meth:`BlobStore.local_blob` gives it) as one
    playable file in RAM, decrypted with the office ``identity`` (one key or several).

    With ``check`` the blob is first checked against the (signature-checked) manifest's
    size and SHA-256. Nothing is written to disk. Raises :class:`PlaybackError`."""
    rec = str(manifest.get("recording_id", "?"))
    container = manifest.get("container")
    codec = str(manifest.get("codec") or "flac")
    if container is None:
        raise PlaybackError(f"recording {rec} has no audio (discarded, or cut before any sync)")
    if container not in ("age", "segments") or codec not in MIME_TYPES:
        raise PlaybackError(f"recording {rec}: cannot play container {container!r} / {codec!r}")
    if check and (problems := check_blob(blob_path, manifest, rec)):
        raise PlaybackError(problems[0])
    keys = _identities(identity)
    try:
        if container == "age":
            with open(blob_path, "rb") as fh:
                data = AgeReader(fh, keys).read()
            rate, duration = _info(data)
            return PlayableAudio(data, MIME_TYPES[codec], rate, duration)
        flacs = decrypt_segments(blob_path, keys)
        if len(flacs) == 1:  # one FLAC stream (a version-2 journal): playable as it is
            rate, duration = _info(flacs[0])
            return PlayableAudio(flacs[0], MIME_TYPES["flac"], rate, duration)
        rate = int(manifest.get("sample_rate") or 0)
        parts: list[npt.NDArray[np.int16]] = []
        for flac in flacs:
            rate = soundfile.info(io.BytesIO(flac)).samplerate
            parts.append(decode_audio(flac))
    except (AgeError, JournalFormatError, RuntimeError, OSError) as exc:
        raise PlaybackError(f"recording {rec}: cannot decrypt/decode: {exc}") from exc
    if not parts or rate <= 0:
        raise PlaybackError(f"recording {rec}: the recovered recording holds no audio")
    samples = np.concatenate(parts)
    return PlayableAudio(
        _encode_flac(samples, rate), MIME_TYPES["flac"], rate, samples.shape[0] / rate
    )


class PlaybackCache:
    """Recently played recordings in RAM, at most ``max_bytes`` of audio in all; the least
    recently used go first. A recording larger than the whole budget is not kept.
    Thread-safe; concurrent loads of one recording decrypt it once."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, PlayableAudio] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def ids(self) -> list[str]:
        """Ids from least to most recently used."""
        with self._lock:
            return list(self._items)

    def get(self, key: str) -> PlayableAudio | None:
        with self._lock:
            audio = self._items.get(key)
            if audio is not None:
                self._items.move_to_end(key)
            return audio

    def put(self, key: str, audio: PlayableAudio) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._total -= old.size
            if audio.size > self.max_bytes:
                return
            while self._items and self._total + audio.size > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._total -= evicted.size
            self._items[key] = audio
            self._total += audio.size

    def discard(self, key: str) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._total -= old.size

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._total = 0

    def get_or_load(self, key: str, load: Callable[[], PlayableAudio]) -> PlayableAudio:
        """The cached recording, or ``load()`` it (once, even if asked concurrently) and
        keep it. An exception from ``load`` propagates and nothing is kept."""
        if (audio := self.get(key)) is not None:
            return audio
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        try:
            with gate:
                if (audio := self.get(key)) is not None:
                    return audio
                audio = load()
                self.put(key, audio)
                return audio
        finally:
            with self._lock:
                if self._loading.get(key) is gate and not gate.locked():
                    del self._loading[key]


_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive ``(first, last)`` byte positions a ``Range`` header asks of a
    ``size``-byte file (RFC 9110 §14.1.2, §14.2): ``bytes=a-b`` (``b`` clamped to the
    end), ``bytes=a-`` (to the end), ``bytes=-n`` (the last ``n`` bytes, or all).

    None means "send the whole file (200)": no header, another unit, a syntax error, or
    several ranges (RFC 9110 lets a server ignore Range; browsers' media players ask one).
    :class:`RangeNotSatisfiable` (416) when the one range starts at or after the end,
    or is a suffix of length 0."""
    if header is None:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = [s.strip() for s in spec.split(",") if s.strip()]
    if len(specs) != 1:
        return None
    match = _RANGE_SPEC.fullmatch(specs[0])
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        if not last:
            return None
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - length), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: last-pos before first-pos
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, min(int(last), size - 1) if last else size - 1


def range_response_headers(start: int, end: int, size: int, mime: str) -> dict[str, str]:
    """Headers of a 206 answer carrying bytes ``start``..``end`` (inclusive) of ``size``."""
    return {
        "Content-Range": f"bytes {start}-{end}/{size}",
        "Accept-Ranges": "bytes",
        "Content-Length": str(end - start + 1),
        "Content-Type": mime,
    }


def peaks(samples: npt.NDArray[Any], sample_rate: int, buckets: int | None = None) -> list[float]:
    """Min/max peaks for a waveform: ``[max0, min0, max1, min1, …]`` in [-1, 1], one pair
    per bucket (the layout wavesurfer.js draws from). ``buckets`` defaults to
    :data:`PEAKS_PER_SECOND` per second of audio (at most :data:`MAX_BUCKETS`); fewer
    samples than buckets give one bucket per sample. Buckets cover the samples evenly
    (edges at ``i * n // buckets``), so bucket i starts at ``i / buckets`` of the duration.

    ``samples``: 1-D int16 (scaled by 1/32768) or float (clipped to [-1, 1]); a 2-D
    array is mixed to mono by the per-frame extreme of its channels. Vectorised."""
    x = np.asarray(samples)
    if x.ndim == 2:
        x = np.where(np.abs(x.max(axis=1)) >= np.abs(x.min(axis=1)), x.max(axis=1), x.min(axis=1))
    if x.ndim != 1:
        raise ValueError("samples must be 1-D (or 2-D frames x channels)")
    n = int(x.shape[0])
    if buckets is None:
        buckets = max(1, min(MAX_BUCKETS, round(n * PEAKS_PER_SECOND / sample_rate)))
    if buckets < 1:
        raise ValueError("buckets must be >= 1")
    if n == 0:
        return []
    buckets = min(buckets, n)
    edges = (np.arange(buckets, dtype=np.int64) * n) // buckets
    # Bucket in the samples' own type, then scale only the bucket extremes: a float copy
    # of a 60-minute call would cost 115 MB of RAM for nothing (bench/web_playback.py).
    highs = np.maximum.reduceat(x, edges).astype(np.float64)
    lows = np.minimum.reduceat(x, edges).astype(np.float64)
    if np.issubdtype(x.dtype, np.integer):
        highs, lows = highs / 32768.0, lows / 32768.0
    else:
        highs, lows = np.clip(highs, -1.0, 1.0), np.clip(lows, -1.0, 1.0)
    pairs = np.round(np.stack([highs, lows], axis=1).ravel(), 4)
    return [float(v) for v in pairs.tolist()]


def masked_regions(masked_spans: Iterable[Mapping[str, Any]]) -> list[dict[str, float]]:
    """A manifest's ``masked_spans`` (``start_ms``/``end_ms`` from the recording's
    start) as wavesurfer regions in seconds: ``[{"start": s, "end": s}, …]``."""
    regions = []
    for span in masked_spans:
        start, end = int(span["start_ms"]), int(span["end_ms"])
        if end > start >= 0:
            regions.append({"start": start / 1000, "end": end / 1000})
    return regions


def peaks_json(
    samples: npt.NDArray[Any],
    sample_rate: int,
    buckets: int | None = None,
    masked_spans: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """``{"peaks": [[…]], "duration": s, "regions": [{"start": s, "end": s}, …]}``:
    ``wavesurfer.load(url, peaks, duration)`` takes the first two as they are (one list
    per channel; here one, mono), the regions go to the Regions plugin."""
    x = np.asarray(samples)
    frames = int(x.shape[0]) if x.ndim else 0
    return {
        "peaks": [peaks(x, sample_rate, buckets)],
        "duration": frames / sample_rate if sample_rate else 0.0,
        "regions": masked_regions(masked_spans),
    }
