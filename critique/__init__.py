"""Critique → revision loops and pairwise ranking by a feedback model."""

from .rank import ComparisonConfig, plan_comparison_tasks, run_comparison_tasks
from .records import Comparison, Judgement, Revision, Round
from .revise import RevisionConfig, plan_revision_tasks, run_revision_tasks

__all__ = [
    "Comparison",
    "ComparisonConfig",
    "Judgement",
    "Revision",
    "RevisionConfig",
    "Round",
    "plan_comparison_tasks",
    "plan_revision_tasks",
    "run_comparison_tasks",
    "run_revision_tasks",
]
