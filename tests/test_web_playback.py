"""In-page playback (issue 16): ``/recordings/{id}/audio`` (decrypted in RAM, HTTP Range)
and ``/recordings/{id}/peaks``, behind the gate and the ledger.

The office is real: ``linetap-office init``'s layout (:func:`headoffice.enroll.init_ca`),
the sample call replayed by ``linetap replay --format sealed`` (caller ID and a keyed-in
card number, so the manifest has masked DTMF spans), and the sealed recording received
message by message by the real :class:`~headoffice.receiver.Receiver` into the store and
index ``linetap-office web`` reads. tests/test_web_browser.py plays it in Chromium.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient

from headoffice import enroll
from headoffice.accounts import Accounts
from headoffice.authz import Role, Scope
from headoffice.config import OfficeConfig
from headoffice.index import Index, open_index
from headoffice.receiver import Receiver
from headoffice.store import FileBlobStore
from headoffice.web.app import create_app
from headoffice.web.audio import MIME_TYPES, peaks_json
from headoffice.web.routes_audio import Playback
from sealedrec.age import load_identities
from sealedrec.keys import load_device_key
from sealedrec.protocol import (
    SHA256_PROPERTY,
    AckStatus,
    Fin,
    Init,
    chunk_topic,
    fin_topic,
    init_topic,
)
from sealedrec.verify import decrypt_samples
from tests.conftest import VENV_BIN
from tests.dtmf_signals import dial
from tests.helpers import START_UTC, config_text, espeak_word, replay_argv
from tests.office_accounts import CHEAP, Login, add_account, leaves
from tests.test_call_metadata import RATE, fsk_caller_id
from tests.test_receiver_hostile import ack_of
from tests.test_web import sign_in

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "firmware" / "samples"
DEVICE = "test-device"  # config_text's device id
CHUNK = 16 * 1024


@dataclass
class SealedOffice:
    root: Path
    recipient: str
    cfg: OfficeConfig
    index: Index
    store: FileBlobStore
    manifest: dict[str, Any]
    reviewer: Login  # scoped to DEVICE
    outsider: Login  # a reviewer scoped to another device
    auditor: Login  # sees metadata, may not listen
    others: list[dict[str, Any]] = field(default_factory=list)  # the second site's manifests

    @property
    def rec(self) -> str:
        return str(self.manifest["recording_id"])

    def client(self) -> TestClient:
        accounts = Accounts(self.index, self.cfg.accounts)
        app = create_app(self.cfg, self.index, self.store, accounts=accounts)
        return TestClient(app, follow_redirects=False)

    def samples(self) -> np.ndarray:
        record = self.index.get(self.rec)
        assert record is not None
        with self.store.local_blob(record.path) as path:
            return decrypt_samples(path, "age", load_identities(self.root / "keys" / "office.key"))


def receive(receiver: Receiver, entry: Path) -> dict[str, Any]:
    """Upload one outbox entry to the receiver as the device's uploader does."""
    manifest: dict[str, Any] = json.loads((entry / "manifest.json").read_text())
    blob = next(p for p in entry.iterdir() if p.name.startswith("recording.")).read_bytes()
    device, rec = manifest["device_id"], manifest["recording_id"]
    sha = hashlib.sha256(blob).hexdigest()
    receiver.handle(init_topic(device, rec), Init(rec, manifest, len(blob), sha, CHUNK).encode())
    for i in range(0, len(blob), CHUNK):
        data = blob[i : i + CHUNK]
        prop = [(SHA256_PROPERTY, hashlib.sha256(data).hexdigest())]
        receiver.handle(chunk_topic(device, rec, i // CHUNK), data, prop)
    fin = Fin(rec, sha, -(-len(blob) // CHUNK)).encode()
    assert ack_of(receiver.handle(fin_topic(device, rec), fin)).status is AckStatus.STORED
    return manifest


SECOND_DEVICE = "branch-2"  # the second site's device (build_sealed_office(second_site=True))
SITES = {"north": (DEVICE,), "south": (SECOND_DEVICE,)}
#: The synthesized call of the second site: who calls, and the card number keyed in.
SYNTH_CALLER = ("5551234567", "ALICE SMITH")
SYNTH_DIGITS = "4111111111111111"


def synth_call(tmp: Path) -> tuple[Path, Path]:
    """12 s of one line made of signals nobody here wrote: FSK caller ID (minimodem), a
    greeting from espeak-ng and a card number keyed as DTMF (sox); the call goes off-hook
    at 1.5 s and on-hook at 11 s. Returns the audio file and the events script."""
    line = np.zeros(12 * RATE, dtype=np.int16)
    burst = fsk_caller_id(*SYNTH_CALLER)
    line[RATE // 2 : RATE // 2 + burst.size] += burst
    speech = (espeak_word("thank you for calling, your card number please", RATE) // 4).astype(
        np.int16
    )[: 4 * RATE]
    line[2 * RATE : 2 * RATE + speech.size] += speech
    tones, _spans = dial(SYNTH_DIGITS, RATE, on_s=0.08, off_s=0.08)
    line[7 * RATE : 7 * RATE + tones.size] += tones
    audio, events = tmp / "synth.wav", tmp / "synth.events"
    soundfile.write(audio, line, RATE, subtype="PCM_16")
    events.write_text("1.5 line1 offhook\n11 line1 onhook\n")
    return audio, events


def replay_sealed(tmp: Path, device: str, recipient: str, audio: Path, events: Path) -> Path:
    """``linetap replay --format sealed`` of one call as ``device``; its outbox entry."""
    conf = tmp / f"{device}.toml"
    text = config_text(tmp / "wav", lines=1, storage_format="sealed", recipients=(recipient,))
    conf.write_text(text.replace(f'device_id = "{DEVICE}"', f'device_id = "{device}"', 1))
    out = tmp / f"{device}-out"
    run = subprocess.run(
        [
            str(VENV_BIN / "linetap"),
            *replay_argv(conf, audio, events, out, "--format", "sealed", "--start-utc", START_UTC),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    [entry] = sorted((out / "outbox" / "sealed").iterdir())
    return entry


def build_sealed_office(tmp: Path, *, second_site: bool = False) -> SealedOffice:
    """The office of the module docstring, under ``tmp``: root ``tmp/office`` (index in
    ``index.sqlite3`` there, as ``linetap-office web`` finds it by default). With
    ``second_site``, a second device (site "south") has sent the call of
    :func:`synth_call` too."""
    setup = enroll.init_ca(tmp / "office", "Test Office")
    calls = [(DEVICE, SAMPLES / "sample_call.flac", SAMPLES / "sample_call.events")]
    if second_site:
        calls.append((SECOND_DEVICE, *synth_call(tmp)))
    entries = [replay_sealed(tmp, dev, setup.recipient, a, e) for dev, a, e in calls]
    keys = {
        dev: load_device_key(entry.parents[2] / "keys" / "device.key").public_key()
        for (dev, _a, _e), entry in zip(calls, entries, strict=True)
    }
    cfg = OfficeConfig(root=setup.root, accounts=CHEAP, sites=SITES if second_site else {})
    index = open_index(cfg.index_url)
    store = FileBlobStore(cfg.root)
    receiver = Receiver(store, index, keys.__getitem__, cfg.limits, frozenset({setup.recipient}))
    manifest, *others = [receive(receiver, entry) for entry in entries]
    assert len(manifest["masked_spans"]) > 1  # the keyed-in card number
    reviewer = add_account(
        index, "rita", [Role.REVIEWER], Scope(devices=frozenset({DEVICE})), settings=CHEAP
    )
    outsider = add_account(
        index, "olga", [Role.REVIEWER], Scope(devices=frozenset({"elsewhere"})), settings=CHEAP
    )
    auditor = add_account(index, "aud", [Role.AUDITOR], settings=CHEAP)
    return SealedOffice(
        setup.root, setup.recipient, cfg, index, store, manifest, reviewer, outsider, auditor,
        others,
    )  # fmt: skip


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory):
    o = build_sealed_office(tmp_path_factory.mktemp("playback"))
    yield o
    o.index.close()


def listen_leaves(o: SealedOffice) -> list[dict[str, Any]]:
    return [leaf for leaf in leaves(o.index, "access") if leaf["action"] == "listen"]


def signed_in(o: SealedOffice, login: Login) -> TestClient:
    client = o.client()
    sign_in(client, login)
    return client


# -- the audio ------------------------------------------------------------------------------
def test_the_whole_file_decodes_to_the_sealed_samples(office: SealedOffice):
    client = signed_in(office, office.reviewer)
    r = client.get(f"/recordings/{office.rec}/audio")
    assert r.status_code == 200
    assert r.headers["content-type"] == MIME_TYPES["flac"] == "audio/flac"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["accept-ranges"] == "bytes"
    assert int(r.headers["content-length"]) == len(r.content)
    played, rate = soundfile.read(io.BytesIO(r.content), dtype="int16")
    assert rate == 8000
    np.testing.assert_array_equal(played, office.samples())
    assert played.shape[0] == office.manifest["audio_frames"]


def test_range_requests_get_206_with_the_right_bytes(office: SealedOffice):
    client = signed_in(office, office.reviewer)
    whole = client.get(f"/recordings/{office.rec}/audio").content
    size = len(whole)
    cases = {
        "bytes=0-": (0, size - 1),
        "bytes=0-1023": (0, 1023),
        "bytes=100-199": (100, 199),
        f"bytes={size - 10}-": (size - 10, size - 1),
        "bytes=-500": (size - 500, size - 1),
        f"bytes=1000-{size * 2}": (1000, size - 1),  # clamped to the end
    }
    for header, (first, last) in cases.items():
        r = client.get(f"/recordings/{office.rec}/audio", headers={"Range": header})
        assert r.status_code == 206, header
        assert r.content == whole[first : last + 1], header
        assert r.headers["content-range"] == f"bytes {first}-{last}/{size}", header
        assert r.headers["content-length"] == str(last - first + 1), header
        assert r.headers["content-type"] == "audio/flac", header
        assert r.headers["accept-ranges"] == "bytes", header
        assert r.headers["cache-control"] == "no-store", header


def test_an_unsatisfiable_range_gets_416(office: SealedOffice):
    client = signed_in(office, office.reviewer)
    size = len(client.get(f"/recordings/{office.rec}/audio").content)
    for header in (f"bytes={size}-", f"bytes={size + 100}-{size + 200}", "bytes=-0"):
        r = client.get(f"/recordings/{office.rec}/audio", headers={"Range": header})
        assert r.status_code == 416, header
        assert r.headers["content-range"] == f"bytes */{size}", header
        assert r.content == b""
    # A Range the server may ignore (several ranges, another unit) gets the whole file.
    r = client.get(f"/recordings/{office.rec}/audio", headers={"Range": "bytes=0-1,5-9"})
    assert r.status_code == 200 and len(r.content) == size


def test_plain_audio_never_touches_the_office_disk(office: SealedOffice):
    client = signed_in(office, office.reviewer)
    audio = client.get(f"/recordings/{office.rec}/audio").content
    head = audio[:4096]
    assert head.startswith(b"fLaC")
    for path in office.root.rglob("*"):
        if path.is_file():
            assert head not in path.read_bytes(), path


# -- who may listen -------------------------------------------------------------------------
def test_a_reviewer_out_of_scope_gets_404_and_a_ledger_leaf(office: SealedOffice):
    client = signed_in(office, office.outsider)
    before = len(listen_leaves(office))
    for what in ("audio", "peaks"):
        r = client.get(f"/recordings/{office.rec}/{what}", headers={"Range": "bytes=0-"})
        assert r.status_code == 404, what
        assert b"fLaC" not in r.content and office.rec not in r.text
    missing = client.get("/recordings/no-such-recording/audio")
    assert missing.status_code == 404 and missing.text == r.text  # a guess tells nothing
    new = listen_leaves(office)[before:]
    assert [(leaf["user"], leaf["recording_id"]) for leaf in new] == [
        ("olga", office.rec),
        ("olga", office.rec),
        ("olga", None),
    ]
    assert all(str(leaf["detail"]).startswith("refused") for leaf in new)


def test_an_auditor_may_see_the_page_but_not_listen(office: SealedOffice):
    client = signed_in(office, office.auditor)
    page = client.get(f"/recordings/{office.rec}")
    assert page.status_code == 200
    assert 'data-may-listen="false"' in page.text
    assert "does not include listening" in page.text and "player.js" not in page.text
    before = len(listen_leaves(office))
    for what in ("audio", "peaks"):
        r = client.get(f"/recordings/{office.rec}/{what}")
        assert r.status_code == 403, what  # in scope, but the role lacks the right
        assert b"fLaC" not in r.content and "peaks" not in r.text
    new = listen_leaves(office)[before:]
    assert len(new) == 2 and all(str(leaf["detail"]).startswith("refused") for leaf in new)


def test_no_session_no_bytes(office: SealedOffice):
    client = office.client()
    for what in ("audio", "peaks"):
        r = client.get(f"/recordings/{office.rec}/{what}")
        assert r.status_code == 303 and r.headers["location"] == "/login", what
        assert r.content == b""


def test_one_listen_leaf_per_playback_not_per_range(office: SealedOffice):
    client = signed_in(office, office.reviewer)
    before = len(listen_leaves(office))
    assert client.get(f"/recordings/{office.rec}/peaks").status_code == 200
    for header in ("bytes=0-", "bytes=4096-", "bytes=100000-", "bytes=0-"):
        r = client.get(f"/recordings/{office.rec}/audio", headers={"Range": header})
        assert r.status_code == 206
    new = listen_leaves(office)[before:]
    assert len(new) == 1
    assert (new[0]["user"], new[0]["recording_id"]) == ("rita", office.rec)
    assert new[0]["detail"] == "web: waveform peaks"
    # Another session is another playback: its own leaf.
    other = signed_in(office, office.reviewer)
    assert other.get(f"/recordings/{office.rec}/audio").status_code == 200
    new = listen_leaves(office)[before:]
    assert len(new) == 2 and new[1]["detail"] == "web: play audio"
    assert new[0]["session"] != new[1]["session"]


def test_a_grant_expires_and_a_signed_out_session_gets_nothing(
    office: SealedOffice, monkeypatch: pytest.MonkeyPatch
):
    client = signed_in(office, office.reviewer)
    url = f"/recordings/{office.rec}/audio"
    before = len(listen_leaves(office))
    assert client.get(url, headers={"Range": "bytes=0-"}).status_code == 206
    import headoffice.web.routes_audio as routes

    monkeypatch.setattr(routes, "GRANT_S", 0.0)
    assert client.get(url, headers={"Range": "bytes=5000-"}).status_code == 206
    assert len(listen_leaves(office)) == before + 2  # the window closed: logged again
    monkeypatch.undo()

    home = client.get("/")
    token = re.search(r'name="csrf" value="([0-9a-f]{64})"', home.text)
    assert token
    assert client.post("/logout", data={"csrf": token.group(1)}).status_code == 303
    r = client.get(url, headers={"Range": "bytes=6000-"})
    assert r.status_code == 303 and r.content == b""


# -- the waveform ---------------------------------------------------------------------------
def test_peaks_json_shape_and_masked_regions(office: SealedOffice):
    client = signed_in(office, office.reviewer)
    r = client.get(f"/recordings/{office.rec}/peaks")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    data = r.json()
    assert set(data) == {"peaks", "duration", "regions"}
    [channel] = data["peaks"]
    assert data["duration"] == pytest.approx(office.manifest["duration_ms"] / 1000, abs=0.01)
    assert len(channel) == 2 * round(data["duration"] * 100)  # max/min per 10 ms
    assert all(-1.0 <= v <= 1.0 for v in channel)
    assert max(channel) > 0.05  # there is speech in it
    assert data["regions"] == [
        {"start": s["start_ms"] / 1000, "end": s["end_ms"] / 1000}
        for s in office.manifest["masked_spans"]
    ]
    assert data == json.loads(
        json.dumps(peaks_json(office.samples(), 8000, masked_spans=office.manifest["masked_spans"]))
    )


def test_the_recording_page_carries_the_player(office: SealedOffice):
    client = signed_in(office, office.reviewer)
    page = client.get(f"/recordings/{office.rec}")
    assert page.status_code == 200
    assert 'data-may-listen="true"' in page.text and "not available" not in page.text
    assert '<script src="/static/player.js" defer></script>' in page.text
    assert "wavesurfer.js-8.0.1/regions.min.js" in page.text
    for label in ("Back 10 seconds", "Play", "Forward 10 seconds"):
        assert f'aria-label="{label}"' in page.text
    assert '<label for="player-speed">' in page.text
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text) and " style=" not in page.text
    js = client.get("/static/player.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]


def test_a_recording_without_an_identity_says_so(office: SealedOffice, tmp_path: Path):
    cfg = office.cfg.model_copy(update={"root": tmp_path})  # no keys/office.key here
    app = create_app(cfg, office.index, office.store, accounts=Accounts(office.index, CHEAP))
    client = TestClient(app, follow_redirects=False)
    sign_in(client, office.reviewer)
    playback: Playback = app.state.playback
    r = client.get(f"/recordings/{office.rec}/audio")
    assert r.status_code == 503 and "office identity" in r.text
    assert len(playback.cache) == 0
