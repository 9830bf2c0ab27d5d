"""Plain-text tables shared by the benchmark scripts."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def latency_row(
    label: str, samples: Sequence[float], *, digits: int = 1, extremes: bool = False
) -> list[str]:
    """``label``, n, median and p99 in ms (and min and max with ``extremes``)."""
    values = [statistics.median(samples), percentile(samples, 99)]
    if extremes:
        values += [min(samples), max(samples)]
    return [label, str(len(samples)), *(f"{v * 1000:.{digits}f}" for v in values)]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)), line]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def fleet_report(
    *,
    count: int,
    latency: float,
    timings: Sequence[tuple[str, float]],
    calls: Mapping[str, Counter[str]],
    calls_title: str,
) -> str:
    """A fleet benchmark's report: each contender's time until every daemon answered,
    that over the emulated latency, the library (first) over the baseline (second), and
    each contender's API calls per sandbox by kind.
    """

    def per_latency(seconds: float) -> str:
        return f"{seconds / latency:.2f}" if latency else "-"

    (_, ours), (_, theirs) = timings[0], timings[1]
    ready = [[name, f"{seconds:.2f}", per_latency(seconds)] for name, seconds in timings]
    kinds = sorted({kind for counter in calls.values() for kind in counter})
    per_sandbox = [[k, *(f"{c[k] / count:.2f}" for c in calls.values())] for k in kinds]
    return "\n".join(
        [
            table(["", "all ready s", "ready/latency"], ready),
            f"library/baseline: {ours / theirs:.2f}",
            table([calls_title, *calls], per_sandbox),
        ]
    )
