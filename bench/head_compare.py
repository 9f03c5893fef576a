"""Ours against HEAD's implementation, measured the same way in the same run.

A bench that compares the working tree with the last commit runs its measurement in
worker processes, alternating the two source trees (ours, then HEAD's, then ours ...), so
that load from other work on the machine hits both alike. Each worker imports the
project from the tree it is given (``LINETAP_BENCH_TREE``, put first on ``sys.path`` by
:func:`use_tree`), warms up, measures in-process and prints one JSON line: process
start-up and imports are excluded on both sides alike.

HEAD's tree is ``git archive HEAD`` unpacked once under ``$TMPDIR`` (no worktree, the
repository is not touched). ``LINETAP_BENCH_BASE=<commit>`` compares against another
commit instead (to reproduce a figure once the change is committed).

- :func:`use_tree`: at the top of a worker, before its project imports;
- :func:`head_tree`: HEAD's source tree, unpacked once;
- :func:`run_worker`: one worker run in a tree, its JSON result;
- :func:`min_median`: the two figures every comparison prints.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TREE_ENV = "LINETAP_BENCH_TREE"
BASE_ENV = "LINETAP_BENCH_BASE"


def use_tree() -> Path:
    """Put the tree this worker measures first on ``sys.path`` (default: this repo)."""
    tree = Path(os.environ.get(TREE_ENV, str(REPO)))
    sys.path.insert(0, str(tree))
    return tree


def head_tree() -> Path:
    """HEAD's files (or ``$LINETAP_BENCH_BASE``'s), unpacked once into
    ``$TMPDIR/linetap-head-<commit>``."""
    rev = os.environ.get(BASE_ENV, "HEAD")
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", rev],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    tree = Path(tempfile.gettempdir()) / f"linetap-head-{commit}"
    if not (tree / "firmware").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.Popen(
            ["git", "-C", str(REPO), "archive", commit], stdout=subprocess.PIPE
        )
        subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
        if archive.wait():
            raise RuntimeError(f"git archive {commit} failed")
    return tree


def run_worker(script: Path, tree: Path, args: list[str]) -> dict[str, Any]:
    """Run ``script`` (a worker) against ``tree``; its last stdout line, as JSON."""
    env = {**os.environ, TREE_ENV: str(tree)}
    done = subprocess.run(
        [sys.executable, str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,  # a failure is raised below with the worker's stderr
    )
    if done.returncode:
        raise RuntimeError(
            f"{script.name} in {tree} failed (rc={done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def min_median(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)
