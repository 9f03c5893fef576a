"""The web review's flows in a real browser (issue 16), beside tests/test_web_browser.py's
player: Chromium through Playwright against a real ``linetap-office web`` process, over
an office of two sites filled by the real receiver — the sample call on site "north" and,
on site "south", a call made here of signals nobody here wrote (FSK caller ID from
minimodem, speech from espeak-ng, a card number as sox DTMF; tests/test_web_playback.py).

- a supervisor signs in with password and TOTP, exports the search as a ZIP, and its WAV
  decodes to the same samples as ``linetap-office export`` of the same recording;
- a reviewer scoped to one site sees none of the other site's calls, and a guessed URL of
  one answers 404 and is a ledger leaf;
- a POST without its CSRF token is refused; a session that ended returns to the login page
  with the reason;
- a QA scorecard evaluation shows its total as it is answered and stores the same.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from headoffice.authz import Role, Scope
from headoffice.web.qa_forms import FormDefinition
from headoffice.web.scorecards import ScorecardStore
from tests.conftest import VENV_BIN
from tests.office_accounts import CHEAP, Login, add_account, leaves
from tests.test_web_browser import CHROMIUM, DOCS_SHOTS, running_web
from tests.test_web_playback import SITES, SealedOffice, build_sealed_office

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)

SITES_TOML = '[sites]\nnorth = ["test-device"]\nsouth = ["branch-2"]\n'


@dataclass
class TwoSites:
    base: str
    office: SealedOffice
    config: Path
    sue: Login  # supervisor of the north site, with TOTP (export right)
    nico: Login  # reviewer of the north site
    shots: Path

    @property
    def south_rec(self) -> str:
        return str(self.office.others[0]["recording_id"])


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoSites]:
    tmp = tmp_path_factory.mktemp("flows")
    office = build_sealed_office(tmp, second_site=True)
    north = Scope(sites=frozenset({"north"}))
    sue = add_account(
        office.index, "sue", [Role.SUPERVISOR], north, settings=CHEAP, sites=SITES, totp=True
    )
    nico = add_account(office.index, "nico", [Role.REVIEWER], north, settings=CHEAP, sites=SITES)
    shots = tmp / "screenshots"
    shots.mkdir()
    extra = 'totp_required_for = ["admin", "supervisor"]\n'
    with running_web(tmp, office, extra_accounts=extra, extra_toml=SITES_TOML) as (base, config):
        yield TwoSites(base, office, config, sue, nico, shots)
    office.index.close()


@pytest.fixture  # per test: Playwright's loop (and its executor thread) ends with it
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def sign_in(page: Any, base: str, login: Login, shots: Path | None = None) -> None:
    page.goto(f"{base}/login")
    page.fill("#name", login.name)
    page.fill("#password", login.password)
    page.click("button[type=submit]")
    if login.totp_secret is not None:
        page.wait_for_selector("input[name=code]")
        if shots is not None:
            page.screenshot(path=str(shots / "login-code.png"), full_page=True)
        page.fill("input[name=code]", login.code())
        page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def listed(page: Any) -> set[str]:
    hrefs = page.eval_on_selector_all(
        "table.results a[href^='/recordings/']", "els => els.map(e => e.getAttribute('href'))"
    )
    return {h.removeprefix("/recordings/") for h in hrefs}


def test_totp_login_then_zip_export_equals_the_cli_export(two_sites: TwoSites, browser: Any):
    t = two_sites
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    try:
        sign_in(page, t.base, t.sue, t.shots)
        assert "sue" in page.inner_text("header")
        assert listed(page) == {t.office.rec}  # the north site's call only
        with page.expect_download() as info:
            page.click("form.export-zip button[type=submit]")
        download = info.value
        zipped = Path(download.path()).read_bytes()
        page.screenshot(path=str(t.shots / "search-supervisor.png"), full_page=True)
    finally:
        context.close()
    with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
        names = zf.namelist()
        [wav_name] = [n for n in names if n.endswith(".wav")]
        assert t.office.rec[:8] in wav_name and "metadata.csv" in " ".join(names)
        from_zip, zip_rate = soundfile.read(io.BytesIO(zf.read(wav_name)), dtype="int16")

    out = t.config.parent / "cli-export.wav"
    run = subprocess.run(
        [
            *(str(VENV_BIN / "linetap-office"), "export", "--config", str(t.config), t.office.rec),
            *("--identity", str(t.office.root / "keys" / "office.key"), "--output", str(out)),
        ],
        env=t.sue.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    from_cli, cli_rate = soundfile.read(out, dtype="int16")
    assert zip_rate == cli_rate
    assert from_zip.size > 8000
    np.testing.assert_array_equal(from_zip, from_cli)
    exports = [leaf for leaf in leaves(t.office.index, "access") if leaf["action"] == "export"]
    assert {leaf["user"] for leaf in exports} == {"sue"} and len(exports) >= 2


def test_a_site_scoped_reviewer_sees_only_their_site(two_sites: TwoSites, browser: Any):
    t = two_sites
    page = browser.new_page()
    try:
        sign_in(page, t.base, t.nico)
        assert listed(page) == {t.office.rec}
        page.goto(f"{t.base}/?caller=ALICE")  # the south call's caller: not found
        assert listed(page) == set()
        assert "No recordings match" in page.inner_text("main")
        before = len(leaves(t.office.index, "access"))
        answer = page.goto(f"{t.base}/recordings/{t.south_rec}")
        assert answer is not None and answer.status == 404
        assert t.south_rec not in page.content()  # nothing about it, not even its id
        page.screenshot(path=str(t.shots / "not-found.png"), full_page=True)
    finally:
        page.close()
    refused = leaves(t.office.index, "access")[before:]
    assert [(leaf["user"], leaf["recording_id"]) for leaf in refused] == [("nico", t.south_rec)]
    assert str(refused[0]["detail"]).startswith("refused")


def test_post_without_csrf_is_refused_and_an_ended_session_returns_to_login(
    two_sites: TwoSites, browser: Any
):
    t = two_sites
    context = browser.new_context()
    page = context.new_page()
    try:
        sign_in(page, t.base, t.nico)
        url = f"{t.base}/recordings/{t.office.rec}/notes"
        # The browser's own cookies, no token: refused, and nothing stored.
        bare = page.request.post(url, form={"at_ms": "1000", "text": "forged"})
        assert bare.status == 403
        wrong = page.request.post(url, form={"at_ms": "1000", "text": "forged", "csrf": "x" * 43})
        assert wrong.status == 403
        page.goto(f"{t.base}/recordings/{t.office.rec}")
        assert "forged" not in page.content()
        # The session ends (as past its absolute limit): the next page is the login page.
        with t.office.index.transaction(True) as q:
            q("UPDATE sessions SET expires_at = ? WHERE name = ?", ("2000-01-01T00:00:00Z", "nico"))
        page.goto(f"{t.base}/")
        assert page.url.startswith(f"{t.base}/login")
        assert "session ended" in page.inner_text("main")
        page.screenshot(path=str(t.shots / "expired.png"), full_page=True)
    finally:
        context.close()


def test_a_scorecard_evaluation_computes_its_total(two_sites: TwoSites, browser: Any):
    """nico evaluates the north call with a 3-question form: the page's live total (the
    JS preview) and the total the server stores and shows agree with the rule by hand;
    a failed critical question turns it to 0 %."""
    t = two_sites
    form = ScorecardStore(t.office.index).save_form(
        "Service check",
        FormDefinition.model_validate_json(
            json.dumps({
                "sections": [
                    {"title": "Opening", "questions": [
                        {"id": "greet", "text": "Greets the caller", "kind": "yes_no", "weight": 2},
                        {"id": "name", "text": "Says their name", "kind": "yes_no", "weight": 1,
                         "critical": True},
                    ]},
                    {"title": "Tone", "questions": [
                        {"id": "tone", "text": "Friendly tone", "kind": "scale5", "weight": 3},
                    ]},
                ]
            })
        ),
        "office-admin",
    )  # fmt: skip
    page = browser.new_page()
    try:
        sign_in(page, t.base, t.nico)
        page.goto(f"{t.base}/recordings/{t.office.rec}/evaluate?form={form.id}")
        total = page.locator("#qa-total")
        page.check('input[name="a.greet"][value="yes"]')
        page.check('input[name="a.name"][value="yes"]')
        page.check('input[name="a.tone"][value="4"]')
        # (2*1 + 1*1 + 3*0.75) / 6 = 87.5 % -> 8750 bp
        page.wait_for_function("() => document.querySelector('#qa-total').dataset.bp === '8750'")
        preview = total.inner_text()
        page.check('input[name="a.name"][value="no"]')  # the critical question fails
        page.wait_for_function("() => document.querySelector('#qa-total').dataset.bp === '0'")
        page.check('input[name="a.name"][value="yes"]')
        page.fill("#qa-agent", "Alice")
        page.screenshot(path=str(t.shots / "evaluate.png"), full_page=True)
        page.click('[data-role="save-evaluation"]')
        page.wait_for_url(f"{t.base}/evaluations/*")
        stored = page.locator("#qa-total")
        assert stored.get_attribute("data-bp") == "8750"
        assert stored.inner_text() == preview
        page.screenshot(path=str(t.shots / "evaluation.png"), full_page=True)
        # The dashboard of the calls' month: calls, durations, and now a section score.
        page.goto(f"{t.base}/dashboard?from=2026-11-01&to=2026-12-01")
        assert page.locator("svg[role=img]").count() == 3
        page.screenshot(path=str(t.shots / "dashboard.png"), full_page=True)
    finally:
        page.close()
    [row] = ScorecardStore(t.office.index).evaluations_for(t.office.rec)
    assert (row.score_bp, row.raw_bp, row.failed, row.agent) == (8750, 8750, False, "Alice")
    if os.environ.get("LINETAP_UPDATE_SCREENSHOTS") == "1":  # for the README
        for name in ("evaluate", "dashboard"):
            if (t.shots / f"{name}.png").exists():
                shutil.copyfile(t.shots / f"{name}.png", DOCS_SHOTS / f"{name}.png")
