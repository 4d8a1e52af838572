"""Critique → revision loops and pairwise ranking by a feedback model."""

# Installed as cai.critique: a bare `import critique` must not shadow a user's own module.
if __name__ != "cai.critique":
    raise ImportError(f"import cai.critique, not {__name__}")

from .rank import ComparisonConfig, plan_comparison_tasks, run_comparison_tasks
from .reading import PairReading, PairToRead, ReadingConfig, read_pairs
from .records import Comparison, Judgement, Revision, Round
from .revise import RevisionConfig, plan_revision_tasks, run_revision_tasks

__all__ = [
    "Comparison",
    "ComparisonConfig",
    "Judgement",
    "PairReading",
    "PairToRead",
    "ReadingConfig",
    "Revision",
    "RevisionConfig",
    "Round",
    "plan_comparison_tasks",
    "plan_revision_tasks",
    "read_pairs",
    "run_comparison_tasks",
    "run_revision_tasks",
]
