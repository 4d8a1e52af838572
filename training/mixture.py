"""Training data mixtures: several sources, each drawn in a stated share, as one dataset.

The CAI recipe trains the preference model and the policy on AI-labelled harmlessness pairs
*and* human-labelled helpfulness pairs: on harmlessness data alone the model learns that refusing
is always safe. A mixture names its sources (a run's export, a local file or folder, a hub
dataset id), each with a `weight` (its share of the weighted part of the mixture) or a `samples`
count (exactly that many rows, repeated when the source has fewer), or neither (every row once).

The weighted part is as large as it can be without repeating any weighted source, so weights
never invent data; a small source that should count for more than its size takes `samples`.

Rows are read from the layouts people have: our exports and TRL's conversational formats,
TRL's prompt-completion and string-prompt forms, and HH-RLHF transcripts
(`"\\n\\nHuman: ...\\n\\nAssistant: ..."`). Each is turned into TRL's conversational form with a
`source` column; a row that holds nothing usable (two transcripts that differ before their last
answer, a conversation without an answer) is left out and counted in the summary with its reason.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cai.core.errors import UserError
from cai.core.ids import derive_seed
from cai.core.layouts import Malformed, Skip, conversation, preference, prompt

from .export_files import SPLITS, split_files

Kind = Literal["sft", "prefs", "prompts"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SKIP = "_skip"


class DataSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        description="A run folder or its datasets/ folder, a JSONL/Parquet file (.gz ok), a folder of data files, "
        "or a Hugging Face hub dataset id."
    )
    weight: float | None = Field(None, gt=0, description="Share of the weighted part of the mixture.")
    samples: int | None = Field(None, ge=1, description="Exactly this many rows, repeated if the source has fewer.")
    split: str = Field("train", description="Split to train on (a run export's train/test, or a hub split name).")
    eval_split: str | None = Field(
        "test", description="Held-out split for evaluation, used when the source has it; null for none."
    )
    eval_samples: int | None = Field(None, ge=1, description="At most this many held-out rows from this source.")
    data_dir: str | None = Field(None, description="Hub datasets: the sub-folder, e.g. helpful-base.")
    name: str | None = Field(None, description="The source's name in summary.json; default: its path.")

    @model_validator(mode="after")
    def _one_amount(self) -> DataSource:
        if self.weight is not None and self.samples is not None:
            raise ValueError("give weight or samples, not both")
        return self

    @property
    def label(self) -> str:
        return self.name or (f"{self.path}/{self.data_dir}" if self.data_dir else self.path)


# ---------------------------------------------------------------------------------------------
# Reading one source


def _load_files(files: list[Path], where: str):
    from datasets import load_dataset

    name = files[0].name.removesuffix(".gz")
    fmt = "parquet" if name.endswith(".parquet") else "json"
    if all(f.stat().st_size == 0 for f in files):
        raise UserError(f"{where}: dataset is empty")
    try:
        return load_dataset(fmt, data_files=[str(f) for f in files], split="train")
    except Exception as e:  # datasets raises many types for unreadable files
        raise UserError(f"{where}: cannot read as {fmt}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _export_folder(path: Path) -> Path | None:
    """The export folder a path names (a run folder or its datasets/ folder), or None."""
    for folder in (path, path / "datasets"):
        if folder.is_dir() and any(split_files(folder, *name.split("_", 1)) for name in SPLITS):
            return folder
    return path / "datasets" if (path / "config.yaml").is_file() else None


def open_source(src: DataSource, kind: Kind, split: str):
    """The raw rows of one split of a source, or None when the source has no such split. A single
    file has one split, the one named by `split` (default train)."""
    path = Path(src.path)
    export = _export_folder(path) if path.is_dir() else None
    if export is not None:
        files = split_files(export, split, kind) if export.is_dir() else []
        return _load_files(files, f"{export} ({split}_{kind})") if files else None
    if path.is_dir():
        return _load_folder_or_hub(str(path), src, split)
    if path.is_file():
        return _load_files([path], str(path)) if split == src.split else None
    if _HUB_ID.fullmatch(src.path) and not src.path.startswith("."):
        return _load_folder_or_hub(src.path, src, split)
    raise UserError(f"{src.path}: dataset not found (not a file, a folder or a hub dataset id)")


def _load_folder_or_hub(where: str, src: DataSource, split: str):
    from datasets import load_dataset

    try:
        return load_dataset(where, data_dir=src.data_dir, split=split)
    except ValueError as e:
        if "split" in str(e).lower():
            return None
        raise UserError(f"{src.label}: cannot load: {_first_line(e)}") from None
    except Exception as e:  # offline, not on the hub, unreadable: one line
        raise UserError(f"{src.label}: cannot load: {_first_line(e)}") from None


# ---------------------------------------------------------------------------------------------
# One row in any accepted layout → TRL conversational


def _prefs(row: dict) -> dict:
    prompt, chosen, rejected = preference(row)
    if not chosen or not rejected:
        raise Skip("an empty answer")
    if chosen == rejected:
        raise Skip("the two answers are the same")
    p = row.get("p_chosen")
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "p_chosen": float(p) if p is not None else None,
    }


def _sft(row: dict) -> dict:
    return {"messages": conversation(row)}


def _prompts(row: dict) -> dict:
    return {"prompt": prompt(row)}


NORMALISE = {"prefs": _prefs, "sft": _sft, "prompts": _prompts}
MAIN = {"prefs": ["prompt", "chosen", "rejected"], "sft": ["messages"], "prompts": ["prompt"]}
LAYOUT_COLUMNS = {
    "prefs": [{"chosen", "rejected"}],
    "sft": [{"messages"}, {"prompt", "completion"}, {"chosen"}, {"text"}],
    "prompts": [{"prompt"}, {"messages"}, {"chosen"}, {"text"}],
}


def _features(kind: Kind, soft: bool, extra: dict):
    from datasets import Features, List, Value

    chat = List({"role": Value("string"), "content": Value("string")})
    cols: dict = {c: chat for c in MAIN[kind]}
    if kind == "prefs" and soft:
        cols["p_chosen"] = Value("float64")
    cols |= {"principle_ids": List(Value("string")), "source": Value("string"), **extra, _SKIP: Value("string")}
    return Features(cols)


@dataclass
class Read:
    """A source's usable rows (a `datasets.Dataset`) and the rows left out, by reason."""

    rows: Any
    skipped: Counter = field(default_factory=Counter)


