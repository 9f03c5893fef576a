"""Sealing real-time factor: audio seconds sealed per CPU second, FLAC and Ogg Opus.

Drives a :class:`firmware.sealwriter.SealingWriter` directly, the way the recorder does:
``SealingSink.open(RecordingStart)``, then the audio in 160-frame periods (20 ms at
8 kHz mono) with one ``SealingSink.poll()`` per period, then ``close(RecordingEnd)``
and more polls until the sink has sealed it: finished the age stream, written the
signed manifest and moved the recording into a (temporary) outbox. The figure is
process CPU time (``time.process_time``) from open until the recording is in the
outbox; median of ``--repeats`` runs after one warm-up run.

Our sink does more than encode and encrypt: it also keeps the power-safe journal, i.e.
about every ``journal_sync_s`` of audio (default 1.0 s) the FLAC frames encoded since
the last record are sealed as an age file of their own (one file key and header per
call, a fresh payload nonce per record) and fsynced (see firmware/sealwriter.py); that
work is included. For FLAC the stream and the journal share the call's one encoder.

Peers, on the same audio (a WAV file) in the same run: ``flac -s -c in.wav | age -r R``
and ``opusenc --bitrate 16 --quiet in.wav - | age -r R`` (Popen chain, no shell); their
CPU is ``getrusage(RUSAGE_CHILDREN)`` user+system, so it includes the start-up of both
processes. They keep no journal, write no manifest and fsync nothing.

The audio is ~60 s of speech: English sentences spoken by espeak-ng in a few voices,
band-limited to the telephone band and resampled to 8 kHz mono 16-bit by sox, with
pauses and a little line noise. It is cached in ``$TMPDIR/linetap-bench/`` (keyed by
its parameters; ``--fresh-audio`` rebuilds it); everything else lives in a temporary
directory removed at exit.

With ``--vs-head`` it measures instead our tree against HEAD's (bench/head_compare.py):
bench/sealing_worker.py in fresh processes, alternating the trees, ``--repeats`` per
side, each warming up with one call and then sealing one call of the sample (FLAC);
start-up is excluded on both sides alike. It prints CPU real-time factors (min and
median) and the bytes the sealing path writes per call-hour (write(2) bytes, and bytes
sent to the disk: run it where the data partition would be, ``--dir``). It also times
the journal's own work in this process, interleaved (bench/journal_cost.py): a FLAC
encoder per second's segment (the way before) against the call's one encoder.

Run: .venv/bin/python bench/sealing_rtf.py [--seconds 60] [--repeats 5] [--profile]
     .venv/bin/python bench/sealing_rtf.py --vs-head [--repeats 7] [--dir /var/tmp]
         [--ours-tree DIR]   (e.g. HEAD's tree with only some files changed)
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile
from bench_common import children_cpu_s, print_table_header, pstats_table
from head_compare import REPO, head_tree, min_median, run_worker

from buffers.outbox import Outbox

try:
    from firmware.config import IDLE_PERIOD_MS
except ImportError:  # a compared tree from before the 100 ms default: feed it alike
    IDLE_PERIOD_MS = 100
from firmware.sealing import ChainState, Codec, SealingSettings, SealingSink
from firmware.sinks import RecordingEnd, RecordingStart, RecordingWriter
from sealedrec.age import format_recipient, generate_identity
from sealedrec.keys import create_device_key
from sealedrec.manifest import BLOB_AGE

RATE = 8000
PERIOD = RATE * IDLE_PERIOD_MS // 1000  # the recorder's default capture period
OPUS_BPS = 16_000
JOURNAL_SYNC_S = 1.0  # SealingSettings' (and the config's) default
CODECS: tuple[Codec, ...] = ("flac", "opus")
MAX_DRAIN_POLLS = 1_000_000
CACHE_DIR = Path(tempfile.gettempdir()) / "linetap-bench"
FIXED_UTC = "2024-01-01T00:00:00Z"  # no check compares a call's start and end times

# A support call, roughly; two speakers alternate (voice, words per minute, pitch).
SENTENCES = (
    "Good morning, you are through to the linetap support desk. My name is Sam.",
    "Hi Sam. The recorder in our Leeds branch has a red light that keeps blinking.",
    "I see. Is it a slow blink, about once a second, or a fast flicker?",
    "It is slow. It started this morning after the power cut in the building.",
    "That is expected. After a power cut the device seals the calls it was recording.",
    "So nothing was lost? We had three calls going on when the lights went out.",
    "Every second of audio is written to the journal, so at most one second is missing.",
    "Right. And the head office will still get them, with the usual signature?",
    "Yes. Each recording carries a signed manifest and the next sequence number.",
    "Brilliant. Can you tell me why the light is still blinking, though?",
    "The uploader is waiting for the network. Could you check the cable on port two?",
    "Hang on, let me have a look. Oh, it was unplugged. I have put it back now.",
    "Thank you. The light should turn green within a minute or so.",
    "It is green. Lovely, thank you so much for your help this morning.",
    "You are welcome. Is there anything else I can help you with today?",
    "No, that is everything. Have a good day. Goodbye.",
)
VOICES = (("en-gb", 160, 40), ("en-us", 150, 60))
PAUSES_S = (0.35, 0.6, 0.9, 0.5)
NOISE_RMS = 40.0  # line noise, about -58 dBFS
SPEECH_PEAK_DB = -6  # each sentence normalised to this peak


# --------------------------------------------------------------------------- audio


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def speech_wav(seconds: int, *, fresh: bool = False) -> Path:
    """8 kHz mono 16-bit WAV of ``seconds`` of speech (built once, then cached)."""
    key = hashlib.sha256(
        repr((SENTENCES, VOICES, PAUSES_S, NOISE_RMS, SPEECH_PEAK_DB, RATE, seconds)).encode()
    ).hexdigest()[:12]
    path = CACHE_DIR / f"speech-{seconds}s-{RATE}Hz-{key}.wav"
    if path.exists() and not fresh:
        return path
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed to make the speech sample (apt install espeak-ng sox)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="linetap-speech-") as tmp_name:
        tmp = Path(tmp_name)
        parts: list[npt.NDArray[np.int16]] = []
        for n, text in enumerate(SENTENCES):
            voice, wpm, pitch = VOICES[n % len(VOICES)]
            raw, tel = tmp / f"s{n}.wav", tmp / f"t{n}.wav"
            _run(["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", str(raw), text])
            # Telephone band, peak-normalised, then sox's own resampler down to 8 kHz.
            effects = ["highpass", "300", "lowpass", "3400", "gain", "-n", str(SPEECH_PEAK_DB)]
            _run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(tel), *effects])
            data, rate = soundfile.read(tel, dtype="int16")
            if rate != RATE:
                raise RuntimeError(f"sox wrote {rate} Hz, expected {RATE}")
            parts.append(np.asarray(data, dtype=np.int16))
        target = seconds * RATE
        chunks: list[npt.NDArray[np.int16]] = []
        total, n = 0, 0
        while total < target:  # the conversation again if it is shorter than asked for
            pause = np.zeros(round(PAUSES_S[n % len(PAUSES_S)] * RATE), dtype=np.int16)
            for piece in (parts[n % len(parts)], pause):
                chunks.append(piece)
                total += piece.size
            n += 1
        speech = np.concatenate(chunks)[:target].astype(np.float64)
        noise = np.random.default_rng(8000).normal(0.0, NOISE_RMS, target)
        mixed = np.clip(np.rint(speech + noise), -32768, 32767).astype(np.int16)
        staged = tmp / "speech.wav"
        soundfile.write(staged, mixed, RATE, subtype="PCM_16", format="WAV")
        shutil.move(staged, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
    return path


def load_audio(path: Path) -> npt.NDArray[np.int16]:
    data, rate = soundfile.read(path, dtype="int16")
    if rate != RATE:
        raise RuntimeError(f"{path}: {rate} Hz, expected {RATE}")
    return np.ascontiguousarray(data, dtype=np.int16)


# --------------------------------------------------------------------------- ours


def make_sink(root: Path, codec: Codec, *, journal_sync_s: float = JOURNAL_SYNC_S) -> SealingSink:
    """A SealingSink under ``root`` with a fresh device key and office identity."""
    device_key = create_device_key(root / "keys" / "device.pem")
    office = generate_identity()
    settings = SealingSettings(
        recipients=(office.public_key(),),
        codec=codec,
        opus_bitrate=OPUS_BPS,
        journal_sync_s=journal_sync_s,
    )
    return SealingSink(
        settings,
        journal_root=root / "journal",
        outbox=Outbox(root / "outbox"),
        chain=ChainState(root / "chain.json"),
        device_key=device_key,
    )


@dataclass(frozen=True)
class SealRun:
    cpu_s: float
    wall_s: float
    sealed_bytes: int  # recording.age in the outbox


def recording_start(
    rec_id: str,
    *,
    device_id: str = "bench",
    started_utc: str = FIXED_UTC,
    preroll_s: float = 0.0,
) -> RecordingStart:
    """An off-hook call on line 1 from frame 0 (its pre-roll before the off-hook edge)."""
    return RecordingStart(
        recording_id=rec_id,
        device_id=device_id,
        line="line1",
        channel=0,
        sample_rate=RATE,
        trigger="offhook",
        started_utc=started_utc,
        start_frame=0,
        trigger_frame=round(preroll_s * RATE),
        preroll_s=preroll_s,
    )


def recording_end(frames: int, *, ended_utc: str = FIXED_UTC) -> RecordingEnd:
    """The on-hook end of a call of ``frames`` frames from frame 0."""
    return RecordingEnd(
        reason="onhook",
        ended_utc=ended_utc,
        end_frame=frames,
        duration_s=frames / RATE,
        audio_frames=frames,
    )


def write_periods(sink: SealingSink, writer: RecordingWriter, audio: npt.NDArray[np.int16]) -> None:
    """``audio`` into an open recording period by period, a sink poll after each."""
    for at in range(0, int(audio.shape[0]), PERIOD):
        writer.write(audio[at : at + PERIOD])
        sink.poll()  # the recorder polls its sink once per capture period


def drain(sink: SealingSink) -> int:
    """Poll until every ended recording is sealed, as the recorder's next periods would.

    Returns the number of polls (capture periods) that took; the sink may seal in slices.
    """
    polls = 0
    while sink.pending:
        sink.poll()
        polls += 1
        if polls > MAX_DRAIN_POLLS:
            raise RuntimeError(f"sealing not done after {polls} polls (disk full?)")
    return polls


def seal_call(sink: SealingSink, audio: npt.NDArray[np.int16], rec_id: str) -> SealRun:
    """One recording through the sink, written period by period like the recorder does."""
    frames = int(audio.shape[0])
    start, end = recording_start(rec_id), recording_end(frames)
    w0, c0 = time.monotonic(), time.process_time()
    writer = sink.open(start)
    write_periods(sink, writer, audio)
    writer.close(end)
    drain(sink)
    cpu, wall = time.process_time() - c0, time.monotonic() - w0
    entry = sink.outbox.find(rec_id)
    if entry is None:
        raise RuntimeError(f"{rec_id}: not in the outbox after close")
    return SealRun(cpu, wall, (entry.path / BLOB_AGE).stat().st_size)


def profile_call(sink: SealingSink, audio: npt.NDArray[np.int16], rec_id: str, top: int) -> str:
    """pstats of one sealed call, CPU-time clock, sorted by own time."""
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    seal_call(sink, audio, rec_id)
    prof.disable()
    return pstats_table(prof, top)


# --------------------------------------------------------------------------- peers


def peer_cmd(codec: Codec, wav: Path) -> list[str] | None:
    if codec == "flac":
        tool = shutil.which("flac")
        return [tool, "-s", "-c", str(wav)] if tool else None
    tool = shutil.which("opusenc")
    return [tool, "--bitrate", str(OPUS_BPS // 1000), "--quiet", str(wav), "-"] if tool else None


def run_peer(encoder: list[str], age_tool: str, recipient: str, out: Path) -> float:
    """CPU seconds of ``encoder | age -r recipient > out`` (both waited for).

    stderr goes to a file, shown only on failure: ``flac -c`` always warns that it cannot
    write back the MD5 sum and seek points to a pipe.
    """
    errlog = out.with_suffix(".stderr")
    before = children_cpu_s()
    with out.open("wb") as sink, errlog.open("w+b") as err:
        enc = subprocess.Popen(encoder, stdout=subprocess.PIPE, stderr=err)
        assert enc.stdout is not None
        age = subprocess.Popen(
            [age_tool, "-r", recipient], stdin=enc.stdout, stdout=sink, stderr=err
        )
        enc.stdout.close()  # age holds the read end; the encoder sees EPIPE if age dies
        rc_age, rc_enc = age.wait(), enc.wait()
        cpu = children_cpu_s() - before
        if rc_enc or rc_age:
            err.seek(0)
            raise RuntimeError(
                f"peer pipeline failed: {encoder[0]} rc={rc_enc}, age rc={rc_age}: "
                + err.read().decode(errors="replace").strip()
            )
    return cpu


# --------------------------------------------------------------------------- main


@dataclass(frozen=True)
class Row:
    codec: Codec
    ours_rtf: float
    ours_wall_rtf: float
    ours_bytes: int
    peer_rtf: float | None
    peer_startup_cpu_s: float | None
    peer_bytes: int | None
    profile: str | None


def per_minute(size: int, seconds: float) -> float:
    return size * 60 / seconds


def measure(codec: Codec, tmp: Path, wav: Path, repeats: int, *, profile: bool) -> Row:
    """Ours and the peer, interleaved (so drift hits both alike), each after a warm-up."""
    audio = load_audio(wav)
    audio_s = audio.shape[0] / RATE
    sink = make_sink(tmp / codec, codec)
    recipient = format_recipient(sink.settings.recipients[0])
    age_tool = shutil.which("age")
    encoder = peer_cmd(codec, wav)
    tiny = tmp / "20ms.wav"  # peer start-up: the same pipeline on one period of silence
    soundfile.write(tiny, np.zeros(PERIOD, dtype=np.int16), RATE, subtype="PCM_16")
    tiny_encoder = peer_cmd(codec, tiny)
    peer_out = tmp / f"peer-{codec}.age"
    ours: list[SealRun] = []
    peer_cpu: list[float] = []
    peer_start: list[float] = []
    seal_call(sink, audio, f"warmup-{codec}")
    if encoder and tiny_encoder and age_tool:
        run_peer(encoder, age_tool, recipient, peer_out)
    for n in range(repeats):
        ours.append(seal_call(sink, audio, f"bench-{codec}-{n}"))
        if encoder and tiny_encoder and age_tool:
            peer_cpu.append(run_peer(encoder, age_tool, recipient, peer_out))
            peer_start.append(run_peer(tiny_encoder, age_tool, recipient, tmp / "tiny.age"))
    have_peer = bool(peer_cpu)
    return Row(
        codec=codec,
        ours_rtf=audio_s / statistics.median(r.cpu_s for r in ours),
        ours_wall_rtf=audio_s / statistics.median(r.wall_s for r in ours),
        ours_bytes=ours[-1].sealed_bytes,
        peer_rtf=audio_s / max(statistics.median(peer_cpu), 1e-6) if have_peer else None,
        peer_startup_cpu_s=statistics.median(peer_start) if have_peer else None,
        peer_bytes=peer_out.stat().st_size if have_peer else None,
        profile=profile_call(sink, audio, f"profile-{codec}", 10) if profile else None,
    )


def report(rows: list[Row], wav: Path, audio_s: float, repeats: int, wall: float) -> None:
    print(
        f"sealing real-time factor (audio s / CPU s): {RATE} Hz mono S16, {audio_s:.0f} s of "
        f"speech per call, written in {PERIOD}-frame periods, median of {repeats}"
    )
    print(f"audio: {wav}")
    print_table_header(
        f"{'codec':<11}  {'ours RTF':>9}  {'peer RTF':>9}  {'ours/peer':>9}  "
        f"{'ours B/min':>11}  {'peer B/min':>11}  {'ours wall RTF':>13}  {'peer start-up':>13}"
    )
    for r in rows:
        label = "flac" if r.codec == "flac" else f"opus {OPUS_BPS // 1000}k"
        peer = f"{r.peer_rtf:,.0f}" if r.peer_rtf else "n/a"
        ratio = f"{r.ours_rtf / r.peer_rtf:.2f}" if r.peer_rtf else "n/a"
        peer_b = f"{per_minute(r.peer_bytes, audio_s):,.0f}" if r.peer_bytes else "n/a"
        start = f"{r.peer_startup_cpu_s * 1000:.1f} ms" if r.peer_startup_cpu_s else "n/a"
        print(
            f"{label:<11}  {r.ours_rtf:>9,.0f}  {peer:>9}  {ratio:>9}  "
            f"{per_minute(r.ours_bytes, audio_s):>11,.0f}  {peer_b:>11}  "
            f"{r.ours_wall_rtf:>13,.0f}  {start:>13}"
        )
    if shutil.which("age") is None:
        print("age not found (apt install age): no peer measurement")
    for codec in CODECS:
        if peer_cmd(codec, wav) is None:
            tool = "flac" if codec == "flac" else "opusenc (package opus-tools)"
            print(f"{tool} not found: no {codec} peer")
    print(
        "ours = SealingSink from open until the recording is in the outbox (a sink poll per "
        "period, close, polls until sealed): encoder -> age stream, PLUS the power-safe journal "
        f"(journal_sync_s={JOURNAL_SYNC_S}: the frames of about each second in their own age "
        "file, one file key per call, fsynced), the signed manifest and the move into the outbox; process CPU time. "
        "ours wall RTF = the same runs by the wall clock (fsyncs included). "
        "peer = `flac -s -c in.wav | age -r R` / "
        f"`opusenc --bitrate {OPUS_BPS // 1000} --quiet in.wav - | age -r R`, CPU of both "
        "processes (start-up included; 'peer start-up' = the same pipeline on a 20 ms file). "
        "B/min = bytes of the age file per minute of audio (ours: recording.age in the "
        "outbox; the flac CLI's includes its default 8 KiB PADDING block and seek table). "
        f"Total {wall:.1f} s wall."
    )
    for r in rows:
        if r.profile:
            print(f"\ncProfile of one {r.codec} call (CPU clock, top 10 by own time):")
            print(r.profile)


# --------------------------------------------------------------------------- vs HEAD

WORKER = Path(__file__).resolve().parent / "sealing_worker.py"
JOURNAL_WORKER = Path(__file__).resolve().parent / "journal_cost.py"
HOUR_S = 3600


def vs_head(wav: Path, repeats: int, data_dir: Path, ours_tree: Path) -> None:
    head = head_tree()
    args = ["--audio", str(wav), "--calls", "1", "--dir", str(data_dir)]
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "HEAD": []}
    wall = time.monotonic()
    for n in range(repeats):
        sides = [("ours", ours_tree), ("HEAD", head)]
        for name, tree in sides if n % 2 == 0 else sides[::-1]:
            runs[name].append(run_worker(WORKER, tree, args))
    journal = run_worker(JOURNAL_WORKER, REPO, ["--audio", str(wav), "--rounds", str(repeats)])
    journal_head, journal_ours = journal["head_s"], journal["ours_s"]
    wall = time.monotonic() - wall
    audio_s = float(runs["ours"][0]["audio_s"])
    print(
        f"sealing, ours ({ours_tree}) vs HEAD ({head}): FLAC, {audio_s:.0f} s of speech per call, "
        f"{repeats} worker runs per side, interleaved; data dir under {data_dir}"
    )
    print_table_header(
        f"{'side':<5}  {'RTF min':>8}  {'RTF med':>8}  {'write(2) MB/call-h':>18}  "
        f"{'to disk MB/call-h min':>21}  {'to disk med':>11}"
    )
    medians: dict[str, tuple[float, float, float]] = {}
    for name, results in runs.items():
        cpu = [r["cpu_s"][0] for r in results]
        wchar = [r["wchar"][0] * HOUR_S / audio_s / 1e6 for r in results]
        disk = [r["write_bytes"][0] * HOUR_S / audio_s / 1e6 for r in results]
        best, med = min_median(cpu)
        disk_min, disk_med = min_median(disk)
        medians[name] = (med, statistics.median(wchar), disk_med)
        print(
            f"{name:<5}  {audio_s / best:>8,.0f}  {audio_s / med:>8,.0f}  "
            f"{statistics.median(wchar):>18,.2f}  {disk_min:>21,.2f}  {disk_med:>11,.2f}"
        )
    ours_m, head_m = medians["ours"], medians["HEAD"]
    print(
        f"ours/HEAD: speed {head_m[0] / ours_m[0]:.2f}x (median CPU), write(2) bytes "
        f"{ours_m[1] / head_m[1]:.3f}x, disk bytes {ours_m[2] / head_m[2]:.3f}x"
    )
    jh, jo = min_median(journal_head), min_median(journal_ours)
    print(
        f"journal per second of audio (FLAC + age seal + record), one process, {repeats} "
        f"interleaved rounds: an encoder per second min {jh[0] * 1e6:.0f} / med "
        f"{jh[1] * 1e6:.0f} us, one encoder per call min {jo[0] * 1e6:.0f} / med "
        f"{jo[1] * 1e6:.0f} us: {jh[1] / jo[1]:.2f}x; journal bytes "
        f"{journal['ours_bytes'] / journal['head_bytes']:.3f}x"
    )
    print(
        "RTF = audio s / CPU s of one sealed call (open to in the outbox), in a worker "
        "after a warm-up call; worker start-up and imports excluded on both sides. "
        "write(2) = /proc/self/io wchar; to disk = write_bytes - cancelled_write_bytes "
        "(pages the journal's per-second fsync rewrites count each time). 'ours' is the "
        "whole tree given (--ours-tree, default the working tree: other work in progress "
        "included). "
        f"Total {wall:.1f} s wall."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=60, help="audio per call (default 60)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per cell (median)")
    parser.add_argument("--fresh-audio", action="store_true", help="rebuild the speech sample")
    parser.add_argument(
        "--profile", action="store_true", help="also print a cProfile (top 10) of our path"
    )
    parser.add_argument("--vs-head", action="store_true", help="ours against HEAD's tree")
    parser.add_argument(
        "--dir", type=Path, default=Path(tempfile.gettempdir()), help="data dir (--vs-head)"
    )
    parser.add_argument(
        "--ours-tree", type=Path, default=REPO, help="the tree --vs-head calls ours"
    )
    args = parser.parse_args(argv)
    wav = speech_wav(args.seconds, fresh=args.fresh_audio)
    if args.vs_head:
        vs_head(wav, args.repeats, args.dir, args.ours_tree)
        return 0
    wall = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="linetap-bench-") as tmp:
        rows = [measure(c, Path(tmp), wav, args.repeats, profile=args.profile) for c in CODECS]
    wall = time.monotonic() - wall
    report(rows, wav, soundfile.info(str(wav)).duration, args.repeats, wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
