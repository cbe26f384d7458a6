"""Built-in scorers: ASCO/CAP 2018, H-score, percent complete, Her2Net's pattern head."""

from her2kit.hookspecs import ScorerSpec, hookimpl, lazy


@hookimpl
def her2kit_scorers():
    return [
        ScorerSpec(
            name="asco-cap-2018",
            description="HER2 0/1+/2+/3+ per ASCO/CAP 2018 (reaffirmed 2023), with null/ultralow for 0",
            factory=lazy("her2kit.scoring.rules:AscoCap2018"),
        ),
        ScorerSpec(
            name="h-score",
            description="H-score: 1x%cat1 + 2x%cat2 + 3x%cat3 (0-300)",
            factory=lazy("her2kit.scoring.rules:HScore"),
        ),
        ScorerSpec(
            name="percent-complete",
            description="percentage of cells with complete membrane staining of any intensity",
            factory=lazy("her2kit.scoring.rules:PercentComplete"),
        ),
        ScorerSpec(
            name="her2net-pattern",
            description="Her2Net's staining-pattern head (patch-level 4-class softmax), for comparison",
            factory=lazy("her2kit.scoring.pattern:PatternScorer"),
        ),
    ]
