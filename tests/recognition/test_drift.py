"""The drift rule (recognition/drift.py) on simulated windows: quiet on the same distribution,
loud on a shifted one, silent below the minimum counts."""

from __future__ import annotations

import numpy as np

from recognition.drift import (
    DriftRule,
    bin_proportions,
    drift_signals,
    enough_data,
    proportion_z,
    psi,
    quantile_edges,
    window_summary,
)

RULE = DriftRule()


def _window(rng: np.random.Generator, n: int, *, mean: float = 0.62, unknown: float = 0.1, quality: float = 0.05,
            baseline: dict | None = None) -> dict:  # fmt: skip
    known = rng.random(n) >= unknown
    similarity = np.where(known, rng.normal(mean, 0.07, n), rng.normal(0.25, 0.08, n))
    margin = np.where(known, rng.gamma(4.0, 0.06, n), rng.gamma(1.5, 0.02, n))
    rejected = int((rng.random(n) < quality).sum())
    return window_summary(
        similarities=similarity.tolist(), margins=margin.tolist(), decisions=n, unknown=int((~known).sum()),
        quality_rejected=rejected, quality_seen=n + rejected, baseline=baseline,
    )  # fmt: skip


def test_quiet_on_the_same_distribution() -> None:
    """False alarms of the rule at its minimum counts (500 baseline, 150 recent): none in 500 pairs."""
    rng = np.random.default_rng(7)
    alarms = 0
    worst = 0.0
    for _ in range(500):
        base = _window(rng, RULE.min_baseline)
        recent = _window(rng, RULE.min_recent, baseline=base)
        alarms += bool(drift_signals(base, recent, RULE))
        worst = max(worst, psi(base["similarity"]["proportions"], recent["similarity"]["proportions"]))
    assert alarms == 0, alarms
    assert worst > 0.1  # the windows do differ by chance: the rule is what keeps quiet


def test_loud_on_a_moved_camera() -> None:
    """Genuine similarity down by 0.07 (one spread) and more unknown faces: caught (nearly) every time."""
    rng = np.random.default_rng(8)
    caught = {"similarity": 0, "unknown_rate": 0}
    for _ in range(100):
        base = _window(rng, RULE.min_baseline)
        recent = _window(rng, RULE.min_recent, mean=0.55, unknown=0.35, baseline=base)
        names = {s["signal"] for s in drift_signals(base, recent, RULE)}
        for name in caught:
            caught[name] += name in names
    assert caught["similarity"] >= 99 and caught["unknown_rate"] >= 99, caught


def test_a_quality_gate_rate_change_is_a_signal_and_small_changes_are_not() -> None:
    rng = np.random.default_rng(9)
    base = _window(rng, 2000)
    worse = _window(rng, 1000, quality=0.30, baseline=base)
    assert "quality_rate" in {s["signal"] for s in drift_signals(base, worse, RULE)}
    # Three points more unknown faces over 20,000 decisions is significant (z > 4) but harmless.
    base = _window(rng, 20000, unknown=0.10)
    slightly = _window(rng, 20000, unknown=0.13, baseline=base)
    assert abs(proportion_z(base["unknown"]["k"], 20000, slightly["unknown"]["k"], 20000)) > RULE.z_limit
    assert "unknown_rate" not in {s["signal"] for s in drift_signals(base, slightly, RULE)}


def test_below_the_minimum_counts_nothing_is_said() -> None:
    rng = np.random.default_rng(10)
    base = _window(rng, RULE.min_baseline)
    recent = _window(rng, RULE.min_recent - 1, mean=0.3, unknown=0.9, baseline=base)
    assert not enough_data(base, recent, RULE)
    assert drift_signals(base, recent, RULE) == []


def test_bins_and_psi() -> None:
    values = list(range(100))
    edges = quantile_edges(values)
    assert len(edges) == 4
    assert bin_proportions(values, edges) == [0.2] * 5
    assert psi([0.2] * 5, [0.2] * 5) == 0.0
    assert psi([0.2] * 5, [1.0, 0, 0, 0, 0]) > 1.0  # empty bins are floored, not infinite
    assert quantile_edges([]) == [] and bin_proportions([], []) == [0.0]
    assert proportion_z(0, 0, 1, 1) == 0.0
