"""Runs the declared stages in order into a run directory, resuming whatever is already there.

For each stage (`stages.py`): plan its tasks from the records of the stages it reads (ids known
before any model call), set them against what is on disk (`Step`: what is kept, moved aside
after a config edit, taken back, failed for good, left to run) and run the rest batch by batch
(`runner.py`), appending records after every batch. A dry run prints the steps and runs nothing.

Which records still hold after a config edit is decided by each stage's identity (`cai.core.
identity`), recorded in the manifest: a stage whose identity is unchanged keeps its file as it
is, whatever `--limit` plans this time; one whose identity changed moves aside exactly the
records the new config (without a limit) no longer wants, and takes back from `superseded/` any
it wants again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console

from cai.constitution import dump_constitution
from cai.core.errors import UserError
from cai.core.identity import identity
from cai.core.ids import digest

from . import history
from .config import RunConfig, dump_config, load_constitutions
from .executors import Executor, make_executor
from .lock import RunLock
from .refs import Refs
from .runner import PlanRow, StageRunner, StageStats, Step
from .stages import BY_NAME, NAMES, STAGES, RunContext, Stage, StagePlan
from .store import RunStore


@dataclass
class Pipeline:
    cfg: RunConfig
    out: Path
    limit: int | None = None
    shard: tuple[int, int] = (0, 1)
    console: Console = field(default_factory=Console)
    retry_failed: bool = False
    dry_run: bool = False
    executor: Executor | None = None  # where batches run; default: the config's `executor`

    def __post_init__(self) -> None:
        i, n = self.shard
        if not 0 <= i < n:
            raise UserError(f"--shard: expected i/N with 0 <= i < N, got {i}/{n}")
        fresh = not (self.out / "config.yaml").is_file()
        self.store = RunStore(self.out, self.shard, create=not (self.dry_run and fresh))
        constitution, ranking = load_constitutions(self.cfg)
        self.ctx = RunContext(self.cfg, constitution, ranking, self.store, Refs(self.store), self.shard, self.limit)
        if self.executor is None:
            self.executor = make_executor(self.cfg.executor, self.console)
        self.stats: list[StageStats] = []
        self.plan: list[PlanRow] = []
        self.lock = RunLock(self.out, self.store.suffix)
        self.change: history.ConfigChange | None = None
        self._identities: dict[str, str] = {}

    @property
    def constitution(self):
        return self.ctx.constitution

    @property
    def refs(self) -> Refs:
        return self.ctx.refs

    def backend_config(self, role):
        return self.ctx.backend_config(role)

    # -- identity and history ---------------------------------------------------------------

    def identity(self, stage: Stage) -> str:
        """What shapes a stage's records: its own settings, model and constitution, and the
        identities of the stages it reads (their ids enter its own)."""
        if stage.name not in self._identities:
            reads = {r: self.identity(BY_NAME[r]) for r in stage.reads if BY_NAME[r].enabled(self.ctx)}
            self._identities[stage.name] = digest({"stage": stage.name, **stage.parts(self.ctx), "reads": reads})
        return self._identities[stage.name]

    def snapshot(self) -> history.Snapshot:
        cfg = self.cfg
        roles = {s.role for s in STAGES if s.role is not None}
        models = {r: identity(self.ctx.backend_config(r), "stage") for r in sorted(roles)}
        identities = {s.name: self.identity(s) for s in STAGES if s.enabled(self.ctx)}
        whole = {"config": identity(cfg, "config"), "constitution": self.constitution.content_hash()}
        return history.Snapshot(
            dump_config(cfg), dump_constitution(self.constitution), digest(whole), identities, models, self.layers()
        )

    def layers(self) -> dict[str, list[dict]]:
        """The files the frozen constitution.yaml was merged from, each with its content hash; the
        ranking constitution's too where the comparisons read another."""
        from cai.constitution.layers import layer_records

        out = {"constitution": layer_records(self.cfg.constitution)}
        if self.cfg.comparisons.constitution:
            out["ranking"] = layer_records(self.cfg.comparisons.constitution)
        return out

    def start(self) -> history.ConfigChange:
        """Take this shard's lock, then keep the config (a new version if it changed)."""
        if not self.dry_run:
            self.lock.acquire()
        has = {name: bool(self.store.stage_paths(name, all_shards=True)) for name in NAMES}
        i, n = self.shard
        self.change = history.record(self.out, self.snapshot(), f"{i}/{n}", has, dry=self.dry_run)
        return self.change

    # -- the loop -----------------------------------------------------------------------------

    def run(self, until: str | None = None, only: str | None = None) -> list[StageStats]:
        """Run the stages up to `until` (or just `only`, which needs its inputs on disk)."""
        target = only or until or NAMES[-1]
        if target not in NAMES:
            raise UserError(f"unknown stage {target!r}; choose one of {', '.join(NAMES)}")
        if self.change is None:
            self.start()
        chosen = STAGES[: NAMES.index(target) + 1]
        outputs: dict[str, list] = {}
        for k, stage in enumerate(chosen):
            later = chosen[k + 1 :]
            needed = any(stage.name in s.reads for s in later)
            if not stage.enabled(self.ctx):
                outputs[stage.name] = []
            elif only and stage.name != only:
                outputs[stage.name] = stage.read(self.ctx, None) if needed else []
            else:
                if only:
                    self._inputs_on_disk(stage)
                for _ in range(stage.passes(self.ctx)):  # a conversation's turns: one pass each
                    wanted = self.execute(stage, stage.plan(self.ctx, outputs))
                    if self.dry_run:
                        break
                outputs[stage.name] = stage.read(self.ctx, wanted) if needed else []
        return self.stats

    def _inputs_on_disk(self, stage: Stage) -> None:
        for name in stage.reads:
            if BY_NAME[name].enabled(self.ctx) and not self.store.stage_path(name).exists():
                raise UserError(f"{stage.name}: no {name} in {self.out} yet; run that stage first")

    def execute(self, stage: Stage, plan: StagePlan) -> set[str]:
        """Plan the step; in a dry run only note it, else move what the edit asks and run the rest."""
        step = self.plan_step(stage, plan)
        if self.dry_run:
            self.plan.append(step.row(after_upstream=any(r.todo for r in self.plan)))
            return step.wanted
        if step.move or step.restore:
            self.store.reconcile(stage.name, step.move, step.restore, self._kept_version(stage))
        if plan.hydrate is not None:
            step.todo = [plan.hydrate(t) for t in step.todo]
        cfg = self.cfg
        runner = StageRunner(
            self.store, self.executor, self.console, cfg.batch_size, cfg.write_every, cfg.write_seconds
        )
        try:
            stats = runner.run(step)
        except BaseException:  # a signal, an interrupt, a full disk: `cai status` must not say "running"
            self.store.set_state(stage.name, "stopped")
            raise
        last = self.stats[-1] if self.stats else None
        if last is not None and last.stage == stats.stage:  # another pass of the same stage: one row
            for name in ("new", "tokens", "seconds", "errors", "read", "reused"):
                setattr(last, name, getattr(last, name) + getattr(stats, name))
            last.records = stats.records
        else:
            self.stats.append(stats)
        return step.wanted

    def _kept_version(self, stage: Stage) -> int:
        """The config version the records moved aside were kept under."""
        return self.store.manifest()["stages"].get(stage.name, {}).get("config_version") or 0

    def plan_step(self, stage: Stage, plan: StagePlan) -> Step:
        """What the stage has to do, from the plan and what is on disk; moves and runs nothing."""
        name, wanted = stage.name, plan.wanted
        ident = self.identity(stage)
        on_disk = self.store.ids(name) if plan.done is None else set(plan.done)
        recorded = self.store.manifest()["stages"].get(name, {}).get("identity")
        move: set[str] = set()
        if recorded != ident and on_disk:
            keep = wanted if self.limit is None else self.full_wanted(stage)
            move = on_disk - keep
        done = on_disk - move
        missing = {o for t in plan.tasks for o in t.outputs if o not in done}
        restore = missing & self.store.aside_ids(name) if missing else set()
        done |= restore
        failures = self.store.failures(name)
        pending = [t for t in plan.tasks if not all(o in done for o in t.outputs)]
        if plan.runnable is not None:  # a later turn waits for its parent
            pending = [t for t in pending if plan.runnable(t, done)]
        todo = [t for t in pending if self._may_run(failures.get(t.id))]
        readings = plan.readings(todo) if plan.readings is not None and todo else None
        version = self.change.version if self.change else 1
        return Step(stage, plan, ident, version, done, move, restore, failures, pending, todo, readings, wanted)

    def _may_run(self, failure: dict | None) -> bool:
        if failure is None or self.retry_failed:
            return True
        return failure["kind"] == "transient" and failure["attempts"] <= self.cfg.retries

    def full_wanted(self, upto: Stage) -> set[str]:
        """The ids a stage wants with no `--limit`: planned from every record on disk, so that a
        limited run moves aside only what the config itself no longer wants."""
        ctx = replace(self.ctx, limit=None)
        outputs: dict[str, list] = {}
        for stage in STAGES[: NAMES.index(upto.name) + 1]:
            if not stage.enabled(ctx):
                outputs[stage.name] = []
                continue
            wanted = stage.plan(ctx, outputs).wanted
            if stage is upto:
                return wanted
            outputs[stage.name] = stage.read(ctx, wanted)
        return set()

    def close(self) -> None:
        try:
            self.executor.close()
        finally:
            self.ctx.refs.close()
            self.lock.release()
