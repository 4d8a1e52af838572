"""Readings a run already made, handed back to the pairs that read the same thing again.

A ranked pair's id covers the text of every principle it reads, so editing one principle gives
new ids to the pairs that read it. Their other readings (the same pair, order and question, by
the same model and settings) are in the records of those pairs already: in the stage file, or
moved aside to `superseded/` by the edit. They are found here by reading key and taken as they
are; only the readings under the edited principle reach the model.

Records made before readings carried their key are keyed here from the config and constitution
they were made under (kept in `configs/`), so a run from before resumes at the same saving.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import yaml

from cai.critique.rank import ComparisonConfig, PairInput, pair_key, ranking_principles
from cai.critique.reading import reading_key, reading_settings
from cai.critique.records import Judgement

from .history import read_index


class EarlierReadings:
    """The readings of earlier records of the pairs a stage is about to run, by reading key."""

    def __init__(self, ctx, model: str, cfg: ComparisonConfig):
        self.store = ctx.store
        self.model = model
        self.settings = reading_settings(cfg, ctx.cfg.seed)
        version = self.store.manifest().get("stages", {}).get("comparisons", {}).get("config_version")
        self.live_version = version  # the config the live file's records were last kept under
        self.focus: set[str] | None = None
        self._keyers: dict[int, Callable | None] = {}

    def count(self, todo: list) -> tuple[int, int]:
        """(readings to ask the model, readings taken from earlier records) for the pairs in `todo`."""
        self.focus = {t.data.key for t in todo if t.ready is None}
        self.__dict__.pop("index", None)
        to_read = reused = 0
        for t in todo:
            if t.ready is not None:
                continue
            known = self.index.get(t.data.key, {})
            for p in t.data.principles:
                for order in ("ab", "ba"):
                    hit = reading_key(self.model, self.settings, t.data.key, order, p) in known
                    reused += hit
                    to_read += not hit
        return to_read, reused

    def of(self, pair: PairInput) -> dict[str, Judgement] | None:
        return self.index.get(pair.key) or None

    @cached_property
    def index(self) -> dict[str, dict[str, Judgement]]:
        """pair key → reading key → judgement, over the live stage file and `superseded/`."""
        out: dict[str, dict[str, Judgement]] = {}
        path = self.store.stage_path("comparisons")
        sources = [(path, self.live_version)]
        for aside in sorted((self.store.root / "superseded").glob(f"v*/{path.name}")):
            sources.append((aside, int(aside.parent.name[1:])))
        for src, version in sources:
            if not src.exists():
                continue
            for _, _, row in self.store.rows_at(src):
                if row.get("kind") == "distill":
                    continue
                pk = pair_key(row["query_id"], row["first_id"], row["second_id"])
                if self.focus is not None and pk not in self.focus:
                    continue
                known = out.setdefault(pk, {})
                for j in row.get("judgements", []):
                    judgement = Judgement.model_validate(j)
                    key = judgement.key or self._legacy_key(version, pk, judgement)
                    if key is not None:
                        known.setdefault(key, judgement)
        return out

    def _legacy_key(self, version: int | None, pk: str, j: Judgement) -> str | None:
        """The key of a reading kept before readings carried one, from the config it was made under."""
        if version is None:
            return None
        if version not in self._keyers:
            self._keyers[version] = _legacy_keyer(self.store.root, version)
        keyer = self._keyers[version]
        return keyer(pk, j) if keyer is not None else None


def _legacy_keyer(root: Path, version: int) -> Callable[[str, Judgement], str | None] | None:
    from cai.constitution import load_constitution

    entry = next((e for e in read_index(root) if e.get("version") == version), None)
    if entry is None:
        return None
    try:
        cfg = yaml.safe_load((root / entry["config"]).read_text(encoding="utf-8")) or {}
        constitution = load_constitution(root / entry["constitution"])
    except (OSError, yaml.YAMLError, ValueError):
        return None
    comparisons = cfg.get("comparisons") or {}
    if comparisons.get("constitution"):
        return None  # ranked under a file whose content that version did not keep
    fb = cfg.get("feedback") or cfg.get("policy") or {}
    model = f"{fb.get('backend', 'transformers')}:{fb.get('model', 'default')}"
    try:
        settings = reading_settings(ComparisonConfig.model_validate(comparisons), cfg.get("seed", 0))
    except ValueError:
        return None
    principles = {p.id: p for p in ranking_principles(constitution)}

    def key(pk: str, j: Judgement) -> str | None:
        p = principles.get(j.principle_id)
        return reading_key(model, settings, pk, j.order, p) if p is not None else None

    return key
