"""One FLAC encoder per call, through libFLAC itself (ctypes), frame by frame.

libsndfile (``soundfile``) hides the FLAC frames: it is fine for one whole file, but the
journal needs, every ``journal_sync_s``, the frames encoded so far, and a fresh
libsndfile encoder per second cost about a quarter of sealing. libFLAC's stream encoder
calls back once per metadata block and once per *complete* frame, with the number of
samples in it, so the call's one encoder gives both:

- the journal's records: the frames emitted since the last record (a prefix of records
  is a prefix of one FLAC stream, see :mod:`sealedrec.segments`);
- the recording's stream (codec ``flac``): the same bytes, plus at the end libFLAC's
  rewrite of STREAMINFO (total samples, MD5) through the seek callback.

libFLAC emits a block once it holds ``blocksize + 1`` samples (the extra one tells it the
block is not the stream's last), so the frames lag the input by up to one block: the
journal writer accounts for it (:func:`journal_blocksize`).

libFLAC is Debian's ``libflac`` (libsndfile1 depends on it, so wherever soundfile runs).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

# FLAC's streamable subset allows blocks of at most 4608 samples up to 48 kHz.
SUBSET_MAX_BLOCK = 4608
MIN_BLOCK = 16
DEFAULT_LEVEL = 5  # libsndfile's default too: the recordings keep their size

_WRITE_OK, _WRITE_FATAL = 0, 1
_SEEK_OK, _SEEK_ERROR = 0, 1
_TELL_OK = 0

_WriteCallback = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_ubyte),
    ctypes.c_size_t,
    ctypes.c_uint32,
    ctypes.c_uint32,
    ctypes.c_void_p,
)
_SeekCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p)
_TellCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64), ctypes.c_void_p
)


class FlacError(RuntimeError):
    """libFLAC missing or refusing (a message that names the fix)."""


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("FLAC")
    if name is None:
        raise FlacError(
            "libFLAC not found: install Debian's libflac (libsndfile1, which python3-soundfile"
            " needs, brings it)"
        )
    lib = ctypes.CDLL(name)
    p = ctypes.c_void_p
    u32 = ctypes.c_uint32
    lib.FLAC__stream_encoder_new.restype = p
    lib.FLAC__stream_encoder_delete.argtypes = [p]
    for setter in (
        "channels",
        "bits_per_sample",
        "sample_rate",
        "compression_level",
        "blocksize",
    ):
        fn = getattr(lib, f"FLAC__stream_encoder_set_{setter}")
        fn.argtypes, fn.restype = [p, u32], ctypes.c_int
    for flag in ("verify", "streamable_subset", "do_md5"):
        fn = getattr(lib, f"FLAC__stream_encoder_set_{flag}")
        fn.argtypes, fn.restype = [p, ctypes.c_int], ctypes.c_int
    lib.FLAC__stream_encoder_init_stream.argtypes = [
        p,
        _WriteCallback,
        _SeekCallback,
        _TellCallback,
        p,
        p,
    ]
    lib.FLAC__stream_encoder_init_stream.restype = ctypes.c_int
    lib.FLAC__stream_encoder_process_interleaved.argtypes = [p, p, u32]
    lib.FLAC__stream_encoder_process_interleaved.restype = ctypes.c_int
    lib.FLAC__stream_encoder_finish.argtypes = [p]
    lib.FLAC__stream_encoder_finish.restype = ctypes.c_int
    lib.FLAC__stream_encoder_get_resolved_state_string.argtypes = [p]
    lib.FLAC__stream_encoder_get_resolved_state_string.restype = ctypes.c_char_p
    return lib


@functools.cache
def _library() -> ctypes.CDLL:
    return _load()


def journal_blocksize(sync_frames: int) -> int:
    """The FLAC block for a journal synced every ``sync_frames``: a divisor of it (so
    frames end on sync boundaries), a tenth or less of it (the lag it adds to a sync is
    paid back by syncing that much earlier, see the sealing writer), and within the
    streamable subset."""
    for parts in range(10, sync_frames // MIN_BLOCK + 1):
        if sync_frames % parts == 0 and sync_frames // parts <= SUBSET_MAX_BLOCK:
            return sync_frames // parts
    return MIN_BLOCK


# Called with each appended piece of the stream and its sample count (0: metadata).
AppendSink = Callable[[bytes, int], None]
# Called with a rewrite of earlier bytes at an offset (STREAMINFO at the end).
PatchSink = Callable[[int, bytes], None]


class FlacStreamEncoder:
    """A mono 16-bit FLAC stream, encoded as samples come. Appends go to ``append`` in
    order (whole metadata blocks and whole frames); at :meth:`finish` libFLAC's rewrite
    of STREAMINFO goes to ``patch``. A callback's exception is kept and raised from the
    call that triggered it (a C callback cannot carry it)."""

    def __init__(
        self,
        rate: int,
        blocksize: int,
        append: AppendSink,
        patch: PatchSink,
        *,
        level: int = DEFAULT_LEVEL,
    ) -> None:
        self._lib = lib = _library()
        self._append = append
        self._patch = patch
        self._pos = 0  # where the next write goes
        self._end = 0  # bytes appended so far
        self.error: Exception | None = None
        self.frames_out = 0  # samples in the frames emitted so far
        # Kept referenced: libFLAC holds the raw function pointers.
        self._callbacks = (
            _WriteCallback(self._on_write),
            _SeekCallback(self._on_seek),
            _TellCallback(self._on_tell),
        )
        self._enc: int | None = lib.FLAC__stream_encoder_new()
        if not self._enc:
            raise FlacError("libFLAC: cannot allocate an encoder (out of memory)")
        ok = (
            lib.FLAC__stream_encoder_set_channels(self._enc, 1)
            and lib.FLAC__stream_encoder_set_bits_per_sample(self._enc, 16)
            and lib.FLAC__stream_encoder_set_sample_rate(self._enc, rate)
            and lib.FLAC__stream_encoder_set_compression_level(self._enc, level)
            # After the level: the level sets a blocksize of its own.
            and lib.FLAC__stream_encoder_set_blocksize(self._enc, blocksize)
            and lib.FLAC__stream_encoder_set_streamable_subset(
                self._enc, int(blocksize <= SUBSET_MAX_BLOCK)
            )
            and lib.FLAC__stream_encoder_set_verify(self._enc, 0)
        )
        status = (
            lib.FLAC__stream_encoder_init_stream(self._enc, *self._callbacks, None, None)
            if ok
            else -1
        )
        if status != 0:
            self._raise_kept()
            self._fail(f"cannot start an encoder at {rate} Hz, block {blocksize} (status {status})")

    def _fail(self, what: str) -> None:
        state = self._lib.FLAC__stream_encoder_get_resolved_state_string(self._enc)
        self.close()
        raise FlacError(f"libFLAC: {what}: {state.decode(errors='replace') if state else '?'}")

    # -- libFLAC's callbacks (never raise: a C frame is above them) --------------------
    def _on_write(
        self, _enc: int, buf: ctypes._Pointer[ctypes.c_ubyte], size: int, samples: int,
        _frame: int, _data: int,
    ) -> int:  # fmt: skip
        try:
            data = ctypes.string_at(buf, size)
            if self._pos == self._end:
                self._append(data, samples)
                self._end += size
                self.frames_out += samples
            else:
                self._patch(self._pos, data)
            self._pos += size
            return _WRITE_OK
        except Exception as exc:  # noqa: BLE001 - kept and re-raised in Python
            self.error = self.error or exc
            return _WRITE_FATAL

    def _on_seek(self, _enc: int, offset: int, _data: int) -> int:
        if offset > self._end:
            return _SEEK_ERROR
        self._pos = offset
        return _SEEK_OK

    def _on_tell(self, _enc: int, offset: ctypes._Pointer[ctypes.c_uint64], _data: int) -> int:
        offset[0] = self._pos
        return _TELL_OK

    # -- samples -------------------------------------------------------------------------
    def process(self, samples: npt.NDArray[np.int16]) -> None:
        """Encode mono int16 samples; whole frames reach ``append`` as blocks fill."""
        if self._enc is None:
            raise FlacError("libFLAC: encoder used after finish/close")
        wide = np.ascontiguousarray(samples, dtype=np.int32)
        ok = self._lib.FLAC__stream_encoder_process_interleaved(
            self._enc, wide.ctypes.data, wide.shape[0]
        )
        self._raise_kept()
        if not ok:
            self._fail("encoding failed")

    def finish(self) -> None:
        """Emit the last (short) frame and rewrite STREAMINFO; then the encoder is gone."""
        if self._enc is None:
            return
        ok = self._lib.FLAC__stream_encoder_finish(self._enc)
        self._raise_kept()
        if not ok:
            self._fail("finishing the stream failed")
        self.close()

    def close(self) -> None:
        """Free the encoder without finishing (a discarded call). Idempotent."""
        if self._enc is not None:
            self._lib.FLAC__stream_encoder_delete(self._enc)
            self._enc = None

    def _raise_kept(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            self.close()
            raise error

    def __del__(self) -> None:
        self.close()
