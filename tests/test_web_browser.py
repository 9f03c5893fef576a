"""The in-page player in a real browser (issue 16): Playwright for Python driving
Debian's ``chromium`` (``/usr/bin/chromium``; no browser is downloaded) against a real
``linetap-office web`` process over an office the real receiver filled with the sample
call, sealed by ``linetap replay --format sealed`` (tests/test_web_playback.py).

Sign in, search, open the recording, play: the media element's Range requests are
answered 206, ``currentTime`` advances, +10 s moves it, the keys work, the waveform
canvas is drawn from the server's peaks and the masked DTMF spans are regions; the
history tab lists the playback. Each
page is screenshotted under the test's tmp dir; with LINETAP_UPDATE_SCREENSHOTS=1 the
search and recording pages are also copied to docs/screenshots/ for the README (a test
run leaves the work tree alone otherwise).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import VENV_BIN
from tests.office_accounts import CHEAP_TOML, leaves
from tests.test_web import free_port
from tests.test_web_playback import SealedOffice, build_sealed_office

CHROMIUM = Path("/usr/bin/chromium")
DOCS_SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)

# How many pixels of the waveform's canvases are painted, and how different they are.
CANVAS_STATS = """
(player) => {
  const host = player.querySelector('#waveform > div');
  const root = host && host.shadowRoot;
  if (!root) return {canvases: 0, painted: 0, levels: 0};
  let painted = 0, canvases = 0;
  const levels = new Set();
  for (const c of root.querySelectorAll('canvas')) {
    if (!c.width || !c.height) continue;
    canvases += 1;
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 3; i < data.length; i += 4) {
      if (data[i] > 0) { painted += 1; levels.add(data[i - 3] + ',' + data[i - 2] + ',' + data[i - 1]); }
    }
  }
  // Columns painted differ in height: a drawn waveform, not a flat bar.
  return {canvases, painted, levels: levels.size};
}
"""


def office_toml(
    tmp: Path,
    office: SealedOffice,
    *,
    accounts: str = 'totp_required_for = ["admin"]\n',
    extra: str = "",
) -> Path:
    """office.toml for ``office`` (``accounts``: more of its [accounts] table; ``extra``:
    more tables)."""
    path = tmp / "office.toml"
    path.write_text(
        f'root = "{office.root}"\n{CHEAP_TOML}{accounts}'
        '[web]\nlisten = "127.0.0.1"\noffice_name = "Branch 12 head office"\n' + extra
    )
    return path


def wait_up(proc: subprocess.Popen[str], url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "linetap-office web did not answer"
        time.sleep(0.1)


@contextlib.contextmanager
def running_web(
    tmp: Path,
    office: SealedOffice,
    *,
    extra_accounts: str = 'totp_required_for = ["admin"]\n',
    extra_toml: str = "",
) -> Iterator[tuple[str, Path]]:
    """``linetap-office web`` over ``office`` on a free port: (its base URL, its config);
    stopped with SIGTERM (then SIGKILL) on the way out. Its log is ``tmp``/web.log."""
    config = office_toml(tmp, office, accounts=extra_accounts, extra=extra_toml)
    port = free_port()
    with open(tmp / "web.log", "w") as log:
        proc = subprocess.Popen(
            [str(VENV_BIN / "linetap-office"), "web", "--config", str(config), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_up(proc, f"{base}/login")
            yield base, config
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, SealedOffice]]:
    office = build_sealed_office(tmp_path)
    try:
        with running_web(tmp_path, office) as (base, _config):
            yield base, office
    finally:
        office.index.close()


MEDIA = "document.querySelector('#player audio')"


def media_time(page: Any) -> float:
    return float(page.evaluate(f"() => {MEDIA}.currentTime"))


def sign_in_and_search(page: Any, base: str, office: SealedOffice, shots: Path) -> Any:
    """Sign in as the reviewer (no TOTP for the role here); the search page lists the call."""
    page.goto(f"{base}/login")
    page.screenshot(path=str(shots / "login.png"), full_page=True)
    page.fill("#name", office.reviewer.name)
    page.fill("#password", office.reviewer.password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    link = page.locator(f'a[href="/recordings/{office.rec}"]').first
    link.wait_for()
    page.screenshot(path=str(shots / "search.png"), full_page=True)
    return link


def check_waveform(page: Any, office: SealedOffice) -> None:
    """Drawn from the peaks, with one region per masked span laid over it."""
    player = page.locator("#player")
    page.wait_for_function(
        "() => document.querySelector('#player').dataset.maskedRegions !== undefined",
        timeout=15_000,
    )
    masked = page.locator('#player [data-masked="true"]')
    assert masked.count() == len(office.manifest["masked_spans"]) > 1
    assert masked.first.inner_text() == "masked"
    assert player.get_attribute("data-masked-regions") == str(masked.count())
    stats = player.evaluate(CANVAS_STATS)
    assert stats["canvases"] >= 1 and stats["painted"] > 1000, stats
    assert stats["levels"] >= 2, stats
    box = page.locator("#waveform").bounding_box()
    assert box and box["height"] >= 90 and box["width"] > 500
    region_box = masked.first.bounding_box()
    assert region_box and region_box["height"] > 50  # laid out over the waveform


def play_and_skip(page: Any) -> None:
    page.get_by_role("button", name="Play").click()
    page.wait_for_function(f"() => {MEDIA}.currentTime > 1.0", timeout=15_000)
    assert page.get_by_role("button", name="Pause").is_visible()
    before = media_time(page)
    page.get_by_role("button", name="Forward 10 seconds").click()
    after = media_time(page)
    assert after >= before + 9.5, (before, after)
    page.get_by_role("button", name="Back 10 seconds").click()
    back = media_time(page)
    assert back <= after - 9.5, (after, back)
    shown = page.locator('#player [data-role="current"]').inner_text()
    assert shown.startswith(("0:0", "0:1")), shown


def use_the_keys(page: Any, duration_s: float) -> None:
    """] faster, [ slower, space pause, → and ← 10 s."""
    page.locator("h1").click()  # focus out of the buttons
    page.keyboard.press("]")
    assert page.locator("#player-speed").input_value() == "1.25"
    assert page.evaluate(f"() => {MEDIA}.playbackRate") == 1.25
    page.keyboard.press("[")
    page.keyboard.press("[")
    assert page.locator("#player-speed").input_value() == "0.75"
    page.keyboard.press("Space")
    page.wait_for_function(f"() => {MEDIA}.paused")
    at = media_time(page)
    page.keyboard.press("ArrowRight")
    assert media_time(page) == pytest.approx(min(at + 10, duration_s), abs=0.3)
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.select_option("#player-speed", "1")


def note_and_seek(page: Any, base: str, office: SealedOffice) -> None:
    """A note at the player's position (7 s) is listed at 00:07, persists over a reload,
    and clicking its time seeks the player there; the history tab lists the accesses."""
    # Seek to 7.2 s and wait until the media element is there (asked again while it is
    # not: a seek made while the key presses' seeks settle can be overtaken by them), and
    # the form shows the position the note will take, as a person would see it.
    page.wait_for_function(
        "() => { const p = document.querySelector('#player'); const m = p.querySelector('audio');"
        " if (Math.abs(m.currentTime - 7.2) < 0.05 && !m.seeking) return true;"
        " p.wavesurfer.setTime(7.2); return false; }",
        polling=200,
    )
    page.wait_for_function(
        "() => document.querySelector('[data-role=\"note-at\"]').textContent === '00:07'"
    )
    page.fill("#note-text", "caller asks for a refund")
    page.get_by_role("button", name="Add note").click()
    note = page.get_by_role("button", name="Play from 00:07")
    note.wait_for()
    page.reload()
    page.wait_for_function("() => document.querySelector('#player').wavesurfer !== undefined")
    page.evaluate("() => document.querySelector('#player').wavesurfer.setTime(0)")
    assert media_time(page) < 1
    page.get_by_role("button", name="Play from 00:07").click()
    page.wait_for_function(f"() => Math.abs({MEDIA}.currentTime - 7) < 0.3", timeout=10_000)
    page.get_by_role("link", name="Show this recording's ledger entries").click()
    history = page.locator("#history table")
    history.wait_for()
    text = history.inner_text()
    for expected in ("ingest", "listen", "web: note at 00:07", "web: history"):
        assert expected in text, expected
    assert page.url == f"{base}/recordings/{office.rec}"  # htmx: no navigation


def history_lists_the_plays(page: Any, office: SealedOffice) -> None:
    """The history tab lists this test's playback (one listen leaf, by rita) and the note,
    read from the ledger when the tab is opened."""
    page.click('[data-role="load-history"]')
    page.wait_for_selector("table.history tbody tr")
    listens = page.locator('table.history tr[data-action="listen"]')
    assert listens.count() == 1
    assert "rita" in listens.first.inner_text()
    assert page.locator('table.history tr[data-action="note"]').count() >= 1
    assert page.locator('table.history tr[data-kind="ingest"]').count() == 1


def test_play_a_sealed_call_in_chromium(server: tuple[str, SealedOffice], tmp_path: Path):
    from playwright.sync_api import sync_playwright

    base, office = server
    shots = tmp_path / "screenshots"
    shots.mkdir()
    audio_url = f"{base}/recordings/{office.rec}/audio"
    answers: list[dict[str, Any]] = []
    errors: list[str] = []

    def on_response(r: Any) -> None:
        if r.url.startswith(audio_url):
            answers.append({"status": r.status, "range": r.request.headers.get("range")})

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--autoplay-policy=no-user-gesture-required", "--mute-audio", "--no-sandbox"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("response", on_response)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            sign_in_and_search(page, base, office, shots).click()
            page.wait_for_url(f"{base}/recordings/{office.rec}")
            check_waveform(page, office)
            assert answers == []  # drawn from the peaks: the audio is fetched on play only
            play_and_skip(page)
            use_the_keys(page, office.manifest["duration_ms"] / 1000)
            note_and_seek(page, base, office)
            history_lists_the_plays(page, office)
            page.wait_for_timeout(300)
            page.screenshot(path=str(shots / "recording.png"), full_page=True)
        finally:
            browser.close()

    # The media element asked ranges, and every one was answered 206 with bytes.
    assert answers, "the browser fetched no audio"
    assert all(a["range"] and a["range"].startswith("bytes=") for a in answers), answers
    assert all(a["status"] == 206 for a in answers), answers
    assert not [e for e in errors if "player" in e.lower() or "Playback failed" in e], errors

    # One playback, one ledger leaf (peaks and every Range inside its grant).
    listens = [leaf for leaf in leaves(office.index, "access") if leaf["action"] == "listen"]
    assert [(leaf["user"], leaf["recording_id"]) for leaf in listens] == [("rita", office.rec)]
    assert not str(listens[0]["detail"]).startswith("refused")

    for name in ("login", "search", "recording"):
        assert (shots / f"{name}.png").stat().st_size > 5000, name
    if os.environ.get("LINETAP_UPDATE_SCREENSHOTS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        for name in ("search", "recording"):
            shutil.copyfile(shots / f"{name}.png", DOCS_SHOTS / f"{name}.png")
