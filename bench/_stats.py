"""Percentiles and the small value types every section reports with."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values; ``q`` in [0, 100]."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True, slots=True)
class Latency:
    """A latency distribution in milliseconds."""

    count: int
    p50: float
    p99: float
    p999: float
    max: float

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> Latency:
        ordered = sorted(values_ms)
        return cls(
            count=len(ordered),
            p50=percentile(ordered, 50),
            p99=percentile(ordered, 99),
            p999=percentile(ordered, 99.9),
            max=ordered[-1] if ordered else math.nan,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "p50_ms": round(self.p50, 3),
            "p99_ms": round(self.p99, 3),
            "p999_ms": round(self.p999, 3),
            "max_ms": round(self.max, 3),
        }

    def brief(self, *, with_max: bool = False) -> str:
        text = f"p50 {self.p50:.1f} / p99 {self.p99:.1f} / p99.9 {self.p999:.1f}"
        if with_max:
            text += f" / max {self.max:.1f}"
        return text + " ms"


@dataclass
class Row:
    """One line of the Markdown table: a figure, its same-run baseline and their ratio."""

    section: str
    figure: str
    value: str
    baseline: str
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "figure": self.figure,
            "value": self.value if self.valid else None,
            "baseline": self.baseline if self.valid else None,
            "ratio": None if self.ratio is None or not self.valid else round(self.ratio, 4),
            "target": self.target or None,
            "met": self.met if self.valid else None,
            "problems": self.problems,
        }


class InvalidRun(Exception):
    """A measurement that must not be reported: lost events, errors, a saturated generator."""


def ratio(value: float, baseline: float) -> float | None:
    if baseline <= 0 or math.isnan(baseline) or math.isnan(value):
        return None
    return value / baseline
