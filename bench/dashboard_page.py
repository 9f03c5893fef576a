"""The KPI dashboard's server time at 10^5 recordings, SQLite and PostgreSQL.

Fills the indexes as bench/search_page.py does (its helpers: 50 devices on 5 sites, start
times over a year from 2025-12-01, log-normal durations), then evaluates about 5 % of the
recordings (two QA forms of 3 sections, an evaluation row and a row per section each,
with SQL as the scorecards store writes them). Times what the server does for a page but
render the template: :func:`headoffice.web.dashboard.dashboard` (the gate's ``search``
leaf, the four GROUP BY queries, the dataclasses) and
:func:`headoffice.web.routes_dashboard.dashboard_charts` (the three SVGs), for typical
periods and viewers, each repeated; min and median per case, goal < 200 ms (``OVER``
marks a median above it).

The schema's start-order search index carries ``line`` and ``duration_ms`` after its sort
columns (``recordings_started_cover``), so the period counts read the index alone. The
peer is the same schema with the plain start-order index instead (:data:`PEER_INDEX`,
what the search alone needs): each call's wide row (with its manifest) is read for its
duration and line. Interleaved: each round runs every case with ours, swaps the index
for the peer's, runs them again, swaps back. The ratio is peer / ours (median).

    .venv/bin/python bench/dashboard_page.py [--rows 100000] [--rounds 3] [--reps 3] [--only sqlite]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ledger_cost import pg_database  # noqa: E402 - after the path (a sibling script)
from search_page import REVIEWER, SUPERVISOR, fill_pg, fill_sqlite, gate  # noqa: E402

from headoffice.authz import Principal  # noqa: E402
from headoffice.index import Index, open_index  # noqa: E402
from headoffice.index.schema import SEARCH_INDEXES  # noqa: E402
from headoffice.web.dashboard import DashboardFilters, dashboard  # noqa: E402
from headoffice.web.routes_dashboard import dashboard_charts  # noqa: E402

FORMS = {
    "Greeting": ("Opening", "Needs", "Close"),
    "Compliance": ("Identity", "Disclosure", "Tone"),
}
EVALUATED = 0.05
OURS = "recordings_started_cover"
PEER_INDEX = (
    "CREATE INDEX IF NOT EXISTS recordings_started_order "
    "ON recordings (started_utc, device_id, seq, recording_id)"
)

CASES: list[tuple[str, Principal, DashboardFilters]] = [
    ("30 days, everything", SUPERVISOR, DashboardFilters(date(2026, 10, 2), date(2026, 11, 1))),
    ("30 days, scoped reviewer", REVIEWER, DashboardFilters(date(2026, 10, 2), date(2026, 11, 1))),
    (
        "90 days, one site",
        SUPERVISOR,
        DashboardFilters(date(2026, 8, 3), date(2026, 11, 1), site="site-2"),
    ),
    ("366 days, everything", SUPERVISOR, DashboardFilters(date(2025, 11, 30), date(2026, 12, 1))),
    (
        "366 days, one device + line",
        SUPERVISOR,
        DashboardFilters(date(2025, 11, 30), date(2026, 12, 1), device="shop-07", line="line2"),
    ),
    (
        "366 days, scoped reviewer",
        REVIEWER,
        DashboardFilters(date(2025, 11, 30), date(2026, 12, 1)),
    ),
]


def fill_evaluations(index: Index, seed: int = 2) -> int:
    """Evaluate about EVALUATED of the recordings; the number of evaluations."""
    rnd = random.Random(seed)
    with index.transaction(True) as q:
        form_ids = {}
        for name, sections in FORMS.items():
            [(form_id,)] = q(
                "INSERT INTO qa_forms (name, version, definition, created_by, created_at) "
                "VALUES (?, 1, ?, 'bench', '2025-11-01T00:00:00.000+00:00') RETURNING id",
                (name, json.dumps({"sections": sections})),
            )
            form_ids[name] = int(form_id)
        calls = q(
            "SELECT recording_id, device_id, line, started_utc FROM recordings "
            "ORDER BY recording_id",
            (),
        )
        chosen = [c for c in calls if rnd.random() < EVALUATED]
        for rec, device, line, started in chosen:
            name = rnd.choice(sorted(FORMS))
            score = rnd.randrange(0, 10_001)
            [(eval_id,)] = q(
                "INSERT INTO qa_evaluations (recording_id, form_id, evaluator, agent, device_id, "
                "line, call_started_utc, raw_bp, score_bp, failed, answers, created_at) "
                "VALUES (?, ?, 'bench', ?, ?, ?, ?, ?, ?, ?, '{}', ?) RETURNING id",
                (rec, form_ids[name], line, device, line, started, score, score, score < 5000,
                 started),
            )  # fmt: skip
            for section in FORMS[name]:
                q(
                    "INSERT INTO qa_section_scores (evaluation_id, section, score_bp) "
                    "VALUES (?, ?, ?)",
                    (int(eval_id), section, rnd.randrange(0, 10_001)),
                )
        q("ANALYZE", ())
    return len(chosen)


def bench(name: str, url: str, fill: Callable[[], None], args: argparse.Namespace) -> None:
    with open_index(url):  # the schema, with its indexes
        pass
    start = time.perf_counter()
    fill()
    with open_index(url) as index:
        evaluations = fill_evaluations(index)
        print(
            f"{name}: {args.rows} recordings and {evaluations} evaluations inserted in "
            f"{time.perf_counter() - start:.1f} s"
        )
        run_cases(index, 0, show=True)  # the counts, and warm caches
        ours: dict[str, list[float]] = {}
        peer: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for what, times in run_cases(index, args.reps, show=False).items():
                ours.setdefault(what, []).extend(times)
            swap_index(index, peer=True)
            for what, times in run_cases(index, args.reps, show=False).items():
                peer.setdefault(what, []).extend(times)
            swap_index(index, peer=False)
    for what, _, _ in CASES:
        o, p = ours[what], peer[what]
        flag = "      " if statistics.median(o) < 0.2 else " OVER "
        print(
            f"  {what:<30} min {min(o) * 1000:6.1f} median {statistics.median(o) * 1000:6.1f} ms"
            f"{flag}  peer (no covering columns) min {min(p) * 1000:6.1f} median "
            f"{statistics.median(p) * 1000:6.1f} ms   ratio "
            f"{statistics.median(p) / statistics.median(o):5.1f}"
        )


def swap_index(index: Index, *, peer: bool) -> None:
    """The peer's plain start-order index instead of ours (``peer``), or back."""
    with index.transaction(True) as q:
        if peer:
            q(f"DROP INDEX IF EXISTS {OURS}", ())
            q(PEER_INDEX, ())
        else:
            q("DROP INDEX IF EXISTS recordings_started_order", ())
            q(f"CREATE INDEX IF NOT EXISTS {OURS} ON {SEARCH_INDEXES[OURS]}", ())
        q("ANALYZE", ())


def run_cases(index: Index, reps: int, *, show: bool) -> dict[str, list[float]]:
    """Seconds per case over ``reps`` rounds, after one that warms the caches."""
    times: dict[str, list[float]] = {}
    for rep in range(reps + 1):
        for what, principal, filters in CASES:
            g = gate(index, principal)
            t0 = time.perf_counter()
            d = dashboard(index, g, filters)
            dashboard_charts(d)
            if rep:
                times.setdefault(what, []).append(time.perf_counter() - t0)
            elif show:
                print(f"  {what:<30} {d.current.calls:6} calls, {d.previous.calls:6} before")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
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
