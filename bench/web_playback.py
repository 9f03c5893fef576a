"""Playback figures of the head-office web review (issue 16): time to the first audio
byte, to the peaks and to a drawn waveform for a 60-minute recording, and the web
process's RSS.

The office is real, built as tests/test_web_playback.py:build_sealed_office builds its
own (and with its helpers): ``linetap-office init``'s layout, one call of ``--minutes``
(default 60) at 8 kHz mono sealed by ``linetap replay --format sealed`` (FLAC in age, the
device's default), received message by message by the real Receiver. The call is made
of signals nobody here wrote: espeak-ng phrases at varied levels and pauses, a card
number keyed as DTMF (masked spans), hold silences, line noise and mains hum. The office
is kept under ``--workdir`` (default: a temp dir, removed after) so that a rerun skips
building.

Ours is a real ``linetap-office web`` process over HTTP on localhost (httpx with a
keep-alive connection, signed in as a reviewer). Its playback cache (decrypted audio and
peaks in RAM) is cold only in a fresh process, so every cold figure gets a fresh server
per repetition: server A answers ``GET /recordings/{id}/audio`` with ``Range: bytes=0-``
(as a media element asks), first cold then warm; server B ``GET .../peaks``, cold then
warm; server C the recording page in Chromium (Playwright, Debian's /usr/bin/chromium),
timed from ``page.goto`` until the waveform canvas has painted pixels (CANVAS_STATS of
tests/test_web_browser.py), cold then warm, then the whole audio as well. The RSS
figures: VmRSS of a fresh server having answered /login, and VmHWM (peak RSS) of each
server after its work.

The peer does the same decryption with the reference tools, timed from process spawn
(so its start-up counts; the "process start-up" row shows what that is on both sides,
ours being already up when timed): ``age -d -i office.key blob`` to its first output byte
and to its end; for the peaks, ``age -d | flac -d`` to raw PCM read by this process, then
the same min/max buckets with numpy and the JSON text. The peer has no cache: its runs
stand against both our cold and warm figures. There is no peer for the drawn waveform
(a page is ours only) nor for the RSS. Each repetition interleaves ours and the peer,
in alternating order; min and median of ``--reps``; the ratio is peer / ours
(medians: above 1, ours is faster). One untimed round first checks that both sides give
the same FLAC bytes and peaks, and warms the OS page cache for both.

    .venv/bin/python bench/web_playback.py [--minutes 60] [--reps 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import soundfile
from bench_common import print_table_header, proc_status_kib
from playwright.sync_api import Browser, Page, sync_playwright

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# tests.test_web_playback imports FastAPI's TestClient, whose import warns; not used here.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

from headoffice import enroll  # noqa: E402 - after the path (run as a script)
from headoffice.authz import Role, Scope  # noqa: E402
from headoffice.config import OfficeConfig  # noqa: E402
from headoffice.index import open_index  # noqa: E402
from headoffice.officeroot import CaLayout  # noqa: E402
from headoffice.receiver import Receiver  # noqa: E402
from headoffice.store import FileBlobStore  # noqa: E402
from sealedrec.keys import load_device_key  # noqa: E402
from tests.conftest import VENV_BIN  # noqa: E402
from tests.dtmf_signals import dial  # noqa: E402
from tests.helpers import RATE, espeak_word  # noqa: E402
from tests.office_accounts import CHEAP, Login, add_account  # noqa: E402
from tests.test_web import csrf_of, free_port  # noqa: E402
from tests.test_web_browser import CANVAS_STATS, CHROMIUM, office_toml  # noqa: E402
from tests.test_web_playback import DEVICE, SealedOffice, receive, replay_sealed  # noqa: E402

STATE = "bench-state.json"  # what a cached build holds (see BuiltOffice)
STATE_VERSION = 2  # bumped whenever call_audio or the build changes
PHRASES = (
    "good morning, thank you for calling, how can I help you",
    "I would like to ask about my last invoice",
    "let me check that for you, one moment please",
    "the amount was charged twice on the fourth of march",
    "could you confirm your customer number please",
    "yes of course, it is four five nine two seven",
    "I am sorry for the inconvenience, I will correct that today",
    "is there anything else I can help you with",
)
CARD = "4111111111111111"  # keyed in at CARD_AT_S: masked DTMF spans, as in a real call
CARD_AT_S = 20
# The waveform is drawn: painted pixels of differing colours on the canvas.
DRAWN = (
    "() => { const p = document.querySelector('#player'); if (!p) return false;"
    f" const s = ({CANVAS_STATS.strip()})(p);"
    " return s.canvases >= 1 && s.painted > 1000 && s.levels >= 2; }"
)


# -------------------------------------------------------------------------- the office
def call_audio(minutes: float, seed: int = 16) -> npt.NDArray[np.int16]:
    """``minutes`` of a call plus 1 s: talk (espeak-ng phrases at varied levels with
    pauses), a card number keyed at 20 s, a few silent holds, line noise and hum."""
    rng = np.random.default_rng(seed)
    voices = [espeak_word(text, RATE).astype(np.float32) for text in PHRASES]
    total = int((minutes * 60 + 1) * RATE)
    line = np.zeros(total, dtype=np.float32)
    pos = RATE  # the call goes off-hook at 1 s
    while pos < total:
        if rng.random() < 0.01:
            pos += int(rng.uniform(10, 40) * RATE)  # on hold
            continue
        voice = voices[int(rng.integers(len(voices)))] * rng.uniform(0.1, 0.5)
        end = min(total, pos + voice.size)
        line[pos:end] += voice[: end - pos]
        pos = end + int(rng.uniform(0.2, 1.5) * RATE)
    tones, _spans = dial(CARD, RATE, on_s=0.08, off_s=0.08)
    line[CARD_AT_S * RATE : CARD_AT_S * RATE + tones.size] = tones
    line += rng.standard_normal(total, dtype=np.float32) * 60  # about -55 dBFS
    line += 30 * np.sin(2 * np.pi * 50 * np.arange(total, dtype=np.float32) / RATE)
    return np.clip(line, -32768, 32767).astype(np.int16)


@dataclass(frozen=True)
class BuiltOffice:
    """A cached office: where it is and what the bench needs of it."""

    root: Path
    recipient: str
    rec: str

    @property
    def key(self) -> Path:
        return CaLayout(self.root).office_key

    def sealed(self) -> SealedOffice:
        """The tests' model of the office (what their web-server helpers take); its
        index is open: close it."""
        cfg = OfficeConfig(root=self.root, accounts=CHEAP)
        index = open_index(cfg.index_url)
        record = index.get(self.rec)
        if record is None:
            index.close()
            raise SystemExit(f"web_playback: recording {self.rec} is not in {self.root}")
        rita, olga, aud = (Login(name) for name in ("rita", "olga", "aud"))
        store = FileBlobStore(self.root)
        return SealedOffice(self.root, self.recipient, cfg, index, store, record.manifest, rita, olga, aud)  # fmt: skip


def build_office(work: Path, minutes: float) -> BuiltOffice:
    """As tests/test_web_playback.py:build_sealed_office, with the call of
    :func:`call_audio` instead of the sample call; prints how long each step took."""
    t0 = time.perf_counter()
    setup = enroll.init_ca(work / "office", "Bench Office")
    audio, events = work / "call.wav", work / "call.events"
    soundfile.write(audio, call_audio(minutes), RATE, subtype="PCM_16")
    # Off-hook at 1 s (all of it pre-roll), on-hook 1 s before the end: the recorder
    # waits out flash_max_ms (1 s) before the call ends, so the recording is `minutes`.
    events.write_text(f"1 line1 offhook\n{minutes * 60 - 1:.3f} line1 onhook\n")
    t1 = time.perf_counter()
    try:
        entry = replay_sealed(work, DEVICE, setup.recipient, audio, events)
    except subprocess.TimeoutExpired:
        raise SystemExit(
            "web_playback: linetap replay took over the 120 s that tests/test_web_playback.py"
            " gives it (a busy machine?); run again, or with fewer --minutes"
        ) from None
    t2 = time.perf_counter()
    device_key = load_device_key(entry.parents[2] / "keys" / "device.key").public_key()
    cfg = OfficeConfig(root=setup.root, accounts=CHEAP)
    with open_index(cfg.index_url) as index:
        store = FileBlobStore(cfg.root)
        keys = {DEVICE: device_key}
        receiver = Receiver(
            store, index, keys.__getitem__, cfg.limits, frozenset({setup.recipient})
        )
        manifest = receive(receiver, entry)
        scope = Scope(devices=frozenset({DEVICE}))
        add_account(index, "rita", [Role.REVIEWER], scope, settings=CHEAP)
        add_account(index, "olga", [Role.REVIEWER], Scope(devices=frozenset({"elsewhere"})), settings=CHEAP)  # fmt: skip
        add_account(index, "aud", [Role.AUDITOR], settings=CHEAP)
    t3 = time.perf_counter()
    for leftover in (audio, events):
        leftover.unlink()
    for folder in (work / "wav", work / f"{DEVICE}-out"):
        shutil.rmtree(folder, ignore_errors=True)
    built = BuiltOffice(setup.root, setup.recipient, str(manifest["recording_id"]))
    # Written last: its presence means a finished build (cached_office).
    state = {"version": STATE_VERSION, "minutes": minutes, "recipient": built.recipient}
    state["rec"] = built.rec
    (work / STATE).write_text(json.dumps(state))
    print(
        f"built the office in {t3 - t0:.1f} s: call audio {t1 - t0:.1f} s, linetap replay "
        f"--format sealed {t2 - t1:.1f} s, received and indexed {t3 - t2:.1f} s"
    )
    return built


def cached_office(workdir: Path, minutes: float) -> BuiltOffice:
    """The office of ``minutes`` under ``workdir``, built unless a finished build is there."""
    work = workdir / f"office-{minutes:g}min"
    state_file = work / STATE
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if state.get("version") == STATE_VERSION and state.get("minutes") == minutes:
            print(f"reusing the office built under {work}")
            return BuiltOffice(work / "office", state["recipient"], state["rec"])
    shutil.rmtree(work, ignore_errors=True)  # an unfinished or older build
    work.mkdir(parents=True)
    return build_office(work, minutes)


# ---------------------------------------------------------------------- our web server
@dataclass(frozen=True)
class Server:
    base: str
    pid: int
    startup_s: float  # spawn to the first 200 of /login
    idle_rss_kib: int  # VmRSS then


def wait_answering(proc: subprocess.Popen[str], url: str, log: Path, timeout: float = 30) -> None:
    """Poll ``url`` every 10 ms until it answers 200 (finer than the tests' wait_up: the
    start-up time is a figure here)."""
    deadline = time.monotonic() + timeout
    while True:
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError),
            urllib.request.urlopen(url, timeout=2) as r,
        ):
            if r.status == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text()[-2000:]
            raise SystemExit(f"web_playback: linetap-office web did not come up:\n{tail}")
        time.sleep(0.01)


@contextlib.contextmanager
def web_server(tmp: Path, office: SealedOffice) -> Iterator[Server]:
    """A fresh ``linetap-office web`` (cold playback cache) over ``office``, its config
    made by the tests' office_toml; SIGTERM (then SIGKILL) on the way out."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = office_toml(tmp, office)
    port = free_port()
    argv = [str(VENV_BIN / "linetap-office"), "web", "--config", str(config), "--port", str(port)]
    with open(tmp / "web.log", "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_answering(proc, f"{base}/login", tmp / "web.log")
            startup = time.perf_counter() - start
            yield Server(base, proc.pid, startup, proc_status_kib("VmRSS", proc.pid))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextlib.contextmanager
def signed_in_client(base: str, login: Login) -> Iterator[httpx.Client]:
    """An httpx client (one keep-alive connection) signed in through the login form."""
    with httpx.Client(base_url=base, follow_redirects=False, timeout=120) as client:
        page = client.get("/login")
        form = {"name": login.name, "password": login.password, "csrf": csrf_of(page.text)}
        r = client.post("/login", data=form)
        if r.status_code != 303 or r.headers.get("location") != "/":
            raise SystemExit(f"web_playback: signing in as {login.name} failed: {r.status_code}")
        yield client


@dataclass(frozen=True)
class Fetch:
    first_byte_s: float
    complete_s: float
    body: bytes


def timed_get(client: httpx.Client, path: str, headers: dict[str, str], status: int) -> Fetch:
    """GET ``path``: seconds from sending the request to its first body byte and to its
    last; the body."""
    parts: list[bytes] = []
    first = 0.0
    start = time.perf_counter()
    with client.stream("GET", path, headers=headers) as r:
        for chunk in r.iter_raw():
            if not parts:
                first = time.perf_counter() - start
            parts.append(chunk)
        complete = time.perf_counter() - start
    if r.status_code != status:
        raise SystemExit(f"web_playback: GET {path} answered {r.status_code}, not {status}")
    return Fetch(first, complete, b"".join(parts))


def get_audio(client: httpx.Client, rec: str) -> Fetch:
    return timed_get(client, f"/recordings/{rec}/audio", {"Range": "bytes=0-"}, 206)


def get_peaks(client: httpx.Client, rec: str) -> Fetch:
    return timed_get(client, f"/recordings/{rec}/peaks", {"Accept": "application/json"}, 200)


# ------------------------------------------------------------------------- the browser
def browser_page(browser: Browser, base: str, login: Login) -> Page:
    """A new browser context signed in through the login form."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{base}/login")
    page.fill("#name", login.name)
    page.fill("#password", login.password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    return page


def time_to_waveform(page: Page, url: str) -> float:
    """Seconds from ``page.goto(url)`` until its waveform canvas has painted pixels."""
    start = time.perf_counter()
    page.goto(url, wait_until="commit")
    page.wait_for_function(DRAWN, timeout=120_000)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- the peer
def peer_age(key: Path, blob: Path) -> tuple[float, float]:
    """``age -d -i key blob``: seconds from spawn to its first output byte and its exit."""
    start = time.perf_counter()
    proc = subprocess.Popen(["age", "-d", "-i", str(key), str(blob)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    fd, first = proc.stdout.fileno(), 0.0
    got = 0
    while chunk := os.read(fd, 1 << 16):
        if not got:
            first = time.perf_counter() - start
        got += len(chunk)
    if proc.wait() != 0 or not got:
        raise SystemExit("web_playback: age -d failed")
    return first, time.perf_counter() - start


def decode_pipeline(key: Path, blob: Path) -> npt.NDArray[np.int16]:
    """``age -d -i key blob | flac -d`` to raw 16-bit samples."""
    age = subprocess.Popen(["age", "-d", "-i", str(key), str(blob)], stdout=subprocess.PIPE)
    flac = subprocess.Popen(
        ["flac", "-d", "-c", "-s", "--force-raw-format", "--endian=little", "--sign=signed", "-"],
        stdin=age.stdout,
        stdout=subprocess.PIPE,
    )
    assert age.stdout is not None
    age.stdout.close()  # flac holds it now: age sees a closed pipe if flac dies
    raw, _ = flac.communicate()
    if age.wait() != 0 or flac.returncode != 0:
        raise SystemExit("web_playback: age -d | flac -d failed")
    return np.frombuffer(raw, dtype="<i2")


def numpy_peaks(samples: npt.NDArray[np.int16], buckets: int) -> list[float]:
    """[max0, min0, …] per bucket in [-1, 1], buckets evenly over the samples."""
    edges = (np.arange(buckets, dtype=np.int64) * samples.size) // buckets
    scaled = samples.astype(np.float32) / 32768.0
    pairs = np.stack([np.maximum.reduceat(scaled, edges), np.minimum.reduceat(scaled, edges)], 1)
    return [float(v) for v in np.round(pairs.ravel().astype(np.float64), 4).tolist()]


def peer_peaks(key: Path, blob: Path, buckets: int) -> tuple[float, list[float]]:
    """Seconds from spawning the pipeline to the peaks' JSON text; the peaks."""
    start = time.perf_counter()
    samples = decode_pipeline(key, blob)
    values = numpy_peaks(samples, buckets)
    json.dumps({"peaks": [values], "duration": samples.size / RATE, "regions": []})
    return time.perf_counter() - start, values


def peer_startup() -> float:
    """Spawn to exit of ``age --version``: the peer's process start-up."""
    start = time.perf_counter()
    subprocess.run(["age", "--version"], check=True, capture_output=True)
    return time.perf_counter() - start


# -------------------------------------------------------------------------- the rounds
Figures = dict[str, list[float]]


@dataclass(frozen=True)
class Bench:
    """What every round needs: the office, its blob and key, where servers log, the
    browser; and the figures gathered."""

    sealed: SealedOffice
    blob: Path
    key: Path
    runs: Path
    browser: Browser
    ours: Figures
    peer: Figures

    @property
    def rec(self) -> str:
        return self.sealed.rec

    def server(self, name: str) -> contextlib.AbstractContextManager[Server]:
        return web_server(self.runs / name, self.sealed)

    def note(self, side: Figures, **figures: float) -> None:
        for name, value in figures.items():
            side.setdefault(name, []).append(value)


def check_both_sides(b: Bench) -> int:
    """Untimed: our FLAC is age's, our peaks the peer's (this also warms the OS page cache
    for both sides). Returns the peaks' bucket count."""
    with b.server("check") as server, signed_in_client(server.base, b.sealed.reviewer) as c:
        audio, peaks_body = get_audio(c, b.rec).body, get_peaks(c, b.rec).body
    run = subprocess.run(["age", "-d", "-i", str(b.key), str(b.blob)], capture_output=True, check=True)  # fmt: skip
    if audio != run.stdout:
        raise SystemExit("web_playback: our audio differs from age -d's output")
    data = json.loads(peaks_body)
    ours: list[float] = data["peaks"][0]
    _, theirs = peer_peaks(b.key, b.blob, len(ours) // 2)
    worst = max(abs(a - c) for a, c in zip(ours, theirs, strict=True))
    if worst > 1e-4:
        raise SystemExit(f"web_playback: our peaks differ from the peer's by {worst}")
    info = soundfile.info(io.BytesIO(audio))
    print(
        f"recording: {info.duration / 60:.1f} min at {info.samplerate} Hz, FLAC "
        f"{len(audio) / 1e6:.1f} MB, sealed blob {b.blob.stat().st_size / 1e6:.1f} MB, "
        f"{len(ours) // 2} peak buckets ({len(peaks_body) / 1e6:.1f} MB of JSON), "
        f"{len(data['regions'])} masked spans"
    )
    return len(ours) // 2


def ours_audio(b: Bench, rep: int) -> None:
    """Server A: start-up, idle RSS, the audio cold then warm, peak RSS."""
    with b.server(f"{rep}-audio") as server, signed_in_client(server.base, b.sealed.reviewer) as c:
        cold, warm = get_audio(c, b.rec), get_audio(c, b.rec)
        hwm = proc_status_kib("VmHWM", server.pid)
    b.note(b.ours, startup=server.startup_s, rss_idle=server.idle_rss_kib, hwm_audio=hwm)
    b.note(b.ours, audio_first_cold=cold.first_byte_s, audio_all_cold=cold.complete_s)
    b.note(b.ours, audio_first_warm=warm.first_byte_s, audio_all_warm=warm.complete_s)


def ours_peaks(b: Bench, rep: int) -> None:
    """Server B: the peaks cold (decrypt, decode, bucket) then warm, peak RSS."""
    with b.server(f"{rep}-peaks") as server, signed_in_client(server.base, b.sealed.reviewer) as c:
        cold, warm = get_peaks(c, b.rec), get_peaks(c, b.rec)
        hwm = proc_status_kib("VmHWM", server.pid)
    b.note(b.ours, peaks_cold=cold.complete_s, peaks_warm=warm.complete_s, hwm_peaks=hwm)


def ours_page(b: Bench, rep: int) -> None:
    """Server C: the recording page drawn in Chromium cold then warm, then the whole
    audio too (all a playback asks), peak RSS."""
    with b.server(f"{rep}-page") as server:
        page = browser_page(b.browser, server.base, b.sealed.reviewer)
        try:
            url = f"{server.base}/recordings/{b.rec}"
            cold, warm = time_to_waveform(page, url), time_to_waveform(page, url)
        finally:
            page.context.close()
        with signed_in_client(server.base, b.sealed.reviewer) as c:
            get_audio(c, b.rec)
        hwm = proc_status_kib("VmHWM", server.pid)
    b.note(b.ours, page_cold=cold, page_warm=warm, hwm_all=hwm)


def peer_audio(b: Bench, rep: int) -> None:
    first, complete = peer_age(b.key, b.blob)
    b.note(b.peer, startup=peer_startup(), audio_first=first, audio_all=complete)


def repetition(b: Bench, rep: int, buckets: int) -> None:
    """One of each figure, ours and the peer's interleaved (peer first on odd reps)."""

    def peaks_peer(b: Bench, rep: int) -> None:
        b.note(b.peer, peaks=peer_peaks(b.key, b.blob, buckets)[0])

    pairs: list[tuple[Callable[[Bench, int], None], Callable[[Bench, int], None]]] = [
        (ours_audio, peer_audio),
        (ours_peaks, peaks_peer),
    ]
    for ours, peer in pairs:
        for step in (ours, peer) if rep % 2 == 0 else (peer, ours):
            step(b, rep)
    ours_page(b, rep)


# ---------------------------------------------------------------------------- printing
ROWS: list[tuple[str, str, str | None]] = [
    ("process start-up (spawn to ready)", "startup", "startup"),
    ("first audio byte, cold (Range: bytes=0-)", "audio_first_cold", "audio_first"),
    ("first audio byte, warm", "audio_first_warm", "audio_first"),
    ("whole audio, cold", "audio_all_cold", "audio_all"),
    ("whole audio, warm", "audio_all_warm", "audio_all"),
    ("peaks JSON complete, cold", "peaks_cold", "peaks"),
    ("peaks JSON complete, warm", "peaks_warm", "peaks"),
    ("drawn waveform in Chromium, cold", "page_cold", None),
    ("drawn waveform in Chromium, warm", "page_warm", None),
]
MEMORY: list[tuple[str, str]] = [
    ("VmRSS at idle after start", "rss_idle"),
    ("VmHWM after the audio cold + warm (A)", "hwm_audio"),
    ("VmHWM after the peaks cold + warm (B)", "hwm_peaks"),
    ("VmHWM after page x2 + whole audio (C)", "hwm_all"),
]


def print_tables(ours: Figures, peer: Figures, minutes: float, reps: int) -> None:
    print()
    print_table_header(
        f"{f'{minutes:g}-minute recording, {reps} reps (ms)':<44}"
        f"{'ours min':>9}{'median':>9}{'peer min':>10}{'median':>9}{'peer/ours':>11}"
    )
    for label, mine, theirs in ROWS:
        o = ours[mine]
        line = f"{label:<44}{min(o) * 1e3:9.1f}{statistics.median(o) * 1e3:9.1f}"
        if theirs is not None:
            p = peer[theirs]
            ratio = statistics.median(p) / statistics.median(o)
            line += f"{min(p) * 1e3:10.1f}{statistics.median(p) * 1e3:9.1f}{ratio:11.2f}"
        else:
            line += f"{'-':>10}{'-':>9}{'-':>11}"
        print(line)
    print()
    print_table_header(f"{'linetap-office web memory (MiB)':<44}{'min':>9}{'median':>9}{'max':>9}")
    for label, name in MEMORY:
        v = [kib / 1024 for kib in ours[name]]
        print(f"{label:<44}{min(v):9.1f}{statistics.median(v):9.1f}{max(v):9.1f}")


# -------------------------------------------------------------------------------- main
def run(office: BuiltOffice, reps: int) -> tuple[Figures, Figures]:
    sealed = office.sealed()
    record = sealed.index.get(office.rec)
    assert record is not None
    try:
        with tempfile.TemporaryDirectory() as runs, sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--mute-audio"]
            )
            try:
                b = Bench(
                    sealed, sealed.store.resolve(record.path), office.key, Path(runs), browser,
                    {}, {},
                )  # fmt: skip
                buckets = check_both_sides(b)
                for rep in range(reps):
                    repetition(b, rep, buckets)
            finally:
                browser.close()
    finally:
        sealed.index.close()
    return b.ours, b.peer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60, help="call length (default 60)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument(
        "--workdir", type=Path, help="keep the built office here and reuse it (default: a temp dir)"
    )
    args = parser.parse_args()
    if not 0.5 <= args.minutes <= 60 or args.reps < 1:
        # 60: the device's max_call_s in the tests' config; 0.5: the card number fits.
        parser.error("--minutes must be from 0.5 to 60, --reps at least 1")
    missing = [t for t in ("age", "flac", "sox", "espeak-ng") if shutil.which(t) is None]
    if missing or not CHROMIUM.exists():
        sys.exit(f"web_playback: needs {', '.join(missing) or str(CHROMIUM)} (apt-get install)")
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        office = cached_office(workdir, args.minutes)
        ours, peer = run(office, args.reps)
    print_tables(ours, peer, args.minutes, args.reps)
    print(
        "\nours: linetap-office web over HTTP on localhost, a fresh process per cold figure;"
        "\npeer: age -d (audio), age -d | flac -d + numpy (peaks), spawned per run."
    )


if __name__ == "__main__":
    main()
