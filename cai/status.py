"""`cai status`: how far a run is, read from its manifests alone (no model, no records).

A run on another machine writes each shard's manifest after every batch (records done and
planned, tokens, seconds, errors by kind), so anyone with the shared folder can see progress and
an ETA without touching the stage files, which may be gigabytes.
"""

from __future__ import annotations

import re
from pathlib import Path

from rich.table import Table

from .reader import RunReader
from .stages import NAMES

_SHARD = re.compile(r"manifest(?:\.shard-(\d+)-of-(\d+))?\.json")


def run_status(run_dir: str | Path) -> list[dict]:
    """One row per shard and stage, in run order."""
    run = RunReader(run_dir)
    rows = []
    order = list(NAMES)
    for name, m in run.manifests().items():
        match = _SHARD.fullmatch(name)
        shard = f"{match.group(1)}/{match.group(2)}" if match and match.group(1) else "0/1"
        for stage in sorted(m.get("stages", {}), key=lambda s: order.index(s) if s in order else len(order)):
            s = m["stages"][stage]
            done, planned = s.get("records", 0), s.get("planned")
            secs, tokens = s.get("seconds", 0.0) or 0.0, s.get("tokens", 0)
            rate = done / secs if secs and done else None
            left = None if planned is None else max(planned - done, 0)
            eta = left / rate if rate and left else (0.0 if left == 0 else None)
            rows.append(
                {
                    "shard": shard,
                    "stage": stage,
                    "state": s.get("state", "done"),
                    "done": done,
                    "planned": planned,
                    "errors": s.get("errors", 0),
                    "errors_by_kind": s.get("errors_by_kind", {}),
                    "tokens": tokens,
                    "seconds": secs,
                    "tokens_per_s": tokens / secs if secs and tokens else None,
                    "records_per_s": rate,
                    "eta_s": eta,
                    "updated": s.get("updated") or m.get("updated"),
                }
            )
    return rows


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def status_table(rows: list[dict], run_dir: str | Path) -> Table:
    t = Table(
        "shard", "stage", "state", "done / planned", "errors", "tokens", "tok/s", "ETA", "updated", title=str(run_dir)
    )
    for r in rows:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(r["errors_by_kind"].items()))
        errors = f"{r['errors']}" + (f" ({kinds})" if kinds else "")
        planned = "?" if r["planned"] is None else str(r["planned"])
        rate = "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f}"
        t.add_row(
            r["shard"],
            r["stage"],
            r["state"],
            f"{r['done']} / {planned}",
            errors,
            str(r["tokens"]),
            rate,
            _duration(r["eta_s"]) if r["state"] == "running" else "-",
            r["updated"] or "-",
        )
    return t
