"""What the audit ledger costs: an append per access, `audit verify` and a checkpoint.

1. **Append per access** (SQLite and, when reachable, PostgreSQL): ``Ledger.append`` of an
   access leaf (its own committed transaction, serialised appends, leaf hash) against the
   peer, a plain INSERT of the same row into a table without the ledger's work, in its
   own committed transaction. Interleaved, repeated; min and median per call, and the
   ratio. Both sides run in this process (no start-up on either side).
2. **audit verify** over ``--leaves`` leaves (default 10^6) in a SQLite index: the leaves
   are bulk-inserted first (not timed), then the ledger half of the audit (read every
   row, re-hash it, parse it, recompute the root, check one signed checkpoint) is timed.
3. **Checkpoint**: reading and re-hashing every leaf, signing, storing (the timer's job).

    .venv/bin/python bench/ledger_cost.py [--leaves 1000000] [--appends 500] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from headoffice.index import Index, open_index  # noqa: E402 - after the path
from headoffice.index.records import now_iso  # noqa: E402
from headoffice.ledger.audit import AuditReport, KeptCheckpoint, verify_leaves  # noqa: E402
from headoffice.ledger.checkpoint import make_checkpoint  # noqa: E402
from headoffice.ledger.leaves import AccessLeaf  # noqa: E402
from headoffice.ledger.merkle import leaf_hash  # noqa: E402
from headoffice.ledger.note import generate_signer_key, parse_verifier_key  # noqa: E402
from headoffice.ledger.store import Ledger  # noqa: E402

ORIGIN = "bench.example/ledger"


def access_leaf(n: int) -> AccessLeaf:
    return AccessLeaf(
        user="supervisor1",
        roles=("supervisor",),
        action="listen",
        recording_id=f"0e1b7c2a-9d3f-4b5e-8a61-{n:012d}",
        client="10.1.2.3",
        session="3f2a9c1b7d4e5f60",
        at=now_iso(),
    )


def append_costs(index: Index, rounds: int) -> tuple[list[float], list[float]]:
    ledger = Ledger(index)
    with index.transaction(True) as q:
        q("CREATE TABLE IF NOT EXISTS bench_plain (n BIGINT, body TEXT, at TEXT)", ())
    ours: list[float] = []
    peer: list[float] = []
    for n in range(rounds):
        leaf = access_leaf(n)
        start = time.perf_counter()
        ledger.append(leaf)
        ours.append(time.perf_counter() - start)
        body = leaf.canonical().decode()
        start = time.perf_counter()
        with index.transaction(True) as q:
            q("INSERT INTO bench_plain (n, body, at) VALUES (?, ?, ?)", (n, body, now_iso()))
        peer.append(time.perf_counter() - start)
    return ours, peer


def fill(index: Index, leaves: int) -> None:
    batch = []
    for n in range(leaves):
        body = access_leaf(n).canonical()
        batch.append((n, "access", body.decode(), leaf_hash(body).hex(), "2026-12-06T00:00:00"))
        if len(batch) == 20_000 or n == leaves - 1:
            with index.transaction(True) as q:
                for row in batch:
                    q(
                        "INSERT INTO ledger (idx, kind, body, leaf_sha256, appended_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        row,
                    )
            batch.clear()


def line(what: str, ours: list[float], peer: list[float] | None = None) -> str:
    text = f"{what:<44} min {min(ours) * 1000:8.3f} ms  median {statistics.median(ours) * 1000:8.3f} ms"
    if peer:
        text += (
            f"   peer min {min(peer) * 1000:7.3f} median {statistics.median(peer) * 1000:7.3f} ms"
            f"   ratio (median) {statistics.median(ours) / statistics.median(peer):5.2f}"
        )
    return text


@contextlib.contextmanager
def pg_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database for the bench (dropped after), or None when no
    server answers here."""
    for admin in (
        "postgresql:///postgres?host=/var/run/postgresql",
        "postgresql://127.0.0.1/postgres",
    ):
        try:
            conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
        except psycopg.OperationalError:
            continue
        name = f"linetap_bench_{secrets.token_hex(4)}"
        with conn:
            conn.execute(f"CREATE DATABASE {name}")
            try:
                yield admin.replace("/postgres", f"/{name}", 1)
            finally:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        return
    yield None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--appends", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="10^4 leaves, 100 appends")
    args = parser.parse_args()
    if args.quick:
        args.leaves, args.appends = 10_000, 100
    skey, vkey = generate_signer_key(ORIGIN)
    with tempfile.TemporaryDirectory() as tmp:
        print("1. append per access (own committed transaction each), interleaved with the peer:")
        with open_index(f"sqlite:///{tmp}/append.sqlite3") as index:
            ours, peer = append_costs(index, args.appends)
        print("   " + line("SQLite: Ledger.append vs plain INSERT", ours, peer))
        with pg_database() as url:
            if url is None:
                print("   PostgreSQL: not reachable here, skipped")
            else:
                with open_index(url) as index:
                    ours, peer = append_costs(index, args.appends)
                print("   " + line("PostgreSQL: Ledger.append vs plain INSERT", ours, peer))
        with open_index(f"sqlite:///{tmp}/big.sqlite3") as index:
            start = time.perf_counter()
            fill(index, args.leaves)
            print(
                f"\n(filled {args.leaves:,} leaves in {time.perf_counter() - start:.1f} s, not timed below)"
            )
            ledger = Ledger(index)
            start = time.perf_counter()
            row = make_checkpoint(ledger, ORIGIN, skey)
            took = time.perf_counter() - start
            print(
                f"3. checkpoint of {row.tree_size:,} leaves (read, re-hash, sign, store): {took:.2f} s"
            )
            report = AuditReport()
            start = time.perf_counter()
            verify_leaves(
                ledger,
                [KeptCheckpoint("kept", row.note)],
                origin=ORIGIN,
                vkey=parse_verifier_key(vkey),
                report=report,
            )
            took = time.perf_counter() - start
            state = "OK" if report.ok else f"FAILED: {report.problems[0]}"
            print(
                f"2. audit verify of the ledger, {report.leaves:,} leaves and 1 checkpoint: "
                f"{took:.2f} s ({took / max(1, report.leaves) * 1e6:.1f} µs per leaf), {state}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
