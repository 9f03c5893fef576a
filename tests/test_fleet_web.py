"""The Fleet pages, the acknowledgement form, ``/metrics`` and ``linetap-office fleet``:
each view through the gate (``view_fleet`` / ``manage_fleet``) with its ledger leaf,
devices out of scope hidden (404), CSRF on the form, Prometheus only for this machine or
with the bearer token.

The office: devices ``shop-1`` (site ``north``) and ``shop-2`` (site ``south``), their
telemetry taken in by the real ingest, with a silent line on shop-1 and shop-2 offline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from headoffice.accounts import Accounts
from headoffice.authz import Role, Scope
from headoffice.cli import main as office_main
from headoffice.config import OfficeConfig
from headoffice.fleet.config import FleetConfig
from headoffice.fleet.ingest import FleetIngest
from headoffice.fleet.state import FleetStore
from headoffice.index import Index, open_index
from headoffice.stores import open_store
from headoffice.web.app import create_app
from sealedrec.manifest import GENESIS_HASH, manifest_hash
from tests.office_accounts import (
    CHEAP,
    CHEAP_TOML,
    Login,
    SteppingClock,
    add_account,
    leaves,
    use_clock,
)
from tests.test_fleet_alarms import enroll, signed_call, silent_levels, status_payload
from tests.test_web import csrf_of, sign_in

NOW = datetime.now(UTC)
SITES = {"north": ("shop-1",), "south": ("shop-2",)}
TOKEN = "scrape-me-0123456789"


@dataclass
class FleetOffice:
    root: Path
    index: Index
    cfg: OfficeConfig
    clock: SteppingClock
    admin: Login
    north: Login  # supervisor of site north
    reviewer: Login
    auditor: Login

    def client(self, host: str = "testclient") -> TestClient:
        accounts = Accounts(
            self.index, self.cfg.accounts, sites=self.cfg.sites, clock=self.clock.now
        )
        app = create_app(self.cfg, self.index, open_store(self.cfg, self.root), accounts=accounts)
        return TestClient(app, follow_redirects=False, client=(host, 50000))

    def signed_in(self, login: Login) -> TestClient:
        client = self.client()
        sign_in(client, login)
        return client

    def alarm(self, device: str, kind: str) -> Any:
        [a] = [
            a for a in FleetStore(self.index).alarms() if (a.device_id, a.kind) == (device, kind)
        ]
        return a


def _ingest(root: Path, index: Index) -> None:
    """Both devices' recordings (shop-1's line2 silent) and telemetry; shop-2's will."""
    ingest = FleetIngest(root, index, FleetConfig(raise_after_s=0))
    for device in ("shop-1", "shop-2"):
        key = enroll(root, device)
        prev = GENESIS_HASH
        for seq in (1, 2, 3):
            levels = silent_levels(2000) if device == "shop-1" else None
            manifest = signed_call(key, seq, prev, line="line2", levels=levels, device=device)
            prev = manifest_hash(manifest)
            index.add(manifest, f"/store/{device}/{seq}")
        payload = status_payload(key, 3, when=NOW, device=device)
        assert ingest.handle(f"linetap/{device}/status", payload, NOW).result == "stored"
    ingest.handle("linetap/shop-2/status", b'{"state":"offline"}', NOW + timedelta(seconds=1))


@pytest.fixture
def office(tmp_path: Path) -> Iterator[FleetOffice]:
    root = tmp_path / "office"
    root.mkdir(mode=0o700)
    index = open_index(f"sqlite:///{root / 'index.sqlite3'}")
    _ingest(root, index)
    clock = SteppingClock()
    fleet = FleetConfig(metrics_token=TOKEN)
    cfg = OfficeConfig(root=root, accounts=CHEAP, sites=SITES, fleet=fleet)
    admin = add_account(index, "ada", [Role.ADMIN], settings=CHEAP, clock=clock)
    north = add_account(
        index,
        "sam",
        [Role.SUPERVISOR],
        Scope(sites=frozenset({"north"})),
        settings=CHEAP,
        clock=clock,
        sites=SITES,
    )
    reviewer = add_account(index, "rita", [Role.REVIEWER], settings=CHEAP)
    auditor = add_account(index, "aud", [Role.AUDITOR], settings=CHEAP)
    yield FleetOffice(root, index, cfg, clock, admin, north, reviewer, auditor)
    index.close()


