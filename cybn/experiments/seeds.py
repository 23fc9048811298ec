"""Figures over seeds: mean ± std with min–max, outcome tallies, and the band a plot draws."""
import math
import warnings
from collections import Counter

import numpy as np


def parse_seeds(text):
    """``"0,1,2"`` or ``"0-4"`` -> a tuple of distinct non-negative ints, in the order given."""
    seeds = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        lo, dash, hi = item.partition("-")
        try:
            values = range(int(lo), int(hi) + 1) if dash else [int(item)]
        except ValueError:
            raise ValueError(f"seeds must be integers like 0,1,2 or 0-4, got {text!r}") from None
        seeds += [v for v in values if v not in seeds]
    if not seeds or min(seeds) < 0:
        raise ValueError(f"seeds must be one or more integers >= 0, got {text!r}")
    return tuple(seeds)


def summary(values):
    """mean, sample std (0 for one value), min, max and n of the finite values; None if none are."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals), "n": len(vals)}


def fmt(values, spec=".3g", scale=1.0, unit=""):
    """``mean ± std (min–max)`` of ``values`` (just the value when they are all equal); "—" if none."""
    s = summary(values)
    if s is None:
        return "—"
    f = lambda v: format(v * scale, spec) + unit  # noqa: E731
    if s["min"] == s["max"]:
        return f(s["mean"])
    return f"{f(s['mean'])} ± {format(s['std'] * scale, spec.lstrip('+'))} ({f(s['min'])}–{f(s['max'])})"


def pct(values):
    return fmt(values, ".1f", 100.0, " %")


def tally(outcomes):
    """One outcome if every seed agrees ("trains"), else the counts ("trains ×2, chance ×1")."""
    counts = Counter(outcomes)
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{k} ×{n}" for k, n in counts.most_common())


def band(curves):
    """Curves [(xs, ys), ...] from several seeds -> (xs, mean, min, max) at every x any of them
    logged, over the seeds that logged it (a seed stopped early at chance drops out)."""
    xs = sorted(set().union(*(xs for xs, _ in curves))) if curves else []
    if not xs:
        return [], [], [], []
    table = np.array([[dict(zip(cx, cy)).get(x, np.nan) for x in xs] for cx, cy in curves], dtype=np.float64)
    with warnings.catch_warnings():  # an x where every seed's value is NaN (diverged) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return xs, np.nanmean(table, axis=0), np.nanmin(table, axis=0), np.nanmax(table, axis=0)
