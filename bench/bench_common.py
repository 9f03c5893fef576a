"""Measuring and printing helpers shared by the benches, whatever they measure.

- :func:`children_cpu_s`: the CPU time of waited-for child processes, how every bench
  times a peer tool (``age``, ``arecord``, ``flac``, ``multimon-ng``, ``mosquitto_pub``);
- :func:`proc_status_kib`: a memory figure of a process from ``/proc/<pid>/status``;
- :func:`pstats_table`: a cProfile result as the benches print it;
- :func:`print_table_header`: a table's header line, underlined.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import resource
from pathlib import Path


def children_cpu_s() -> float:
    """User + system CPU seconds of every child process waited for so far (take a
    difference around a run: the figure includes the children's start-up)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def proc_status_kib(field: str, pid: int | str = "self") -> int:
    """A kB field (``VmRSS``, ``VmHWM``) of ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def pstats_table(profile: cProfile.Profile | Path, top: int) -> str:
    """The ``top`` functions of a profile (or a profile file) by own time: pstats' total
    line and table, without its preamble."""
    out = io.StringIO()
    source = profile if isinstance(profile, cProfile.Profile) else str(profile)
    stats = pstats.Stats(source, stream=out)
    stats.strip_dirs().sort_stats(pstats.SortKey.TIME).print_stats(top)
    text = out.getvalue()
    at = text.find("function calls")
    return text[text.rfind("\n", 0, at) + 1 :].rstrip() if at >= 0 else text


def print_table_header(header: str) -> None:
    print(header)
    print("-" * len(header))
