"""The web search page's server time at 10^5 recordings, SQLite and PostgreSQL.

Fills an SQLite index (a temp file) and a PostgreSQL database of its own (made for the
bench and dropped after; see :func:`bench.ledger_cost.pg_database`) with ``--rows``
synthetic recordings (default 10^5), inserted in bulk with realistic values: 50 devices of
2-4 lines, caller numbers and names (some withheld), dialled digits, durations (log-normal,
a few seconds to an hour), start times over a year, the manifest JSON each row carries.
Review marks (notes, reviewed, holds, QA scores) go on a share of them
(:func:`fill_review`). Then times :func:`headoffice.web.search.search_page` (the gate's ``search`` leaf, the COUNT
and the page SELECT, rows turned into objects: everything the server does for a page but
render it) for typical pages, each repeated; min and median per page, goal < 200 ms.

The peer is the same query without the search indexes (``SEARCH_INDEXES`` of
headoffice/index/schema.py): interleaved, each round runs every page with the indexes,
drops them, runs every page again, recreates them. The ratio is peer / ours (median).

    .venv/bin/python bench/search_page.py [--rows 100000] [--rounds 3] [--reps 5] [--plans]
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ledger_cost import pg_database  # noqa: E402 - after the path (a sibling script)

from headoffice.access import Actor, Gate  # noqa: E402
from headoffice.authz import DeviceLine, Principal, Role, Scope  # noqa: E402
from headoffice.config import OfficeConfig  # noqa: E402
from headoffice.index import Index, open_index  # noqa: E402
from headoffice.index.schema import SEARCH_INDEXES  # noqa: E402
from headoffice.web.search import SearchFilters, order_by, search_page, where_clause  # noqa: E402

DEVICES = [f"shop-{n:02d}" for n in range(1, 51)]
SITES = {f"site-{s}": tuple(DEVICES[s * 10 : s * 10 + 10]) for s in range(5)}
NAMES = ["Müller AG", "Meier GmbH", "ACME Ltd", "Rossi & Figli", "Dupont SA", "Smith",
         "Schneider", "Fischer", "Weber", "Keller Transport", "Bianchi", "Martin", "Garcia"]  # fmt: skip
START = datetime(2025, 12, 1, tzinfo=UTC)
COLUMNS = (
    "recording_id", "device_id", "line", "seq", "started_utc", "ended_utc", "duration_ms",
    "caller_number", "caller_name", "dialled_digits", "direction", "recovered", "discarded",
    "codec", "container", "blob_sha256", "blob_bytes", "path", "manifest", "manifest_sha256",
    "stored_at",
)  # fmt: skip


def synthetic_rows(n: int, seed: int = 1) -> Iterator[tuple[Any, ...]]:
    rnd = random.Random(seed)
    lines = {d: [f"line{k}" for k in range(1, rnd.randint(2, 4) + 1)] for d in DEVICES}
    seqs = dict.fromkeys(DEVICES, 0)
    numbers = [f"+41 {rnd.randint(21, 91)} {rnd.randint(100, 999)} {rnd.randint(10, 99)} "
               f"{rnd.randint(10, 99)}" for _ in range(5000)]  # fmt: skip
    for _ in range(n):
        device = rnd.choice(DEVICES)
        seqs[device] += 1
        started = START + timedelta(seconds=rnd.uniform(0, 365 * 86400))
        duration = int(min(3_600_000, max(2_000, rnd.lognormvariate(11.5, 1.0))))
        ended = started + timedelta(milliseconds=duration)
        withheld = rnd.random() < 0.15
        number = None if withheld else rnd.choice(numbers)
        name = None if withheld or rnd.random() < 0.3 else rnd.choice(NAMES)
        direction = rnd.choices(["inbound", "outbound", "unknown"], [6, 3, 1])[0]
        digits = "".join(rnd.choice("0123456789") for _ in range(rnd.randint(3, 11)))
        digits = digits if direction == "outbound" else ""
        rec = str(uuid.UUID(int=rnd.getrandbits(128)))
        blob = secrets.token_hex(32)
        manifest = {
            "version": 1, "recording_id": rec, "device_id": device, "device_key_id": "k1",
            "line": rnd.choice(lines[device]), "channel": 0, "seq": seqs[device],
            "prev_manifest_sha256": secrets.token_hex(32),
            "started_utc": started.isoformat(timespec="milliseconds"),
            "ended_utc": ended.isoformat(timespec="milliseconds"), "duration_ms": duration,
            "trigger": "offhook", "end_reason": "onhook", "direction": direction,
            "caller_id": None if withheld else {"number": number, "name": name, "source": "fsk"},
            "dialled_digits": digits, "masked_spans": [], "consent_events": [], "events": [],
            "codec": "flac", "container": "age", "sample_rate": 8000,
            "audio_frames": duration * 8, "audio_pcm_sha256": secrets.token_hex(32),
            "blob_sha256": blob, "blob_bytes": duration * 4, "recovered": rnd.random() < 0.02,
            "discarded": False, "signature": secrets.token_hex(64),
        }  # fmt: skip
        yield (
            rec, device, manifest["line"], seqs[device], manifest["started_utc"],
            manifest["ended_utc"], duration, number, name, digits, direction,
            manifest["recovered"], False, "flac", "age", blob, duration * 4,
            f"/srv/linetap/store/{device}/{rec}.age", json.dumps(manifest, sort_keys=True),
            secrets.token_hex(32), (ended + timedelta(seconds=5)).isoformat(timespec="milliseconds"),
        )  # fmt: skip


def fill_sqlite(path: Path, n: int) -> None:
    import sqlite3

    conn = sqlite3.connect(path)
    marks = ", ".join("?" for _ in COLUMNS)
    with conn:
        conn.executemany(
            f"INSERT INTO recordings ({', '.join(COLUMNS)}) VALUES ({marks})",
            ((*r[:11], int(r[11]), int(r[12]), *r[13:]) for r in synthetic_rows(n)),
        )
    conn.execute("ANALYZE")
    conn.close()


def fill_pg(dsn: str, n: int) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY recordings ({', '.join(COLUMNS)}) FROM STDIN") as copy,
        ):
            for row in synthetic_rows(n):
                copy.write_row(row)
        conn.execute("VACUUM ANALYZE recordings")


def fill_review(index: Index, seed: int = 2) -> None:
    """Review marks on a share of the recordings, as a busy QA team leaves them: notes on
    3 %, reviewed marks on 10 %, legal holds on 1 % (a tenth of them released) and one or
    two QA evaluations on 5 % (scores spread over 0-100 %, 5 % of them failed)."""
    rnd = random.Random(seed)
    with index.transaction(False) as q:
        ids = [r for (r,) in q("SELECT recording_id FROM recordings", ())]
    when = "2026-12-01T00:00:00.000+00:00"
    with index.transaction(True) as q:
        q(
            "INSERT INTO qa_forms (name, version, definition, created_by, created_at)"
            " VALUES ('bench', 1, '{}', 'bench', ?)",
            (when,),
        )
        [(form,)] = q("SELECT id FROM qa_forms WHERE name = 'bench'", ())
        for rid in ids:
            x = rnd.random()
            if x < 0.03:
                q(
                    "INSERT INTO notes (recording_id, author, at_ms, kind, text, created_at)"
                    " VALUES (?, 'rev', 1000, 'note', 'check this', ?)",
                    (rid, when),
                )
            if x < 0.10:
                q("INSERT INTO reviews VALUES (?, 'rev', ?)", (rid, when))
            if rnd.random() < 0.01:
                q(
                    "INSERT INTO holds (recording_id, case_ref, reason, set_by, set_at,"
                    " released_at) VALUES (?, 'C-1', 'dispute', 'cmp', ?, ?)",
                    (rid, when, when if rnd.random() < 0.1 else None),
                )
            for _ in range(rnd.choice((1, 1, 2)) if rnd.random() < 0.05 else 0):
                failed = rnd.random() < 0.05
                score = 0 if failed else rnd.randrange(0, 10_001)
                q(
                    "INSERT INTO qa_evaluations (recording_id, form_id, evaluator, agent,"
                    " device_id, line, call_started_utc, raw_bp, score_bp, failed, answers,"
                    " created_at) VALUES (?, ?, 'rev', 'agent', 'd', 'l', ?, ?, ?, ?, '{}', ?)",
                    (rid, form, when, score, score, failed, when),
                )
        q("ANALYZE", ())


def set_indexes(index: Index, present: bool) -> None:
    with index.transaction(True) as q:
        for name, what in SEARCH_INDEXES.items():
            if present:
                q(f"CREATE INDEX IF NOT EXISTS {name} ON {what}", ())
            else:
                q(f"DROP INDEX IF EXISTS {name}", ())
        q("ANALYZE", ())


def gate(index: Index, principal: Principal) -> Gate:
    cfg = OfficeConfig(sites=SITES)
    return Gate(index, cfg, Actor(principal, "bench", "bench"))


SUPERVISOR = Principal("sup", frozenset({Role.SUPERVISOR}), Scope.all())
REVIEWER = Principal(
    "rev",
    frozenset({Role.REVIEWER}),
    Scope(sites=frozenset({"site-1"}), lines=frozenset({DeviceLine("shop-40", "line1")})),
)
CASES: list[tuple[str, Principal, dict[str, str]]] = [
    ("first page, unfiltered (newest first)", SUPERVISOR, {}),
    ("date range (2 weeks)", SUPERVISOR, {"since": "2026-03-01", "until": "2026-03-15"}),
    ("device + line", SUPERVISOR, {"device": "shop-07", "line": "line2"}),
    ("caller substring ('meier')", SUPERVISOR, {"caller": "meier"}),
    ("caller substring (number '555')", SUPERVISOR, {"caller": "555"}),
    ("duration 10-15 min", SUPERVISOR, {"min_duration": "600", "max_duration": "900"}),
    ("sort by duration, longest first", SUPERVISOR, {"sort": "duration"}),
    ("sort by caller, page 40", SUPERVISOR, {"sort": "caller", "order": "asc", "page": "40"}),
    ("scoped reviewer (1 site + 1 line)", REVIEWER, {}),
    ("scoped reviewer, date range", REVIEWER, {"since": "2026-06-01", "until": "2026-07-01"}),
    ("not reviewed yet", SUPERVISOR, {"reviewed": "false"}),
    ("reviewed, with notes", SUPERVISOR, {"reviewed": "true", "has_notes": "true"}),
    ("on legal hold", SUPERVISOR, {"on_hold": "true"}),
    ("QA score 0-60 %", SUPERVISOR, {"min_score": "0", "max_score": "60"}),
    ("scoped reviewer, not reviewed", REVIEWER, {"reviewed": "false"}),
]


def run_cases(index: Index, reps: int, into: dict[str, list[float]]) -> None:
    for what, principal, params in CASES:
        filters = SearchFilters.from_query(params)
        g = gate(index, principal)
        for _ in range(reps):
            start = time.perf_counter()
            search_page(index, g, filters, SITES)
            into.setdefault(what, []).append(time.perf_counter() - start)


def plans(index: Index, pg: bool) -> None:
    for what, principal, params in CASES:
        filters = SearchFilters.from_query(params)
        where, args = where_clause(filters, principal, {k: frozenset(v) for k, v in SITES.items()})
        sql = f"SELECT recording_id FROM recordings{where}{order_by(filters)} LIMIT 50"
        explain = "EXPLAIN " if pg else "EXPLAIN QUERY PLAN "
        with index.transaction(False) as q:
            rows = q(explain + sql, args)
        text = [str(r[0]) if pg else str(r[-1]) for r in rows]
        print(f"    {what}:\n      " + "\n      ".join(text))


def bench(name: str, url: str, fill: Callable[[], None], args: argparse.Namespace) -> None:
    with open_index(url) as index:  # the schema, with the search indexes
        pass
    start = time.perf_counter()
    fill()
    with open_index(url) as index:
        fill_review(index)
    print(f"{name}: {args.rows} recordings inserted in {time.perf_counter() - start:.1f} s")
    ours: dict[str, list[float]] = {}
    peer: dict[str, list[float]] = {}
    with open_index(url) as index:
        run_cases(index, 1, {})  # warm the caches
        if args.plans:
            print("  plans with the search indexes:")
            plans(index, name == "PostgreSQL")
        for _ in range(args.rounds):
            run_cases(index, args.reps, ours)
            set_indexes(index, False)
            run_cases(index, args.reps, peer)
            set_indexes(index, True)
        if args.plans:
            set_indexes(index, False)
            print("  plans without them:")
            plans(index, name == "PostgreSQL")
            set_indexes(index, True)
    for what, _, _ in CASES:
        o, p = ours[what], peer[what]
        flag = "" if statistics.median(o) < 0.2 else "  OVER 200 ms"
        print(
            f"  {what:<40} min {min(o) * 1000:7.1f} median {statistics.median(o) * 1000:7.1f} ms"
            f"   no-index peer min {min(p) * 1000:7.1f} median {statistics.median(p) * 1000:7.1f}"
            f" ms   ratio {statistics.median(p) / statistics.median(o):6.1f}{flag}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--plans", action="store_true", help="print the query plans")
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    args = parser.parse_args()
    if args.only != "postgresql":
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "index.sqlite3")
            bench("SQLite", f"sqlite:///{path}", lambda: fill_sqlite(path, args.rows), args)
    if args.only != "sqlite":
        with pg_database() as dsn:
            if dsn is None:
                print("PostgreSQL: no server reachable here; skipped")
            else:
                bench("PostgreSQL", dsn, lambda: fill_pg(dsn, args.rows), args)


if __name__ == "__main__":
    main()
