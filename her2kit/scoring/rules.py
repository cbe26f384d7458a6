"""HER2 scoring rules over tumour-cell membrane categories (ASCO/CAP 2018, reaffirmed 2023).

Categories (DESIGN.md): 0 no staining, 1 faint/barely perceptible and
incomplete, 2 weak-to-moderate complete (or moderate/intense incomplete),
3 intense complete.

- 3+: category 3 in more than 10% of tumour cells.
- 2+: category 2 or 3 in more than 10%, and not 3+.
- 1+: category 1-3 in more than 10%, and not 2+/3+.
- 0: otherwise; sub-category "null" when no cell is stained at all, and
  "ultralow" when some are (more than 0% and at most 10%), as defined for
  DESTINY-Breast06.

"More than 10%" is tested in integers (10 * count > total), so exactly 10%
is not more than 10%. The ">10%" of the 2+ rule counts category 2 together
with category 3: a tumour with 8% intense-complete and 8% weak-complete cells
has 16% complete staining above the 2+ level. (Table I of the Her2Net paper
swaps the percentages; her2kit follows the guideline.)

With no tumour cells the score is undefined: :func:`asco_cap_score` returns
``score=None`` and a note.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

SCORES = ("0", "1+", "2+", "3+")


@dataclass
class ScoreResult:
    """A HER2 score and the numbers behind it.

    ``percent`` maps "0".."3" to the percentage (0-100) of tumour cells in each
    category; ``h_score`` is 0-300; ``percent_complete`` the percentage of
    cells with complete staining of any intensity (see :func:`percent_complete`).
    ``score`` is None when there are no tumour cells (see ``note``), and so are
    the percentages and the H-score: undefined, not 0 (QA: a blank image's
    H-score of 0 read as "no staining" and pulled cohort means down).
    """

    score: str | None
    subcategory: str | None
    cells_total: int
    percent: dict[str, float]
    h_score: float | None
    percent_complete: float | None
    counts: dict[str, int] = field(default_factory=dict)
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def checked_categories(categories) -> np.ndarray:
    """Cell categories as int64, or a ValueError for values other than whole numbers 0..3."""
    raw = np.asarray(categories).ravel()
    c = raw.astype(np.int64)
    if raw.dtype.kind == "f" and not np.array_equal(c, raw):  # QA: 2.99 was counted as 2
        raise ValueError("cell categories must be whole numbers 0..3, got fractional values")
    if c.size and (c.min() < 0 or c.max() > 3):
        raise ValueError(f"cell categories must be 0..3, got {sorted(set(c.tolist()))}")
    return c


def _counts(categories: np.ndarray) -> np.ndarray:
    return np.bincount(checked_categories(categories), minlength=4)[:4]


def score_levels(n0, n1, n2, n3) -> np.ndarray:
    """The rule over arrays of counts (e.g. a slide's squares): the score's
    index in :data:`SCORES` (0-3) per element, -1 where there are no cells."""
    n0, n1, n2, n3 = (np.asarray(v, dtype=np.int64) for v in (n0, n1, n2, n3))
    n = n0 + n1 + n2 + n3
    level = np.where(10 * n3 > n, 3, np.where(10 * (n2 + n3) > n, 2, np.where(10 * (n1 + n2 + n3) > n, 1, 0)))
    return np.where(n > 0, level, -1)


def score_from_counts(counts) -> tuple[str | None, str | None]:
    """(score, subcategory) from tumour-cell counts per category (n0, n1, n2, n3)."""
    n0, n1, n2, n3 = (int(v) for v in counts)
    level = int(score_levels(n0, n1, n2, n3))
    if level < 0:
        return None, None
    if level > 0:
        return SCORES[level], None
    return "0", ("null" if n1 + n2 + n3 == 0 else "ultralow")


def h_score(counts) -> float | None:
    """H-score 0-300: 1 x %category 1 + 2 x %category 2 + 3 x %category 3 (None: no cells)."""
    c = np.asarray(counts, dtype=np.float64)
    n = c.sum()
    return None if n == 0 else float(100.0 * (c[1] + 2 * c[2] + 3 * c[3]) / n)


def percent_complete(counts, complete: int | None = None) -> float | None:
    """Percentage (0-100) of tumour cells with complete staining of any intensity.

    ``complete``: how many of the cells counted in ``counts`` have a complete
    membrane, stained at any intensity (the cell table's ``complete`` column:
    faint complete membranes, category 1, included; moderate incomplete ones,
    category 2, not). Without it, from the categories alone: categories 2 and
    3 (the complete ones at least weak, plus moderate incomplete ones), an
    approximation for callers that only have categories.
    """
    c = np.asarray(counts, dtype=np.float64)
    n = c.sum()
    if n == 0:
        return None
    return float(100.0 * (c[2] + c[3] if complete is None else complete) / n)


def asco_cap_score(categories: np.ndarray, complete: int | None = None) -> ScoreResult:
    """Score tumour cells by ASCO/CAP 2018; ``categories`` int (n,) with values 0..3;
    ``complete``: how many of them have complete staining (see :func:`percent_complete`)."""
    return asco_cap_from_counts(_counts(categories), complete)


def asco_cap_from_counts(counts, complete: int | None = None) -> ScoreResult:
    """:func:`asco_cap_score` from the tumour cells' counts per category (n0..n3)."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    score, sub = score_from_counts(counts)
    percent = {str(k): (None if n == 0 else float(100.0 * counts[k] / n)) for k in range(4)}
    return ScoreResult(
        score=score,
        subcategory=sub,
        cells_total=n,
        percent=percent,
        h_score=h_score(counts),
        percent_complete=percent_complete(counts, complete),
        counts={str(k): int(counts[k]) for k in range(4)},
        note="no tumour cells found" if n == 0 else unusual_pattern(counts),
    )


def unusual_pattern(counts) -> str | None:
    """A note for a pathologist where ASCO/CAP 2018 calls the staining unusual:

    - score 0 with cells stained more than faintly (categories 2-3, at most
      10% of tumour cells): not "null", so her2kit calls it "ultralow";
    - score 1+ with intense complete staining (category 3) in at most 10% of
      tumour cells: the guideline's example of an unusual pattern, which
      the rule cascade leaves at 1+ (QA: 5% intense complete plus 10% faint
      read 1+ with no word).

    The score stays the rule's (DESIGN.md); the note asks for a review.
    """
    n0, n1, n2, n3 = (int(v) for v in counts)
    n = n0 + n1 + n2 + n3
    score = score_from_counts(counts)[0] if n else None
    review = "an unusual pattern for a pathologist to review (ASCO/CAP 2018)"
    if score == "0" and n2 + n3 > 0:
        return f"{100.0 * (n2 + n3) / n:.1f}% of tumour cells are stained more than faintly (at most 10%): {review}"
    if score == "1+" and n3 > 0:
        return f"{100.0 * n3 / n:.1f}% of tumour cells show intense complete staining (at most 10%): {review}"
    return None


def count_complete(cells) -> int | None:
    """How many tumour cells of a CellResult or table dict have complete staining
    (its ``complete`` column), or None where the table has no such column."""
    table = getattr(cells, "table", cells)
    if not isinstance(table, dict) or "complete" not in table:
        return None
    complete = np.asarray(table["complete"]).astype(bool)
    if "tumour" in table:
        complete = complete[np.asarray(table["tumour"]).astype(bool)]
    return int(complete.sum())


def _categories_of(cells) -> np.ndarray:
    """Tumour-cell categories from a CellResult, a table dict or a plain array."""
    if hasattr(cells, "tumour_categories"):
        return cells.tumour_categories()
    if isinstance(cells, dict):
        cat = np.asarray(cells["category"])
        if "tumour" in cells:
            cat = cat[np.asarray(cells["tumour"]).astype(bool)]
        return cat
    return np.asarray(cells)


class AscoCap2018:
    """Scorer plugin "asco-cap-2018": cell table -> :class:`ScoreResult`."""

    name = "asco-cap-2018"

    def __call__(self, cells) -> ScoreResult:
        return asco_cap_score(_categories_of(cells), count_complete(cells))


class HScore:
    """Scorer plugin "h-score": cell table -> H-score (0-300) as a float (None: no tumour cells)."""

    name = "h-score"

    def __call__(self, cells) -> float | None:
        return h_score(_counts(_categories_of(cells)))


class PercentComplete:
    """Scorer plugin "percent-complete": cell table -> % of cells with complete staining."""

    name = "percent-complete"

    def __call__(self, cells) -> float | None:
        return percent_complete(_counts(_categories_of(cells)), count_complete(cells))


def quadratic_weighted_kappa(truth, predicted, labels=SCORES) -> float:
    """Cohen's kappa with quadratic weights between two lists of ordinal labels:
    :func:`her2kit.evaluation.metrics.quadratic_kappa` of their confusion (NaN
    where undefined, e.g. every label the same, as sklearn; QA: this copy said 1.0)."""
    from her2kit.evaluation.metrics import quadratic_kappa

    index = {v: i for i, v in enumerate(labels)}
    k = len(labels)
    conf = np.zeros((k, k))
    for t, p in zip(truth, predicted, strict=True):
        conf[index[t], index[p]] += 1
    return quadratic_kappa(conf)
