"""ASCO/CAP 2018 rule table, H-score, percent complete and the scorer plugins."""

import numpy as np
import pytest

from her2kit.scoring.rules import (
    AscoCap2018,
    HScore,
    PercentComplete,
    asco_cap_score,
    h_score,
    percent_complete,
    quadratic_weighted_kappa,
    score_from_counts,
)


def cats(n0=0, n1=0, n2=0, n3=0):
    return np.repeat([0, 1, 2, 3], [n0, n1, n2, n3])


@pytest.mark.parametrize("counts, expected", [
    # exactly 10% is not more than 10%
    # 10% category 3: not 3+, and 10% stained is not >10% for 2+ or 1+ either
    ((90, 0, 0, 10), ("0", "ultralow")),
    ((89, 0, 0, 11), ("3+", None)),
    ((90, 0, 10, 0), ("0", "ultralow")),
    ((89, 0, 11, 0), ("2+", None)),
    ((90, 10, 0, 0), ("0", "ultralow")),
    ((89, 11, 0, 0), ("1+", None)),
    ((100, 0, 0, 0), ("0", "null")),
    ((99, 1, 0, 0), ("0", "ultralow")),
    ((0, 0, 0, 0), (None, None)),
    # 2+ counts category 3 with category 2
    ((84, 0, 8, 8), ("2+", None)),
    # 1+ counts every stained cell
    ((88, 6, 6, 0), ("1+", None)),
    ((0, 0, 0, 1), ("3+", None)),
    ((5, 95, 0, 0), ("1+", None)),
    ((10, 0, 90, 0), ("2+", None)),
    # ties: several categories above 10% -> the highest wins; 2+ at exactly 10% falls to 1+
    ((78, 0, 11, 11), ("3+", None)),
    ((67, 11, 11, 11), ("3+", None)),
    ((80, 10, 5, 5), ("1+", None)),
    ((25, 25, 25, 25), ("3+", None)),
])
def test_rule_table(counts, expected):
    assert score_from_counts(counts) == expected
    r = asco_cap_score(cats(*counts))
    assert (r.score, r.subcategory) == expected
    assert r.cells_total == sum(counts)


def test_exact_threshold_with_large_counts():
    # 1000 cells: 100 = 10% (not >10%), 101 = 10.1% (>10%)
    assert score_from_counts((900, 0, 0, 100))[0] == "0"
    assert score_from_counts((899, 0, 0, 101))[0] == "3+"
    assert score_from_counts((900, 100, 0, 0)) == ("0", "ultralow")
    assert score_from_counts((899, 101, 0, 0)) == ("1+", None)


def test_no_cells_is_undefined_with_a_note():
    r = asco_cap_score(np.zeros(0, int))
    assert r.score is None and r.cells_total == 0
    assert r.note == "no tumour cells found"
    # undefined, not 0 (QA: a blank image's H-score 0 read as "no staining")
    assert r.h_score is None and r.percent_complete is None
    assert r.percent == {"0": None, "1": None, "2": None, "3": None}
    assert HScore()({"category": np.zeros(0, int)}) is None


def test_percentages_h_score_and_complete():
    r = asco_cap_score(cats(40, 30, 20, 10))
    assert r.percent == {"0": 40.0, "1": 30.0, "2": 20.0, "3": 10.0}
    assert r.h_score == pytest.approx(30 + 40 + 30)
    assert r.percent_complete == pytest.approx(30.0)
    assert r.counts == {"0": 40, "1": 30, "2": 20, "3": 10}
    assert h_score([0, 0, 0, 7]) == 300.0
    assert h_score([5, 0, 0, 0]) == 0.0
    assert percent_complete([1, 1, 1, 1]) == 50.0


def test_bad_categories_rejected():
    with pytest.raises(ValueError):
        asco_cap_score(np.array([0, 4]))
    with pytest.raises(ValueError, match="whole numbers"):
        asco_cap_score(np.array([0.9, 1.5, 2.99, 3.0]))
    assert asco_cap_score(np.array([0.0, 3.0])).counts == {"0": 1, "1": 0, "2": 0, "3": 1}


def test_scorer_plugins_use_tumour_cells_only():
    from her2kit.plugins import registry

    table = {"category": np.array([3, 3, 0, 0, 0]), "tumour": np.array([1, 0, 1, 1, 1], bool)}
    reg = registry()
    asco = reg.get("scorer", "asco-cap-2018").factory()
    assert isinstance(asco, AscoCap2018)
    r = asco(table)
    assert r.cells_total == 4 and r.score == "3+"  # 1 of 4 tumour cells is 25%
    assert reg.get("scorer", "h-score").factory()(table) == pytest.approx(75.0)
    assert isinstance(reg.get("scorer", "h-score").factory(), HScore)
    pc = reg.get("scorer", "percent-complete").factory()
    assert isinstance(pc, PercentComplete) and pc(table) == pytest.approx(25.0)


