"""What every benchmark shares: progress on stderr, a clean stdout for JSON, interleaved timing, ratios."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

import numpy as np
from rich.console import Console
from rich.table import Table

__all__ = [
    "Progress",
    "alternating",
    "balanced_order",
    "command_line",
    "figures_table",
    "interleaved_medians",
    "percentiles_us",
    "process_cpu_s",
    "ratio",
    "start",
    "stdout_to_stderr",
    "wait_until",
]


@dataclass(frozen=True)
class Progress:
    """Prints timestamped steps to stderr; picklable, so a worker process can report too."""

    start: float
    prefix: str = ""

    def __call__(self, message: str) -> None:
        """Print one step."""
        print(f"[{time.time() - self.start:6.1f}s] {self.prefix}{message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[TextIO]:
    """Point file descriptor 1 at stderr (native libraries print too); yield a stream on the real stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(os.dup(saved), "w", encoding="utf-8") as real:
            yield real
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


T = TypeVar("T")


def balanced_order(names: Sequence[T], round_index: int) -> list[T]:
    """The order of ``names`` in round ``round_index``: forwards, then backwards, the start moving every two rounds.

    Every two rounds each name's mean position is the same, so a slow drift of the
    machine falls on all of them alike even when there are only a few rounds of long phases.
    """
    shift = (round_index // 2) % len(names)
    order = [*names[shift:], *names[:shift]]
    return order[::-1] if round_index % 2 else order


def alternating(phases: Mapping[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """The results of each phase, every phase run once per round in :func:`balanced_order`."""
    results: dict[str, list[T]] = {name: [] for name in phases}
    for r in range(rounds):
        for name in balanced_order(list(phases), r):
            results[name].append(phases[name]())
    return results


def interleaved_medians(
    fns: Mapping[str, Callable[[], object]], rounds: int, warmup: int, seed: int = 0
) -> dict[str, float]:
    """Median microseconds per call of each function, each called once per round in a new random order.

    A call inherits what the call before it left behind (caches, a library's spinning
    threads). In a fixed or rotating order each function always follows the same other
    one; shuffling every round gives every function the same mix of predecessors.
    """
    names = list(fns)
    shuffle = random.Random(seed).shuffle
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[int]] = {name: [] for name in names}
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            shuffle(names)
            for name in names:
                fn = fns[name]
                t0 = clock()
                fn()
                times[name].append(clock() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: statistics.median(ns) / 1e3 for name, ns in times.items()}


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` rounded to four decimals."""
    return round(numerator / denominator, 4)


def percentiles_us(samples_s: list[float], *qs: float) -> list[float]:
    """Percentiles ``qs`` of durations in seconds, in microseconds rounded to 0.1."""
    return [round(float(v) * 1e6, 1) for v in np.percentile(np.asarray(samples_s), qs)]


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used so far, from ``/proc/<pid>/stat`` (Linux)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def figures_table(
    title: str, report: Mapping[str, Any], keys: Iterable[str], targets: Mapping[str, str] | None = None
) -> Table:
    """A figure / value (/ target) table of the numbers in ``report`` under ``keys``."""
    table = Table(title=title)
    columns = ("figure", "value", "target") if targets else ("figure", "value")
    for column in columns:
        table.add_column(column, justify="left" if column == "figure" else "right")
    met = report.get("meets_targets", {})
    for key in keys:
        row = [key, f"{report[key]:,.4g}"]
        if targets:
            colour = "green" if met.get(key) else "red"
            row.append(f"[{colour}]{targets[key]}[/]" if key in targets else "")
        table.add_row(*row)
    return table


def command_line(
    prog: str,
    doc: str,
    *,
    quick_help: str,
    run: Callable[[argparse.Namespace, Progress], dict[str, Any]],
    render: Callable[[dict[str, Any], Console], None],
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    before: Callable[[argparse.Namespace], bool] | None = None,
) -> Callable[[list[str] | None], int]:
    """The ``main`` of a benchmark: ``--quick``, ``--json``, progress on stderr, one report on stdout.

    ``before`` may handle the parsed arguments itself (a helper process mode) and return True.
    """

    def main(argv: list[str] | None = None) -> int:
        parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
        parser.add_argument("--quick", action="store_true", help=quick_help)
        parser.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of tables")
        if arguments is not None:
            arguments(parser)
        args = parser.parse_args(argv)
        if before is not None and before(args):
            return 0
        step = Progress(time.time())
        with stdout_to_stderr() as stdout:
            report = run(args, step)
            step("done")
            if args.json:
                stdout.write(json.dumps(report) + "\n")
            else:
                render(report, Console(file=stdout))
        return 0

    return main


def start(*args: str) -> subprocess.Popen[bytes]:
    """A Python child process running ``args`` (its output goes to our stderr)."""
    return subprocess.Popen([sys.executable, *args], stdout=sys.stderr, stderr=sys.stderr)


def wait_until(call: Callable[[], object], what: str, timeout_s: float = 60.0) -> None:
    """Retry ``call`` until it stops raising."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            call()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not come up") from None
            time.sleep(0.2)
