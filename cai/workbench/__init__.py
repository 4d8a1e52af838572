"""Seeing what a constitution edit does before a run: try one chain, compare two versions.

Each function takes constitutions (objects, shipped names or paths) and backends, returns plain
dicts that print as JSON, and reports progress through an optional callback, so a command line
and a web page drive them the same way.
"""

from .compare import compare
from .trying import try_chain

__all__ = ["compare", "try_chain"]