def test_quadratic_weighted_kappa():
    assert quadratic_weighted_kappa(["0", "1+", "2+", "3+"], ["0", "1+", "2+", "3+"]) == 1.0
    worse = quadratic_weighted_kappa(["0", "1+", "2+", "3+"], ["3+", "2+", "1+", "0"])
    assert worse < 0
    # all one label: undefined, as sklearn and evaluate's kappa say (QA: this one said 1.0)
    import math

    assert math.isnan(quadratic_weighted_kappa(["2+"] * 3, ["2+"] * 3))
    near = quadratic_weighted_kappa(["0", "1+", "2+", "3+"] * 3, ["0", "1+", "2+", "2+"] * 3)
    assert 0.8 < near < 1.0


def test_pattern_scorer_needs_the_image():
    from her2kit.errors import Her2kitError
    from her2kit.plugins import registry

    scorer = registry().get("scorer", "her2net-pattern").factory()
    with pytest.raises(Her2kitError, match="image"):
        scorer({"category": np.array([1])})

    class FakeSegmenter:
        def predict_pattern(self, rgb):
            return np.array([0.1, 0.2, 0.6, 0.1], np.float32)

    out = scorer(None, image=np.zeros((8, 8, 3), np.uint8), segmenter=FakeSegmenter())
    assert out["score"] == "2+"
    assert out["probabilities"]["2+"] == pytest.approx(0.6)


def test_score_0_with_more_than_faint_staining_is_flagged_for_review():
    """QA: 10% intense complete and nothing faint is "0 (ultralow)" by the rule
    cascade; ASCO/CAP calls such patterns unusual: the note says so."""
    from her2kit.scoring.rules import asco_cap_score

    flagged = asco_cap_score(np.array([0] * 90 + [3] * 10))
    assert (flagged.score, flagged.subcategory) == ("0", "ultralow")
    assert flagged.note.startswith("10.0% of tumour cells are stained more than faintly")
    assert asco_cap_score(np.array([0] * 95 + [1] * 5)).note is None  # faint only: plain ultralow
    assert asco_cap_score(np.array([0] * 80 + [2] * 20)).note is None  # 2+: not a score-0 pattern
    # QA: 1+ with intense complete staining in <= 10% is the guideline's own example
    one = asco_cap_score(np.repeat([0, 1, 2, 3], (85, 10, 0, 5)))
    assert one.score == "1+" and one.note.startswith("5.0% of tumour cells show intense complete staining")
    assert asco_cap_score(np.repeat([0, 1, 2, 3], (80, 15, 5, 0))).note is None  # 1+ with some 2: usual


def test_percent_complete_counts_complete_staining_of_any_intensity():
    """QA: percent_complete counted categories 2-3, leaving out faint complete
    membranes (category 1) and taking in moderate incomplete ones (category 2);
    DESIGN.md asks for complete staining of any intensity."""
    from her2kit.scoring.cells import CellParams, categorise
    from her2kit.scoring.rules import count_complete

    p = CellParams()
    completeness = np.array([1.0, 1.0, 0.3, 1.0, 0.0, p.complete_fraction])
    intensity = np.array([0.5 * p.weak_od, p.weak_od, p.moderate_od, p.intense_od, 0.0, p.intense_od])
    cat = categorise(completeness, intensity, p)
    assert cat.tolist() == [1, 2, 2, 3, 0, 3]
    complete = (cat > 0) & (completeness >= p.complete_fraction)
    table = {"category": cat, "tumour": np.array([1, 1, 1, 1, 1, 0], bool), "complete": complete}
    # tumour cells: faint complete, weak complete, moderate incomplete, intense complete, none
    assert count_complete(table) == 3
    r = AscoCap2018()(table)
    assert r.percent_complete == pytest.approx(60.0)  # 3 of 5 (categories 2-3 would say 3 of 5 too, by chance)
    table["category"] = np.array([1, 1, 2, 3, 0, 3])  # the weak complete one read as faint
    assert AscoCap2018()(table).percent_complete == pytest.approx(60.0)  # still complete
    assert PercentComplete()(table) == pytest.approx(60.0)
    # without the column: categories 2-3, the approximation
    assert PercentComplete()({"category": table["category"], "tumour": table["tumour"]}) == pytest.approx(40.0)
