"""From a requested HER2 score to a mix of membrane categories, and back by the rule.

Categories (DESIGN.md): 0 none, 1 faint incomplete, 2 weak-moderate complete,
3 intense complete. The mixes drawn here satisfy the ASCO/CAP 2018 rule
under every common reading of it (cumulative or not; the 2013 "unusual
pattern"), so the requested score is the ground truth: 3+ has >10% category
3; 2+ has <=10% category 3 and >10% category 2; 1+ has no 2/3 above 5% and
>10% category 1; 0 has no 2/3 and <=10% category 1. About 40% of mixes sit
near the 10% threshold (8-15% of cells).
"""

from __future__ import annotations

import numpy as np

from her2kit.scoring.rules import score_from_counts

SCORES = ("0", "1+", "2+", "3+")


def parse_score(text: str) -> str:
    """Normalise '0', '1', '1+', '2+', '3+' to one of SCORES; ValueError otherwise."""
    t = str(text).strip()
    if t in SCORES:
        return t
    if t in ("1", "2", "3"):
        return t + "+"
    raise ValueError(f"unknown HER2 score {text!r}; expected one of 0, 1+, 2+, 3+")


def asco_cap_score(counts: np.ndarray | list[int]) -> tuple[str, str | None]:
    """HER2 score and sub-category of tumour-cell counts per category (n0, n1, n2, n3).

    The project's rule, :func:`her2kit.scoring.rules.score_from_counts`
    (ASCO/CAP 2018: 3+ if >10% category 3; 2+ if >10% category 2 or 3;
    1+ if >10% category 1-3; else 0, "null" or "ultralow"), so ground truth
    and scorer agree by construction. No tumour cells counts as 0 / null.
    The mixes drawn here never sit where readings of the guideline differ.
    """
    score, sub = score_from_counts([int(c) for c in counts])
    return ("0", "null") if score is None else (score, sub)


def sample_fractions(score: str, rng: np.random.Generator, gap: float = 0.005
                     ) -> tuple[np.ndarray, str | None, bool]:
    """A category mix (fractions f0..f3, summing to 1) for a requested score.

    ``gap`` keeps every fraction at least that far from the 10% threshold
    (slides, whose counts are drawn cell by cell, use a wider gap).
    Returns (fractions, sub-category for score 0 else None, near_threshold).
    """
    score = parse_score(score)
    over, under = 0.10 + gap, 0.10 - gap
    near = bool(rng.random() < 0.4)
    f1 = f2 = f3 = 0.0
    sub = None
    if score == "0":
        sub = "null" if rng.random() < 0.5 else "ultralow"
        if sub == "ultralow":
            f1 = rng.uniform(min(0.08, under - 0.01), under) if near else rng.uniform(0.01, min(0.08, under))
        else:
            near = False
    elif score == "1+":
        f1 = rng.uniform(over, max(0.15, over + 0.02)) if near else rng.uniform(0.15, 0.7)
        f2 = rng.uniform(0.0, 0.05)
    elif score == "2+":
        if near and rng.random() < 0.5:
            f2, f3 = rng.uniform(over, max(0.15, over + 0.02)), rng.uniform(0.0, under)
        elif near:
            f2, f3 = rng.uniform(0.15, 0.6), rng.uniform(min(0.08, under - 0.01), under)
        else:
            f2, f3 = rng.uniform(0.15, 0.7), rng.uniform(0.0, min(0.08, under))
        f1 = rng.uniform(0.0, min(0.3, 1 - f2 - f3))
    else:
        f3 = rng.uniform(over, max(0.15, over + 0.02)) if near else rng.uniform(0.15, 0.9)
        f2 = rng.uniform(0.0, min(0.3, 1 - f3))
        f1 = rng.uniform(0.0, min(0.2, 1 - f3 - f2))
    f = np.array([1 - f1 - f2 - f3, f1, f2, f3])
    return f, sub, near


def counts_for(score: str, fractions: np.ndarray, n: int) -> np.ndarray:
    """Integer counts (n0..n3) of ``n`` tumour cells near ``fractions`` that keep the score's constraints.

    With few cells a constraint may be impossible (ultralow needs >= 10
    cells); the counts then follow the nearest feasible mix and the caller
    takes the rule's verdict as the truth.
    """
    score = parse_score(score)
    c = np.floor(np.asarray(fractions) * n + 0.5).astype(int)
    tenth = n // 10  # largest count that is still <= 10%
    n1, n2, n3 = c[1], c[2], c[3]
    if score == "3+":
        n3 = max(n3, tenth + 1)
    elif score == "2+":
        n3 = min(n3, tenth)
        n2 = max(n2, tenth + 1)
    elif score == "1+":
        n3 = 0
        n2 = min(n2, n // 20)
        n1 = max(n1, tenth + 1)
    else:
        n2 = n3 = 0
        n1 = min(n1, tenth)
        if fractions[1] > 0 and tenth > 0:
            n1 = max(n1, 1)
    n3 = min(n3, n)
    n2 = min(n2, n - n3)
    n1 = min(n1, n - n3 - n2)
    return np.array([n - n1 - n2 - n3, n1, n2, n3])
