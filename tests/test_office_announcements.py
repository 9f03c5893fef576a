"""The office side of recording announcements: indexed from the manifest's ``announce``
events on both index backends, searchable (``announced``), shown by ``show``, dropped
with the recording on erasure, and a malformed event never costs the recording."""

from __future__ import annotations

import io
from typing import Any

from headoffice.index import Index, announcements
from headoffice.query import cmd_show
from tests.test_office_index import Device, index, index_url, pg_dsn  # noqa: F401 - fixtures
from tests.test_web_search import gate, run


def tone(n: int, at_ms: int, *, played: bool = True, error: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "announce", "at_ms": at_ms, "audio_ms": at_ms,
        "kind": "tone", "hz": 1400, "ms": 500, "n": n, "played": played,
    }  # fmt: skip
    if error:
        event["error"] = error
    return event


PROMPT = {
    "type": "announce", "at_ms": 0, "audio_ms": 0,
    "kind": "prompt", "file": "greeting.wav", "sha256": "b" * 64, "ms": 4200, "n": 1,
    "played": True,
}  # fmt: skip
FAILED = "announce.device 'hw:CARD=linetap': cannot open playback device (No such device)"
LONG = FAILED + "; " + "x" * 400


def fill(idx: Index) -> dict[str, str]:
    dev = Device("dev-ann")
    made = {
        "told": dev.manifest(events=[PROMPT, tone(1, 4200), tone(2, 19200)]),
        "failed": dev.manifest(events=[tone(1, 0, played=False, error=FAILED)]),
        "long": dev.manifest(events=[tone(1, 0, played=False, error=LONG)]),
        "plain": dev.manifest(events=[{"type": "flash", "at_ms": 3000, "audio_ms": 3000}]),
        # Hostile or broken events: the recording is stored, the events are not indexed.
        "garbage": dev.manifest(
            events=[
                {"type": "announce", "at_ms": "soon", "kind": "tone", "n": 1, "played": True},
                {"type": "announce", "at_ms": 1000, "kind": "siren", "n": 1, "played": True},
                {"type": "announce", "at_ms": 2000, "kind": "tone", "n": 1, "played": "yes"},
                {"type": "announce", "at_ms": -5, "kind": "tone", "n": 2, "played": True},
            ]
        ),
    }  # fmt: skip
    for m in made.values():
        idx.add(m, "p")
    return {name: m["recording_id"] for name, m in made.items()}


def test_announced_filter_and_show(index: Index):  # noqa: F811 - the fixture
    rec = fill(index)
    told = {r.recording_id for r in run(index, announced="true").rows}
    assert told == {rec["told"]}
    untold = {r.recording_id for r in run(index, announced="false").rows}
    assert untold == {rec["failed"], rec["long"], rec["plain"], rec["garbage"]}

    out = io.StringIO()
    assert cmd_show(index, gate(index), rec["told"], out=out) == 0
    fields = dict(line.split(None, 1) for line in out.getvalue().splitlines())
    assert fields["announced"] == (
        "prompt greeting.wav at 0.0 s; 2 1400 Hz tone(s), first at 4.2 s"
    )
    out = io.StringIO()
    assert cmd_show(index, gate(index), rec["failed"], out=out) == 0
    fields = dict(line.split(None, 1) for line in out.getvalue().splitlines())
    assert fields["announced"] == f"1 NOT played (first: tone at 0.0 s: {FAILED})"
    out = io.StringIO()
    assert cmd_show(index, gate(index), rec["plain"], out=out) == 0
    fields = dict(line.split(None, 1) for line in out.getvalue().splitlines())
    assert fields["announced"] == "none"


def test_rows_match_the_manifest_and_bad_events_are_skipped(index: Index):  # noqa: F811
    rec = fill(index)
    with index.transaction(False) as q:
        rows = q(
            "SELECT recording_id, kind, n, at_ms, played, error FROM announcements "
            "ORDER BY recording_id, kind, n",
            (),
        )
    got = {(str(r[0]), str(r[1]), int(r[2]), int(r[3]), bool(r[4]), r[5]) for r in rows}
    assert got == {
        (rec["told"], "prompt", 1, 0, True, None),
        (rec["told"], "tone", 1, 4200, True, None),
        (rec["told"], "tone", 2, 19200, True, None),
        (rec["failed"], "tone", 1, 0, False, FAILED),
        (rec["long"], "tone", 1, 0, False, LONG[: announcements.MAX_ERROR]),
    }
    stored = index.get(rec["garbage"])
    assert stored is not None and len(stored.manifest["events"]) == 4  # kept as signed


def test_announcements_of_is_bounded_and_typed():
    many = {"recording_id": "r", "events": [tone(n, n * 15_000) for n in range(1, 10_050)]}
    found = announcements.announcements_of(many)
    assert len(found) == announcements.MAX_ROWS
    assert announcements.announcements_of({"events": "not a list"}) == []
    assert announcements.announcements_of({"events": [True, None, 3]}) == []
    assert announcements.announcements_of({}) == []
