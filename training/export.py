"""Records → TRL conversational datasets, loadable with `datasets`.

Splits go by query, never by record: every answer, revision and pair of one query lands in the
same split, so a test pair never shares its prompt with a training pair.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from cai.critique.records import Comparison, Revision
from cai.generators.records import Query, Response


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    test_fraction: float = Field(0.1, ge=0, lt=1, description="Share of queries held out for the test splits.")
    min_p_chosen: float = Field(0.5, ge=0.5, le=1, description="Drop pairs whose soft label is below this.")


def is_test(query_id: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(query_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def build_rows(
    queries: list[Query],
    responses: list[Response],
    revisions: list[Revision],
    comparisons: list[Comparison],
    cfg: ExportConfig,
) -> dict[str, list[dict]]:
    kept = {q.id: q for q in queries if q.dropped is None}
    texts = {r.id: r.text for r in responses} | {v.id: v.final for v in revisions}
    rows: dict[str, list[dict]] = {
        k: [] for k in ("train_sft", "test_sft", "train_prefs", "test_prefs", "train_prompts", "test_prompts")
    }

    def split(qid: str) -> str:
        return "test" if is_test(qid, cfg.test_fraction) else "train"

    for q in kept.values():
        rows[f"{split(q.id)}_prompts"].append(
            {"prompt": q.messages, "query_id": q.id, "principle_ids": q.principle_ids + q.trait_ids}
        )
    for v in revisions:
        q = kept.get(v.query_id)
        if q is None or not v.final.strip():
            continue
        rows[f"{split(q.id)}_sft"].append(
            {
                "messages": q.messages + [{"role": "assistant", "content": v.final}],
                "query_id": q.id,
                "principle_ids": v.principle_ids,
            }
        )
    for c in comparisons:
        q = kept.get(c.query_id)
        if q is None or c.p_chosen < cfg.min_p_chosen or c.chosen_id not in texts or c.rejected_id not in texts:
            continue
        rows[f"{split(q.id)}_prefs"].append(
            {
                "prompt": q.messages,
                "chosen": [{"role": "assistant", "content": texts[c.chosen_id]}],
                "rejected": [{"role": "assistant", "content": texts[c.rejected_id]}],
                "p_chosen": c.p_chosen,
                "principle_ids": c.principle_ids,
                "kind": c.kind,
                "query_id": q.id,
            }
        )
    return rows


def write_export(rows: dict[str, list[dict]], out: Path, card: dict) -> dict[str, int]:
    """Write one JSONL file per non-empty split plus a dataset card whose header lets
    `datasets.load_dataset(out, "prefs")` find the files."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    configs: dict[str, list[dict]] = {}
    for name, items in rows.items():
        path = out / f"{name}.jsonl"
        if not items:
            path.unlink(missing_ok=True)
            continue
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")
        tmp.replace(path)
        counts[name] = len(items)
        split, kind = name.split("_", 1)
        configs.setdefault(kind, []).append({"split": split, "path": path.name})
    header = {
        "configs": [{"config_name": k, "data_files": v} for k, v in configs.items()],
        "tags": ["constitutional-ai", "rlaif", "trl"],
    }
    body = [
        f"# {card.get('title', 'cai dataset')}",
        "",
        "Synthetic data made with cai from a constitution, with no human labels.",
        "",
        "| split | rows |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in counts.items()],
        "",
        "## Provenance",
        "",
        "```yaml",
        yaml.safe_dump(card, sort_keys=False, allow_unicode=True).strip(),
        "```",
        "",
        "Formats: `sft` is TRL conversational (`messages`); `prefs` is TRL conversational preference",
        "(`prompt`, `chosen`, `rejected`) with the soft label `p_chosen` and the `principle_ids` used;",
        "`prompts` is prompt-only for RL.",
    ]
    (out / "README.md").write_text("---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n" + "\n".join(body) + "\n")
    return counts
