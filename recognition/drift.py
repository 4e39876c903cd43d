"""The statistics of recognition health: summaries of a window of decisions and the drift rule.

Pure functions on numbers (numpy), no database: :mod:`recognition.health` reads the access log
and stores what these return (plain JSON).

The rule (one door, one model version; a recent window against the door's own baseline). The
recent window *drifts* when both windows hold enough decisions (``min_baseline``, ``min_recent``)
and any of these holds:

- **similarity** or **margin**: the population stability index (PSI) over the baseline's quintile
  bins is at least ``psi_limit`` (0.25, the usual "significant shift": the size of the change)
  *and* significant: PSI is the Jeffreys divergence of the two histograms, and for two samples of
  the same distribution ``PSI * n0 n1 / (n0 + n1)`` follows a chi-square law with ``k - 1`` degrees
  of freedom, so it must reach :data:`PSI_CHI2_CRITICAL` (the 1 - 1e-4 quantile of chi-square(4)).
  At the default minimum counts (500 / 150) that asks PSI >= 0.20, so the 0.25 effect size decides;
  the significance test binds when a deployment lowers the minimums. (Simulated windows of the
  same distribution, tests/recognition/test_drift.py: at 300 / 100 PSI >= 0.25 fired on 0.1 % of
  pairs per signal, its tail is heavy; at 500 / 150 on none of 4,000, while a genuine-similarity
  drop of 0.06 (under one spread) was caught in 298 of 300);
- **unknown-face rate** or **quality-gate rejection rate**: a pooled two-proportion z-test gives
  ``|z| >= z_limit`` (4) *and* the rate moved by at least ``min_rate_change`` (10 points), so a
  large door does not alarm on a statistically real but harmless change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BINS = 5
#: chi-square(BINS - 1) quantile at 1 - 1e-4: PSI scaled by the effective count must reach it.
PSI_CHI2_CRITICAL = 23.51
#: Floor of a bin's proportion (an empty bin would make PSI infinite).
PROPORTION_FLOOR = 1e-4


@dataclass(frozen=True)
class DriftRule:
    min_baseline: int = 500
    min_recent: int = 150
    psi_limit: float = 0.25
    z_limit: float = 4.0
    min_rate_change: float = 0.10


def quantile_edges(values: Sequence[float], bins: int = BINS) -> list[float]:
    """The interior bin edges that split ``values`` into ``bins`` equal parts (repeats removed)."""
    if len(values) == 0:
        return []
    qs = np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0, 1, bins + 1)[1:-1])
    return sorted({round(float(q), 6) for q in qs})


def bin_proportions(values: Sequence[float], edges: Sequence[float]) -> list[float]:
    """Share of ``values`` in each of the ``len(edges) + 1`` bins ``(-inf, e0], (e0, e1], ..., (e_last, inf)``."""
    counts = np.bincount(
        np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="left"),
        minlength=len(edges) + 1,
    )
    total = int(counts.sum())
    return [float(c) / total if total else 0.0 for c in counts]


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of ``actual`` against ``expected`` (bin proportions, floored)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), PROPORTION_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PROPORTION_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def proportion_z(k0: int, n0: int, k1: int, n1: int) -> float:
    """Pooled two-proportion z statistic of ``k1/n1`` against ``k0/n0`` (0 when undefined)."""
    if n0 <= 0 or n1 <= 0:
        return 0.0
    pooled = (k0 + k1) / (n0 + n1)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / n1))
    return 0.0 if se == 0 else (k1 / n1 - k0 / n0) / se


def distribution_summary(values: Sequence[float], edges: Sequence[float] | None = None) -> dict[str, Any]:
    """``{n, mean, p10, p50, p90, edges, proportions}``; ``edges`` from ``values`` when not given
    (a baseline), else the baseline's (a recent window, binned as its baseline was)."""
    arr = np.asarray(values, dtype=np.float64)
    edges = quantile_edges(values) if edges is None else list(edges)
    out: dict[str, Any] = {"n": int(arr.size), "edges": edges, "proportions": bin_proportions(values, edges)}
    if arr.size:
        p10, p50, p90 = (round(float(q), 6) for q in np.quantile(arr, [0.1, 0.5, 0.9]))
        out.update(mean=round(float(arr.mean()), 6), p10=p10, p50=p50, p90=p90)
    return out


def window_summary(
    *,
    similarities: Sequence[float],
    margins: Sequence[float],
    decisions: int,
    unknown: int,
    quality_rejected: int,
    quality_seen: int,
    baseline: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One window as stored: counts, rates and the two distributions (binned like ``baseline``)."""
    return {
        "decisions": decisions,
        "similarity": distribution_summary(similarities, baseline["similarity"]["edges"] if baseline else None),
        "margin": distribution_summary(margins, baseline["margin"]["edges"] if baseline else None),
        "unknown": {"k": unknown, "n": decisions, "rate": round(unknown / decisions, 6) if decisions else None},
        "quality": {
            "k": quality_rejected,
            "n": quality_seen,
            "rate": round(quality_rejected / quality_seen, 6) if quality_seen else None,
        },
    }


def drift_signals(baseline: Mapping[str, Any], recent: Mapping[str, Any], rule: DriftRule) -> list[dict[str, Any]]:
    """The signals by which ``recent`` drifts from ``baseline`` under ``rule`` (empty: no drift or
    too few decisions to say; :func:`enough_data` tells which)."""
    if not enough_data(baseline, recent, rule):
        return []
    signals: list[dict[str, Any]] = []
    for name in ("similarity", "margin"):
        base, now = baseline[name], recent[name]
        if base["n"] < rule.min_baseline or now["n"] < rule.min_recent:
            continue
        value = psi(base["proportions"], now["proportions"])
        n_eff = base["n"] * now["n"] / (base["n"] + now["n"])
        if value >= rule.psi_limit and value * n_eff >= PSI_CHI2_CRITICAL:
            signals.append({
                "signal": name, "test": "psi", "value": round(value, 4), "limit": rule.psi_limit,
                "baseline_mean": base.get("mean"), "recent_mean": now.get("mean"),
                "baseline": _values(base, ("mean", "p10", "p50", "p90")),
                "current": _values(now, ("mean", "p10", "p50", "p90")),
            })  # fmt: skip
    for name in ("unknown", "quality"):
        base, now = baseline[name], recent[name]
        if base["n"] < rule.min_baseline or now["n"] < rule.min_recent:
            continue
        z = proportion_z(base["k"], base["n"], now["k"], now["n"])
        change = now["k"] / now["n"] - base["k"] / base["n"]
        if abs(z) >= rule.z_limit and abs(change) >= rule.min_rate_change:
            signals.append({
                "signal": f"{name}_rate", "test": "two_proportion_z", "value": round(z, 3), "limit": rule.z_limit,
                "baseline_rate": base["rate"], "recent_rate": now["rate"],
                "baseline": _values(base, ("rate", "k", "n")), "current": _values(now, ("rate", "k", "n")),
            })  # fmt: skip
    return signals


def _values(window: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The figures of one window a drift signal reports (``n``: how many values it summarises)."""
    return {"n": window.get("n"), **{key: window.get(key) for key in keys}}


def enough_data(baseline: Mapping[str, Any], recent: Mapping[str, Any], rule: DriftRule) -> bool:
    """Whether both windows hold the minimum number of decisions the rule needs."""
    return baseline.get("decisions", 0) >= rule.min_baseline and recent.get("decisions", 0) >= rule.min_recent