def normalise(ds, kind: Kind, src: DataSource, soft: bool, keep: list[str], where: str) -> Read:
    if not any(cols <= set(ds.column_names) for cols in LAYOUT_COLUMNS[kind]):
        wanted = " or ".join("/".join(sorted(c)) for c in LAYOUT_COLUMNS[kind])
        raise UserError(
            f"{where}: missing column(s) for {kind} data: expected {wanted} (has {', '.join(ds.column_names)})"
        )
    missing = [k for k in keep if k not in ds.column_names]
    if missing:
        raise UserError(f"{where}: no {missing[0]!r} column (the judge ranks against it)")
    extra = {k: ds.features[k] for k in keep}
    fn = NORMALISE[kind]

    def one(row: dict) -> dict:
        base = {"principle_ids": [], "source": src.label, **{k: row[k] for k in keep}, _SKIP: None}
        try:
            out = fn(row)
        except (Skip, Malformed) as s:  # one row among many: counted, never the end of a load
            empty = {c: [] for c in MAIN[kind]} | ({"p_chosen": None} if soft else {})
            return {**empty, **base, _SKIP: str(s)}
        ids = row.get("principle_ids")
        base["principle_ids"] = [str(i) for i in ids] if isinstance(ids, list) else []
        if kind == "prefs":
            p = out.pop("p_chosen")
            if soft:
                out["p_chosen"] = 1.0 if p is None else p  # a human label is a hard one
        return {**out, **base}

    features = _features(kind, soft, extra)
    mapped = ds.map(one, remove_columns=ds.column_names, features=features, desc=f"reading {src.label}")
    reasons = Counter(r for r in mapped[_SKIP] if r is not None)
    kept = mapped.filter(lambda r: r is None, input_columns=[_SKIP]).remove_columns([_SKIP])
    return Read(kept, reasons)