def fleet_leaves(index: Index, action: str) -> list[dict[str, Any]]:
    return [leaf for leaf in leaves(index, "access") if leaf["action"] == action]


def test_a_supervisor_sees_the_devices_of_their_scope_and_its_alarms(office: FleetOffice):
    client = office.signed_in(office.north)
    before = len(fleet_leaves(office.index, "view_fleet"))
    page = client.get("/fleet")
    assert page.status_code == 200
    assert 'data-device="shop-1" data-state="online"' in page.text
    assert "shop-2" not in page.text  # site south: not even named
    silent = office.alarm("shop-1", "silent_line")
    assert f'data-alarm-id="{silent.id}" data-kind="silent_line" data-state="raised"' in page.text
    assert f'action="/fleet/alarms/{silent.id}/ack"' in page.text
    assert '<a href="/fleet" aria-current="page">Fleet</a>' in page.text
    [leaf] = fleet_leaves(office.index, "view_fleet")[before:]
    assert (leaf["user"], leaf["detail"]) == ("sam", "web: fleet")
    device = client.get("/fleet/devices/shop-1")
    assert device.status_code == 200 and '<svg xmlns="http://www.w3.org/2000/svg"' in device.text
    assert 'id="chart-online-title">Minutes online per hour' in device.text
    hidden = client.get("/fleet/devices/shop-2")
    assert hidden.status_code == 404 and "There is no such device." in hidden.text
    refused = fleet_leaves(office.index, "view_fleet")[-1]
    assert refused["detail"].startswith("refused: out of scope") and "shop-2" in refused["detail"]


def test_acknowledging_with_a_note_through_the_form(office: FleetOffice):
    client = office.signed_in(office.north)
    silent = office.alarm("shop-1", "silent_line")
    page = client.get("/fleet")
    r = client.post(
        f"/fleet/alarms/{silent.id}/ack",
        data={"csrf": csrf_of(page.text), "note": "tap re-seated", "back": "/fleet"},
    )
    assert r.status_code == 303 and r.headers["location"] == f"/fleet?acked={silent.id}"
    acked = FleetStore(office.index).alarm(silent.id)
    assert acked is not None
    assert (acked.state, acked.acked_by, acked.ack_note) == ("acknowledged", "sam", "tap re-seated")
    after = client.get(r.headers["location"]).text
    assert f"Alarm {silent.id} acknowledged." in after and "tap re-seated" in after
    [access] = fleet_leaves(office.index, "manage_fleet")
    assert access["detail"] == f"web: acknowledge alarm {silent.id} (silent_line) of shop-1/line2"
    [admin] = [x for x in leaves(office.index, "admin") if x["action"] == "alarm_acknowledged"]
    assert (admin["user"], admin["detail"]) == ("sam", "note: tap re-seated")
    # Twice: a clear message, nothing changed.
    again = client.post(
        f"/fleet/alarms/{silent.id}/ack", data={"csrf": csrf_of(after), "note": "x"}
    )
    assert again.status_code == 409 and "acknowledged already by sam" in again.text


def test_the_form_needs_its_csrf_token_and_out_of_scope_is_not_found(office: FleetOffice):
    client = office.signed_in(office.north)
    silent = office.alarm("shop-1", "silent_line")
    assert client.post(f"/fleet/alarms/{silent.id}/ack", data={"note": "x"}).status_code == 403
    offline = office.alarm("shop-2", "offline")
    token = csrf_of(client.get("/fleet").text)
    r = client.post(f"/fleet/alarms/{offline.id}/ack", data={"csrf": token, "note": "x"})
    assert r.status_code == 404 and "There is no such alarm." in r.text
    assert office.alarm("shop-2", "offline").state == "raised"
    assert fleet_leaves(office.index, "manage_fleet")[-1]["detail"].startswith(
        "refused: out of scope"
    )


