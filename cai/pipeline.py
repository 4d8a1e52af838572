"""Runs the stages in order into a run directory, resuming whatever is already there.

Each stage plans its tasks from the records of the stage before (ids known before any model
call), keeps the tasks of this shard that are not done yet, and runs them batch by batch,
appending records after every batch. Planning holds references to those records (ids and byte
offsets, `refs.py`); a task is given the records themselves only when it runs, so a rerun of a
million pairs plans in well under a gigabyte. Work is split over shards by the *query* id, so a query's
whole chain (answers, revisions, pairs) stays in one shard's files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cai.constitution import UserError, derive_seed, dump_constitution
from cai.critique import (
    plan_comparison_tasks,
    plan_revision_tasks,
    run_comparison_tasks,
    run_revision_tasks,
)
from cai.critique.distill import distill_pairs, plan_teacher_tasks, run_teacher_tasks
from cai.critique.introspect import plan_introspection_tasks, run_introspection_tasks
from cai.critique.rank import Candidate
from cai.critique.revise import RevisionInput
from cai.generators import BackendConfig
from cai.generators.queries import Deduplicator, load_seed_queries, plan_query_tasks, run_query_tasks
from cai.generators.records import Query, StageOutput, Task
from cai.generators.responses import plan_response_tasks, run_response_tasks

from . import history
from .config import RunConfig, dump_config, load_constitutions
from .executors import Executor, StageCall, make_executor
from .lock import RunLock
from .refs import AnswerRef, QueryRef, Refs, RevisionRef
from .store import STAGES, RunStore


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""


@dataclass
class StageStats:
    stage: str
    records: int = 0
    new: int = 0
    tokens: int = 0
    seconds: float = 0.0
    errors: int = 0


@dataclass
class PlanRow:
    """What a run will do to one stage, known before any model is loaded (`cai run --dry-run`)."""

    stage: str
    planned: int  # records the current config wants
    kept: int  # of those, already on disk (or brought back from superseded/)
    aside: int  # records on disk the current config does not want: moved to superseded/
    todo: int  # tasks to run
    failed: int  # failed tasks left alone (permanent, or out of retries)
    after_upstream: bool = False  # an earlier stage has work to do, so this stage will have more


def _transient_exception(e: BaseException) -> bool:
    """A batch-wide failure that may pass: out of memory, a lost connection, a timeout."""
    if isinstance(e, (MemoryError, ConnectionError, TimeoutError)):
        return True
    return type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()


class KeepAll:
    """The near-duplicate check as a stage function sees it: keeps everything, since the driver
    alone holds every kept query and drops duplicates from each batch as it comes back."""

    def check(self, qid: str, text: str) -> None:
        return None


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
        if self.dry_run and not (self.out / "config.yaml").is_file():
            self.store = RunStore(self.out, self.shard, create=False)
        else:
            self.store = RunStore(self.out, self.shard)
        self.constitution, self.ranking = load_constitutions(self.cfg)
        if self.executor is None:
            self.executor = make_executor(self.cfg.executor, self.console)
        self.stats: list[StageStats] = []
        self.plan: list[PlanRow] = []
        self.lock = RunLock(self.out, self.store.suffix)
        self.change: history.ConfigChange | None = None
        self.refs = Refs(self.store)

    def backend_config(self, role: str) -> BackendConfig:
        """The backend of a role: policy, feedback, teacher or introspection."""
        cfg = self.cfg
        roles = {"policy": cfg.policy, "feedback": cfg.feedback_backend, "teacher": cfg.teacher_backend}
        return roles.get(role) or cfg.introspection_backend

    def model_name(self, role: str) -> str:
        bc = self.backend_config(role)
        return f"{bc.backend}:{bc.model}"

    def call(self, role: str, fn, *before, after: tuple = ()) -> StageCall:
        """`fn(backend, *before, tasks, *after)` on the role's backend, wherever the executor runs it."""
        return StageCall(fn, self.backend_config(role), before, after)

    def mine(self, query_id: str) -> bool:
        i, n = self.shard
        return n == 1 or derive_seed("shard", query_id) % n == i

    def start(self) -> history.ConfigChange:
        """Take this shard's lock, then keep the config (a new version if it changed)."""
        if not self.dry_run:
            self.lock.acquire()
        has = {s: bool(self.store.stage_paths(s, all_shards=True)) for s in (*STAGES, "teacher", "introspection")}
        i, n = self.shard
        self.change = history.record(
            self.out, dump_config(self.cfg), dump_constitution(self.constitution), f"{i}/{n}", has, dry=self.dry_run
        )
        return self.change

    def _execute(
        self,
        stage: str,
        tasks: list[Task],
        call: StageCall,
        check=None,
        hydrate: Callable[[Task], Task] | None = None,
        done: set[str] | None = None,
    ) -> StageStats:
        """Skip finished tasks, run the rest in batches, append after each batch.

        Tasks with a `ready` record need no model; the others go to the executor, batch by batch,
        and come back in order. `hydrate(task)` turns a planned task's references into the records
        it runs on, for the tasks that run only. `check(output)` may amend a batch's records before
        they are written. `done`: the stage's ids on disk, where planning has read them already."""
        t0 = time.perf_counter()
        version = self.change.version if self.change else 1
        wanted = {o for t in tasks for o in t.outputs}
        before = self.store.manifest()["stages"].get(stage, {})
        done = self.store.ids(stage) if done is None else done  # planning needs ids, not records
        kept, aside = len(done & wanted), 0
        if before.get("config_version") != version and done:
            if self.dry_run:
                aside = len(done - wanted)
            else:
                kept, aside = self.store.supersede(stage, wanted, before.get("config_version") or 0)
                done = self.store.ids(stage)
        failures = self.store.failures(stage)

        def may_run(t: Task) -> bool:
            f = failures.get(t.id)
            return f is None or self.retry_failed or (f["kind"] == "transient" and f["attempts"] <= self.cfg.retries)

        pending = [t for t in tasks if not all(o in done for o in t.outputs)]
        todo = [t for t in pending if may_run(t)]
        if hydrate is not None and not self.dry_run:
            todo = [hydrate(t) for t in todo]
        stats = StageStats(stage, records=len(done))
        if self.dry_run:
            upstream = any(r.todo for r in self.plan)
            self.plan.append(PlanRow(stage, len(wanted), kept, aside, len(todo), len(pending) - len(todo), upstream))
            return stats
        tokens0, seconds0 = before.get("tokens", 0), before.get("seconds", 0.0)

        def manifest(state: str) -> None:
            open_failures = {k: f for k, f in self.store.failures(stage).items() if k not in done_tasks}
            kinds: dict[str, int] = {}
            for f in open_failures.values():
                kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
            self.store.update_manifest(
                stage,
                records=len(done),
                planned=len(wanted),
                tokens=tokens0 + stats.tokens,
                seconds=round(seconds0 + (time.perf_counter() - t0 if todo else 0.0), 3),
                errors=len(open_failures),
                errors_by_kind=kinds,
                config_version=version,
                state=state,
            )

        # done tasks among those with a failure on record: all the manifest's error count needs
        done_tasks = {t.id for t in tasks if t.id in failures and all(o in done for o in t.outputs)}
        manifest("running" if todo else "done")
        with Progress(
            TextColumn(f"[bold]{stage:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[tokens]} tok"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            disable=not todo,
        ) as progress:
            bar = progress.add_task(stage, total=len(todo), tokens=0)
            bs = self.cfg.batch_size
            batches = [todo[start : start + bs] for start in range(0, len(todo), bs)]
            outcomes = self.executor.map(call, [[t for t in b if t.ready is None] for b in batches])
            for batch, (model_tasks, outcome) in zip(batches, outcomes):
                result = StageOutput(records=[t.ready for t in batch if t.ready is not None])
                if isinstance(outcome, Exception):
                    if not _transient_exception(outcome):
                        raise outcome
                    for t in model_tasks:  # the whole call failed; a rerun tries it again
                        result.fail(t, f"{type(outcome).__name__}: {_first_line(outcome)}", "transient")
                else:
                    result.extend(outcome)
                if check is not None:
                    check(result)
                fresh = [r for r in result.records if r.id not in done]  # a task may have had some outputs
                for e in result.errors:
                    e["attempt"] = failures.get(e["task_id"], {}).get("attempts", 0) + 1
                self.store.append(stage, fresh)
                self.store.append_errors(stage, result.errors)
                done.update(r.id for r in fresh)
                done_tasks.update(t.id for t in batch if all(o in done for o in t.outputs))
                stats.new += len(fresh)
                stats.tokens += result.tokens
                stats.errors += len(result.errors)
                progress.update(bar, advance=len(batch), tokens=stats.tokens)
                manifest("running")
        stats.records = len(done)
        stats.seconds = time.perf_counter() - t0
        manifest("done")
        self.stats.append(stats)
        return stats

    def run_queries(self) -> list[QueryRef]:
        cfg = self.cfg.queries
        seeds = load_seed_queries(cfg.seed_file) if cfg.seed_file else []
        gen_tasks = plan_query_tasks(self.constitution, cfg, self.cfg.seed)
        seed_tasks = [Task(q.id, None, [q.id], ready=q) for q in seeds]
        tasks = [t for t in seed_tasks + gen_tasks if self.mine(t.id)]
        if self.limit is not None:
            tasks = tasks[: self.limit]
        if not tasks:
            raise UserError("queries: nothing to do: set queries.per_principle above 0 or give queries.seed_file")
        dedupe: Deduplicator | None = None

        def drop_duplicates(out: StageOutput) -> None:
            """Seed queries are only remembered; a generated one like an earlier query is dropped.

            The filter is built from the kept queries on disk when the first batch comes back: a
            rerun with nothing left to do never builds it."""
            nonlocal dedupe
            if dedupe is None:
                dedupe = Deduplicator(cfg.near_duplicate)
                for q in self.store.iter_records("queries", Query):
                    if q.dropped is None:
                        dedupe.check(q.id, q.text)
            for q in out.records:
                if q.dropped is None and (dup := dedupe.check(q.id, q.text)) is not None and q.origin == "generated":
                    q.dropped = f"duplicate of {dup}"

        call = self.call("policy", run_query_tasks, self.constitution, after=(cfg, self.cfg.seed, KeepAll()))
        self._execute("queries", tasks, call, drop_duplicates)
        wanted = {t.id for t in tasks}
        del seeds, seed_tasks, gen_tasks, tasks  # the seed queries as records: not kept past here
        return [q for q in self.refs.queries() if q.id in wanted]

    def run_responses(self, queries: list[QueryRef]) -> list[AnswerRef]:
        cfg = self.cfg.responses
        tasks = plan_response_tasks(queries, cfg, self.model_name("policy"), self.cfg.seed)
        call = self.call("policy", run_response_tasks, after=(cfg, self.cfg.seed))
        self._execute("responses", tasks, call, hydrate=_query_record)
        wanted = {o for t in tasks for o in t.outputs}
        del tasks
        return [r for r in self.refs.answers("responses", {q.id: q.id for q in queries}) if r.id in wanted]

    def run_teacher(self, queries: list[QueryRef]) -> list[AnswerRef]:
        """Context distillation's teacher (the policy unless one is set), with the constitution as its system prompt."""
        cfg = self.cfg.responses
        tasks = plan_teacher_tasks(queries, self.constitution, cfg, self.model_name("teacher"), self.cfg.seed)
        call = self.call("teacher", run_teacher_tasks, self.constitution, after=(cfg, self.cfg.seed))
        self._execute("teacher", tasks, call, hydrate=_query_record)
        wanted = {t.id for t in tasks}
        return [r for r in self.refs.answers("teacher") if r.id in wanted]

    def run_introspection(self) -> None:
        """Self-reflections and self-interactions per trait, in character (character constitutions)."""
        cfg = self.cfg.introspection
        if cfg is None or not self.constitution.traits:
            return
        tasks = plan_introspection_tasks(self.constitution, cfg, self.model_name("introspection"), self.cfg.seed)
        tasks = [t for t in tasks if self.mine(t.id)]
        call = self.call("introspection", run_introspection_tasks, self.constitution, after=(cfg, self.cfg.seed))
        self._execute("introspection", tasks, call)

    def run_revisions(self, queries: list[QueryRef], responses: list[AnswerRef]) -> list[RevisionRef]:
        cfg = self.cfg.revisions
        if cfg.rounds == 0 or not self.constitution.critique_principles:
            return []
        by_id = {q.id: q for q in queries}
        pairs = [(by_id[r.query_id], r) for r in responses if r.query_id in by_id]
        tasks = plan_revision_tasks(pairs, self.constitution, cfg, self.model_name("policy"), self.cfg.seed)
        call = self.call("policy", run_revision_tasks, self.constitution, after=(cfg, self.cfg.seed))

        def hydrate(t: Task) -> Task:
            return replace(t, data=RevisionInput(t.data.query.record(), t.data.response.record()))

        self._execute("revisions", tasks, call, hydrate=hydrate)
        wanted = {t.id for t in tasks}
        return [v for v in self.refs.revisions() if v.id in wanted]

    def run_comparisons(
        self, queries: list[QueryRef], responses: list[AnswerRef], revisions: list[RevisionRef]
    ) -> None:
        """Pairs of each query's answers and (initial, revised) pairs; texts are read only for the
        pairs that run (and to skip identical answers among pairs not ranked yet)."""
        cfg = self.cfg.comparisons
        samples: dict[str, list[Candidate]] = {q.id: [] for q in queries}
        answers: dict[str, Candidate] = {}
        for r in sorted(responses, key=lambda r: r.sample_index):
            if r.query_id in samples:
                answers[r.id] = Candidate(r.id, r)
                samples[r.query_id].append(answers[r.id])
        revised: dict[str, list] = {q.id: [] for q in queries}
        for v in revisions:
            if v.query_id in revised and v.changed:
                initial = answers.get(v.response_id) or Candidate(v.response_id, lambda v=v: v.initial)
                revised[v.query_id].append((initial, Candidate(v.id, lambda v=v: v.final)))
        del answers
        groups = [(q, samples[q.id], revised[q.id]) for q in queries]
        tasks = []
        done = self.store.ids("comparisons")  # read once, for planning and for _execute
        if cfg.mode in ("rank", "both"):
            model = self.model_name("feedback")
            tasks = plan_comparison_tasks(groups, self.ranking, cfg, model, self.cfg.seed, done=done)
        if cfg.mode in ("distill", "both"):
            teachers = self.run_teacher(queries)
            pairs = distill_pairs(queries, teachers, responses, cfg.distill_p_chosen)
            tasks += [Task(c.id, None, [c.id], ready=c) for c in pairs]
        del groups, samples, revised  # the tasks hold what they need
        call = self.call("feedback", run_comparison_tasks, self.ranking, after=(cfg, self.cfg.seed))

        def hydrate(t: Task) -> Task:
            return t if t.ready is not None else replace(t, data=replace(t.data, query=t.data.query.record()))

        self._execute("comparisons", tasks, call, hydrate=hydrate, done=done)

    def run(self, until: str = "comparisons", only: str | None = None) -> list[StageStats]:
        """Run stages up to `until` (or just `only`, which needs its inputs on disk)."""
        if until not in STAGES or (only and only not in STAGES):
            raise UserError(f"unknown stage; choose one of {', '.join(STAGES)}")
        if self.change is None:
            self.start()
        last = STAGES.index(only or until)
        if only and only != "queries" and not self.store.stage_path(STAGES[STAGES.index(only) - 1]).exists():
            raise UserError(f"{only}: no {STAGES[STAGES.index(only) - 1]} in {self.out} yet; run that stage first")
        queries = self.run_queries() if not only or only == "queries" else self._load_kept_queries()
        if last >= 1:
            responses = (
                self.run_responses(queries)
                if not only or only == "responses"
                else [r for r in self.refs.answers("responses") if self.mine(r.query_id)]
            )
            if last >= 2:
                revisions = (
                    self.run_revisions(queries, responses)
                    if not only or only == "revisions"
                    else [v for v in self.refs.revisions() if self.mine(v.query_id)]
                )
                if last >= 3:
                    if not only:
                        self.run_introspection()
                    self.run_comparisons(queries, responses, revisions)
        return self.stats

    def _load_kept_queries(self) -> list[QueryRef]:
        qs = [q for q in self.refs.queries() if self.mine(q.id)]
        return qs[: self.limit] if self.limit is not None else qs

    def close(self) -> None:
        try:
            self.executor.close()
        finally:
            self.refs.close()
            self.lock.release()


def _query_record(t: Task) -> Task:
    """A task planned on a query's reference, on the query's record."""
    return replace(t, data=t.data.record())


def summary_table(stats: list[StageStats]) -> Table:
    t = Table("stage", "records", "new", "tokens", "seconds", "tokens/s", "errors", title="run summary")
    for s in stats:
        rate = f"{s.tokens / s.seconds:.1f}" if s.seconds > 0 and s.tokens else "-"
        t.add_row(s.stage, str(s.records), str(s.new), str(s.tokens), f"{s.seconds:.1f}", rate, str(s.errors))
    return t


def plan_table(rows: list[PlanRow], change: history.ConfigChange | None) -> Table:
    title = "plan (dry run: nothing was run or written)"
    if change is not None and change.new and change.version > 1:
        title += f"\nconfig changed ({', '.join(change.sections)}): would be kept as configs/{change.version:03d}.yaml"
    t = Table("stage", "planned", "kept", "moved aside", "to do", "failed, left alone", title=title)
    for r in rows:
        more = " + after upstream" if r.after_upstream else ""
        t.add_row(r.stage, str(r.planned) + more, str(r.kept), str(r.aside), str(r.todo) + more, str(r.failed))
    return t
