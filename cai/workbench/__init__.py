"""Seeing what a constitution edit does before a run: try one chain, compare two versions, infer principles,
run the constitution's probes.

Each function takes constitutions (objects, shipped names or paths) and backends, returns plain
dicts that print as JSON, and reports progress through an optional callback, so a command line
and a web page drive them the same way.
"""

from .compare import compare
from .infer import InferConfig, infer, principle_file
from .probes import run_probes
from .trying import try_chain

__all__ = ["InferConfig", "compare", "infer", "principle_file", "run_probes", "try_chain"]