# ---------------------------------------------------------------------------------------------
# The mixture


def draw(n: int, k: int, seed: int) -> list[int]:
    """k row indices out of n: a seeded sample without repeats, then whole passes when k > n."""
    rng = random.Random(seed)
    out = [i for _ in range(k // n) for i in rng.sample(range(n), n)] if k >= n else []
    return out + rng.sample(range(n), k % n if k >= n else k)


def plan_counts(sizes: list[int], sources: list[DataSource]) -> list[int]:
    """Rows drawn per source: `samples` as given, every row for a source with neither amount, and
    the weighted ones in their shares of the largest weighted part that repeats none of them."""
    weighted = [i for i, s in enumerate(sources) if s.weight is not None]
    total_w = sum(sources[i].weight for i in weighted)  # type: ignore[misc]
    part = min((sizes[i] * total_w / sources[i].weight for i in weighted), default=0.0)  # type: ignore[operator]
    counts = []
    for n, s in zip(sizes, sources):
        if s.samples is not None:
            counts.append(s.samples)
        elif s.weight is not None:
            counts.append(min(n, int(round(part * s.weight / total_w + 1e-9))))
        else:
            counts.append(n)
    return counts


def load_mixture(
    sources: list[DataSource],
    kind: Kind,
    seed: int = 0,
    soft: bool = True,
    keep: list[str] | None = None,
    held_out: bool = False,
) -> tuple[Any, dict]:
    """(dataset, make-up) of the training mixture, or with `held_out` of the sources' held-out
    splits (None when no source has one). The make-up lists each source's rows and share."""
    from datasets import concatenate_datasets

    keep = keep or []
    raws = []
    for src in sources:
        split = src.eval_split if held_out else src.split
        ds = open_source(src, kind, split) if split else None
        where = f"{src.label} ({split})"
        if ds is None and not held_out:
            raise UserError(f"{src.label}: no {split} split of {kind} data (was the run exported with {kind} data?)")
        if ds is not None and len(ds) == 0:
            if held_out:
                ds = None
            else:
                raise UserError(f"{where}: dataset is empty")
        raws.append((src, ds, where))
    if held_out and all(ds is None for _, ds, _ in raws):
        return None, {}
    has_soft = soft and kind == "prefs" and any(ds is not None and "p_chosen" in ds.column_names for _, ds, _ in raws)
    reads = [normalise(ds, kind, s, has_soft, keep, w) if ds is not None else None for s, ds, w in raws]
    for (_, _, where), r in zip(raws, reads):
        if r is not None and len(r.rows) == 0 and not held_out:
            reason = next(iter(r.skipped), "no rows")
            raise UserError(f"{where}: no usable {kind} rows ({sum(r.skipped.values())} × {reason})")
    sizes = [len(r.rows) if r is not None else 0 for r in reads]
    if held_out:
        counts = [min(n, s.eval_samples or n) for n, s in zip(sizes, sources)]
    else:
        counts = plan_counts(sizes, sources)
    parts, makeup = [], []
    for i, (src, r, n, k) in enumerate(zip(sources, reads, sizes, counts)):
        if r is None or k == 0:
            continue
        idx = draw(n, k, derive_seed(seed, "mixture", held_out, i, src.label))
        parts.append(r.rows.select(idx))
        makeup.append(
            {
                "source": src.label,
                "split": src.eval_split if held_out else src.split,
                "available": n,
                "rows": k,
                "repeated": k > n,
                **({"weight": src.weight} if src.weight is not None else {}),
                **({"samples": src.samples} if src.samples is not None else {}),
                **({"skipped": dict(r.skipped)} if r.skipped else {}),
            }
        )
    total = sum(m["rows"] for m in makeup)
    for m in makeup:
        m["share"] = m["rows"] / total if total else 0.0
    if not parts:
        return None, {}
    data = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    if len(parts) > 1:
        data = data.shuffle(seed=derive_seed(seed, "mixture order") % 2**32)
    return data, {"rows": total, "soft_labels": has_soft, "sources": makeup}