def test_roles_without_the_fleet_and_the_auditor_who_only_looks(office: FleetOffice):
    reviewer = office.signed_in(office.reviewer)
    r = reviewer.get("/fleet")
    assert r.status_code == 403 and "may not view_fleet" in r.text
    assert 'href="/fleet"' not in reviewer.get("/").text
    auditor = office.signed_in(office.auditor)
    page = auditor.get("/fleet")
    assert page.status_code == 200 and "shop-1" in page.text and "shop-2" in page.text
    assert "Acknowledge</button>" not in page.text
    offline = office.alarm("shop-2", "offline")
    token = csrf_of(page.text)
    denied = auditor.post(f"/fleet/alarms/{offline.id}/ack", data={"csrf": token, "note": "x"})
    assert denied.status_code == 403 and "may not manage_fleet" in denied.text


def test_metrics_for_this_machine_or_with_the_token(office: FleetOffice):
    remote = office.client()
    assert remote.get("/metrics").status_code == 403
    wrong = remote.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    ok = remote.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/plain")
    local = office.client(host="127.0.0.1").get("/metrics")
    assert local.status_code == 200
    figures = dict(
        line.rsplit(" ", 1) for line in local.text.splitlines() if line and line[0] != "#"
    )
    assert figures['linetap_fleet_devices{state="online"}'] == "1.0"
    assert figures['linetap_fleet_devices{state="offline"}'] == "1.0"
    assert figures['linetap_fleet_alarms_open{kind="silent_line",state="raised"}'] == "1.0"
    assert figures['linetap_fleet_alarms_open{kind="offline",state="raised"}'] == "1.0"
    assert figures["linetap_recordings_stored_total"] == "6.0"
    assert figures["linetap_fleet_status_messages_total"] == "3.0"  # two online, one will
    with office.index.transaction(False) as q:
        [(size,)] = q("SELECT COUNT(*) FROM ledger", ())
    assert float(figures["linetap_ledger_leaves"]) >= size - 5  # the scrape adds none


# --------------------------------------------------------------------------- the command line


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = office_main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_linetap_office_fleet_lists_acks_and_shows_history(
    office: FleetOffice, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    use_clock(monkeypatch, office.clock)
    config = office.root.parent / "office.toml"
    config.write_text(
        f'root = "{office.root}"\n[sites]\nnorth = ["shop-1"]\nsouth = ["shop-2"]\n' + CHEAP_TOML
    )
    where = ["--config", str(config)]
    office.north.apply(monkeypatch)
    code, out, err = run(["fleet", *where], capsys)
    assert code == 1, err  # an alarm is open
    assert "shop-1" in out and "shop-2" not in out and "silent_line" in out
    assert "line2: " in out and "[silent_line]" in out
    office.north.apply(monkeypatch)
    code, out, _ = run(["fleet", "--json", *where], capsys)
    data = json.loads(out)
    assert [d["device_id"] for d in data["devices"]] == ["shop-1"]
    assert data["devices"][0]["head_seq"] == 3 and data["devices"][0]["office_seq"] == 3
    [alarm] = data["alarms"]
    assert (alarm["kind"], alarm["line"]) == ("silent_line", "line2")
    office.north.apply(monkeypatch)
    code, out, err = run(["fleet", "ack", str(alarm["id"]), "--note", "on it", *where], capsys)
    assert code == 0, err
    assert out == f"alarm {alarm['id']} (shop-1/line2 silent_line) acknowledged by sam\n"
    office.north.apply(monkeypatch)
    code, out, err = run(["fleet", "ack", "999", *where], capsys)
    assert code == 1 and "there is no alarm 999" in err
    office.admin.apply(monkeypatch)
    code, out, err = run(["fleet", "history", "shop-2", "--hours", "3", "--json", *where], capsys)
    assert code == 1, err  # shop-2 is offline
    hist = json.loads(out)
    assert len(hist["hours"]) == 3 and hist["device"]["state"] == "offline"
    assert sum(h["messages"] for h in hist["hours"]) == 2
    office.north.apply(monkeypatch)
    code, out, err = run(["fleet", "history", "shop-2", *where], capsys)
    assert code == 1 and "there is no device 'shop-2'" in err
    details = [leaf["detail"] for leaf in fleet_leaves(office.index, "view_fleet")]
    assert "cli: fleet" in details and "cli: fleet history of shop-2" in details
