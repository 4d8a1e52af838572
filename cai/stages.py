"""The stages of a run, declared once, in run order.

Each stage states its name, the stages it reads, the model role it uses, its record type, the
field holding the text an id stands for, the config sections it reads, and how it plans its
tasks from what it reads and hands its records to the stages after it. The store, the config
history, `cai status`, the run reader, export, the report, `cai generate` and the dry run all
derive from this list; adding a stage means its own module (plan and run functions, a record
type, a config section) and one entry here.

Planning holds references to records (ids and byte offsets, `refs.py`) rather than the records;
a task is given its records (`hydrate`) only when it runs, so a rerun of a million pairs plans
in well under a gigabyte.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from itertools import chain, islice
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from cai.core.errors import UserError
from cai.core.identity import identity
from cai.core.ids import derive_seed
from cai.core.stage import StageOutput, Task
from cai.critique import plan_comparison_tasks, plan_revision_tasks, run_comparison_tasks, run_revision_tasks
from cai.critique.distill import distill_pairs, plan_teacher_tasks, run_teacher_tasks, teacher_system_prompt
from cai.critique.introspect import constitution_read as introspection_reads
from cai.critique.introspect import plan_introspection_tasks, run_introspection_tasks
from cai.critique.rank import Candidate
from cai.critique.records import Comparison, Introspection, Revision
from cai.critique.revise import RevisionInput
from cai.critique.revise import constitution_read as revision_reads
from cai.generators import BackendConfig
from cai.generators.queries import Deduplicator, load_seed_queries, plan_query_tasks, run_query_tasks
from cai.generators.queries import constitution_read as query_reads
from cai.generators.records import Query, Response
from cai.generators.responses import plan_response_tasks, run_response_tasks
from cai.generators.turns import plan_turn_tasks, run_turn_tasks

from .executors import StageCall

if TYPE_CHECKING:
    from cai.constitution import Constitution

    from .config import RunConfig
    from .refs import Refs
    from .store import RunStore

Role = Literal["policy", "feedback", "teacher", "introspection"]


@dataclass
class RunContext:
    """What planning reads: the config, its constitutions, the run on disk, this shard's share."""

    cfg: RunConfig
    constitution: Constitution
    ranking: Constitution
    store: RunStore
    refs: Refs
    shard: tuple[int, int] = (0, 1)
    limit: int | None = None

    def backend_config(self, role: Role) -> BackendConfig:
        cfg = self.cfg
        roles = {
            "policy": cfg.policy,
            "feedback": cfg.feedback_backend,
            "teacher": cfg.teacher_backend,
            "introspection": cfg.introspection_backend,
        }
        if role not in roles:
            raise ValueError(f"unknown model role {role!r}")
        return roles[role]

    def model_name(self, role: Role) -> str:
        bc = self.backend_config(role)
        return f"{bc.backend}:{bc.model}"

    def call(self, role: Role, fn, *before, after: tuple = ()) -> StageCall:
        """`fn(backend, *before, tasks, *after)` on the role's backend, wherever the executor runs it."""
        return StageCall(fn, self.backend_config(role), before, after, self.cfg.batch_size)

    def mine(self, query_id: str) -> bool:
        """Work is split over shards by query id, so a query's whole chain stays in one shard's files."""
        i, n = self.shard
        return n == 1 or derive_seed("shard", query_id) % n == i


@dataclass
class StagePlan:
    """A stage's tasks and how to run them. `hydrate(task)` turns a planned task's references into
    the records it runs on (tasks that run only); `check(output)` may amend a batch's records before
    they are written; `done`: the stage's ids on disk, where planning has read them already;
    `readings(todo)`: for a stage that reads letters, (to read, taken from earlier records)."""

    tasks: list[Task]
    call: StageCall | None = None
    hydrate: Callable[[Task], Task] | None = None
    check: Callable[[StageOutput], None] | None = None
    done: set[str] | None = None
    readings: Callable[[list[Task]], tuple[int, int]] | None = None
    runnable: Callable[[Task, set[str]], bool] | None = (
        None  # can run now, given the ids done (a later turn: its parent)
    )

    @property
    def wanted(self) -> set[str]:
        return {o for t in self.tasks for o in t.outputs}


Inputs = dict[str, list[Any]]


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]
    role: Role | None
    record: type[BaseModel]
    text_field: str | None  # the field holding the text an id of this stage stands for
    sections: tuple[str, ...]  # the config sections whose settings it reads
    plan: Callable[[RunContext, Inputs], StagePlan]
    read: Callable[[RunContext, set[str] | None], list[Any]]  # refs for later stages: planned ids, or this shard's
    parts: Callable[[RunContext], dict]  # what of the config and constitutions shapes its records
    enabled: Callable[[RunContext], bool] = field(default=lambda ctx: True)
    help: str = ""
    passes: Callable[[RunContext], int] = field(default=lambda ctx: 1)  # a turn per pass, for conversations


# ---------------------------------------------------------------------------------------------
# queries


def _plan_queries(ctx: RunContext, inputs: Inputs) -> StagePlan:
    cfg = ctx.cfg.queries
    seeds = load_seed_queries(cfg.seed_file) if cfg.seed_file else []
    seed_tasks = (Task(q.id, None, [q.id], ready=q) for q in seeds)
    generated = plan_query_tasks(ctx.constitution, cfg, ctx.cfg.seed)  # lazy: --limit plans only what it takes
    tasks = [t for t in islice((t for t in chain(seed_tasks, generated) if ctx.mine(t.id)), ctx.limit)]
    if not tasks:
        raise UserError("queries: nothing to do: set queries.per_principle above 0 or give queries.seed_file")
    dedupe: Deduplicator | None = None

    def drop_duplicates(out: StageOutput) -> None:
        """Seed queries are only remembered; a generated one like an earlier query is dropped.

        The filter lives in the driver (it alone holds every kept query) and is built from the
        kept queries on disk when the first batch comes back: a rerun with nothing to do never
        builds it."""
        nonlocal dedupe
        if dedupe is None:
            dedupe = Deduplicator(cfg.near_duplicate)
            for q in ctx.store.iter_records("queries", Query):
                if q.dropped is None:
                    dedupe.check(q.id, q.text)
        for q in out.records:
            if q.dropped is None and (dup := dedupe.check(q.id, q.text)) is not None and q.origin == "generated":
                q.dropped = f"duplicate of {dup}"

    call = ctx.call("policy", run_query_tasks, ctx.constitution, after=(cfg, ctx.cfg.seed))
    return StagePlan(tasks, call, check=drop_duplicates)


def _read_queries(ctx: RunContext, wanted: set[str] | None) -> list:
    if wanted is not None:
        return [q for q in ctx.refs.queries() if q.id in wanted]
    return list(islice((q for q in ctx.refs.queries() if ctx.mine(q.id)), ctx.limit))


# ---------------------------------------------------------------------------------------------
# conversations of several turns


def _plan_turns(ctx: RunContext, inputs: Inputs) -> StagePlan:
    cfg = ctx.cfg
    tasks = plan_turn_tasks(inputs["queries"], cfg.queries, cfg.responses, ctx.model_name("policy"), cfg.seed)
    on_disk = {r.id: r for r in ctx.refs.queries("turns")}
    openers = {q.id: q for q in inputs["queries"]}

    def runnable(t: Task, done: set[str]) -> bool:
        return t.data.parent in openers or (t.data.parent in done and t.data.parent in on_disk)

    def hydrate(t: Task) -> Task:
        parent = openers.get(t.data.parent) or on_disk.get(t.data.parent) or ctx.refs.find("turns", t.data.parent)
        return replace(t, data=replace(t.data, messages=tuple(parent.record().messages)))

    call = ctx.call("policy", run_turn_tasks, after=(cfg.queries, cfg.responses, cfg.seed))
    return StagePlan(tasks, call, hydrate=hydrate, runnable=runnable)


def _read_turns(ctx: RunContext, wanted: set[str] | None) -> list:
    refs = ctx.refs.queries("turns")
    return [r for r in refs if ctx.mine(r.id)] if wanted is None else [r for r in refs if r.id in wanted]


def conversations(ctx: RunContext, inputs: Inputs) -> list:
    """What the answering stages answer: each query's conversation at its last turn (the query itself
    when it holds enough turns already, or when conversations have one turn)."""
    k = ctx.cfg.queries.turns
    if k == 1:
        return inputs["queries"]
    last = {}
    by_id = {r.id: r for r in inputs.get("turns", [])}
    for r in by_id.values():
        if r.turns == k:
            opener = r
            while opener.parent in by_id:
                opener = by_id[opener.parent]
            last[opener.parent] = r
    return [q if q.turns >= k else last[q.id] for q in inputs["queries"] if q.turns >= k or q.id in last]


# ---------------------------------------------------------------------------------------------
# answers: the policy's, and the teacher's (context distillation)


def _query_record(t: Task) -> Task:
    """A task planned on a query's reference, on the query's record."""
    return replace(t, data=t.data.record())


def _plan_responses(ctx: RunContext, inputs: Inputs) -> StagePlan:
    cfg = ctx.cfg.responses
    tasks = plan_response_tasks(conversations(ctx, inputs), cfg, ctx.model_name("policy"), ctx.cfg.seed)
    return StagePlan(tasks, ctx.call("policy", run_response_tasks, after=(cfg, ctx.cfg.seed)), hydrate=_query_record)


def _answers(stage: str) -> Callable[[RunContext, set[str] | None], list]:
    def read(ctx: RunContext, wanted: set[str] | None) -> list:
        refs = ctx.refs.answers(stage)
        if wanted is None:
            return [r for r in refs if ctx.mine(r.query_id)]
        return [r for r in refs if r.id in wanted]

    return read


def teacher_patch(ctx: RunContext) -> str | None:
    """The teacher's own system prompt, where the config gives one in place of the constitution."""
    return ctx.cfg.teacher.prompt() if ctx.cfg.teacher is not None else None


def _plan_teacher(ctx: RunContext, inputs: Inputs) -> StagePlan:
    cfg, patch = ctx.cfg.responses, teacher_patch(ctx)
    queries = conversations(ctx, inputs)
    tasks = plan_teacher_tasks(queries, ctx.constitution, cfg, ctx.model_name("teacher"), ctx.cfg.seed, patch)
    call = ctx.call("teacher", run_teacher_tasks, ctx.constitution, after=(cfg, ctx.cfg.seed, patch))
    return StagePlan(tasks, call, hydrate=_query_record)


# ---------------------------------------------------------------------------------------------
# revisions and introspection


def _plan_revisions(ctx: RunContext, inputs: Inputs) -> StagePlan:
    cfg = ctx.cfg.revisions
    by_id = {q.id: q for q in conversations(ctx, inputs)}
    pairs = [(by_id[r.query_id], r) for r in inputs["responses"] if r.query_id in by_id]
    tasks = plan_revision_tasks(pairs, ctx.constitution, cfg, ctx.model_name("policy"), ctx.cfg.seed)

    def hydrate(t: Task) -> Task:
        return replace(t, data=RevisionInput(t.data.query.record(), t.data.response.record()))

    call = ctx.call("policy", run_revision_tasks, ctx.constitution, after=(cfg, ctx.cfg.seed))
    return StagePlan(tasks, call, hydrate=hydrate)


def _read_revisions(ctx: RunContext, wanted: set[str] | None) -> list:
    refs = ctx.refs.revisions()
    return [v for v in refs if ctx.mine(v.query_id)] if wanted is None else [v for v in refs if v.id in wanted]


def _plan_introspection(ctx: RunContext, inputs: Inputs) -> StagePlan:
    cfg = ctx.cfg.introspection
    model = ctx.model_name("introspection")
    patch = teacher_patch(ctx) if cfg.backend is None else None  # the teacher's prompt, where the teacher answers
    tasks = [t for t in plan_introspection_tasks(ctx.constitution, cfg, model, ctx.cfg.seed, patch) if ctx.mine(t.id)]
    call = ctx.call("introspection", run_introspection_tasks, ctx.constitution, after=(cfg, ctx.cfg.seed, patch))
    return StagePlan(tasks, call)


def _nothing(ctx: RunContext, wanted: set[str] | None) -> list:
    return []


# ---------------------------------------------------------------------------------------------
# comparisons


def _pair_groups(queries: list, inputs: Inputs) -> list[tuple]:
    """Per query, its sampled answers and its (initial, revised) pairs, as candidates whose texts
    are read only for the pairs that run (and to skip identical answers among pairs not ranked yet)."""
    samples: dict[str, list[Candidate]] = {q.id: [] for q in queries}
    answers: dict[str, Candidate] = {}
    for r in sorted(inputs["responses"], key=lambda r: r.sample_index):
        if r.query_id in samples:
            answers[r.id] = Candidate(r.id, r)
            samples[r.query_id].append(answers[r.id])
    revised: dict[str, list] = {q.id: [] for q in queries}
    for v in inputs.get("revisions", []):
        if v.query_id in revised and v.changed:
            initial = answers.get(v.response_id) or Candidate(v.response_id, lambda v=v: v.initial)
            revised[v.query_id].append((initial, Candidate(v.id, lambda v=v: v.final)))
    return [(q, samples[q.id], revised[q.id]) for q in queries]


def _plan_comparisons(ctx: RunContext, inputs: Inputs) -> StagePlan:
    from .reuse import EarlierReadings

    cfg = ctx.cfg.comparisons
    done = ctx.store.ids("comparisons")  # read once, for planning and for running
    tasks: list[Task] = []
    model = ctx.model_name("feedback")
    queries = conversations(ctx, inputs)
    if cfg.mode in ("rank", "both"):
        tasks = plan_comparison_tasks(_pair_groups(queries, inputs), ctx.ranking, cfg, model, ctx.cfg.seed, done=done)
    if cfg.mode in ("distill", "both"):
        pairs = distill_pairs(queries, inputs.get("teacher", []), inputs["responses"], cfg.distill_p_chosen)
        tasks += [Task(c.id, None, [c.id], ready=c) for c in pairs]
    earlier = EarlierReadings(ctx, model, cfg)

    def hydrate(t: Task) -> Task:
        if t.ready is not None:
            return t
        return replace(t, data=replace(t.data, query=t.data.query.record(), known=earlier.of(t.data)))

    call = ctx.call("feedback", run_comparison_tasks, ctx.ranking, after=(cfg, ctx.cfg.seed))
    return StagePlan(tasks, call, hydrate=hydrate, done=done, readings=earlier.count)


# ---------------------------------------------------------------------------------------------
# the list


def _settings(section: str, role: Role | None, reads=None) -> Callable[[RunContext], dict]:
    """A stage's identity parts: its settings, its model, the seed, and what it reads of the
    constitution (`reads(ctx)`: the same parts its record ids hash)."""

    def parts(ctx: RunContext) -> dict:
        out: dict = {"settings": identity(getattr(ctx.cfg, section), "stage"), "seed": ctx.cfg.seed}
        if role is not None:
            out["model"] = identity(ctx.backend_config(role), "stage")
        if reads is not None:
            out["constitution"] = reads(ctx)
        return out

    return parts


def _query_reads(ctx: RunContext) -> list:
    c = ctx.constitution
    targets = [("principle", p.id) for p in c.critique_principles] + [("trait", t.id) for t in c.traits]
    return [query_reads(c, kind, ident) for kind, ident in targets]


STAGES: tuple[Stage, ...] = (
    Stage(
        "queries",
        (),
        "policy",
        Query,
        None,
        ("queries", "policy", "seed", "constitution"),
        _plan_queries,
        _read_queries,
        _settings("queries", "policy", _query_reads),
        help="User messages: written by the policy for each principle or trait, or read from a seed file.",
    ),
    Stage(
        "turns",
        ("queries",),
        "policy",
        Query,
        None,
        ("queries", "responses", "policy", "seed"),
        _plan_turns,
        _read_turns,
        lambda ctx: {
            "settings": [identity(ctx.cfg.queries), identity(ctx.cfg.responses)],
            "seed": ctx.cfg.seed,
            "model": identity(ctx.backend_config("policy"), "stage"),
        },
        enabled=lambda ctx: ctx.cfg.queries.turns > 1,
        help="Conversations of several turns: the policy answers, then writes the user's next turn.",
        passes=lambda ctx: ctx.cfg.queries.turns - 1,
    ),
    Stage(
        "responses",
        ("queries", "turns"),
        "policy",
        Response,
        "text",
        ("responses", "policy", "seed"),
        _plan_responses,
        _answers("responses"),
        _settings("responses", "policy"),
        help="The policy's answers, several per query.",
    ),
    Stage(
        "revisions",
        ("queries", "turns", "responses"),
        "policy",
        Revision,
        "final",
        ("revisions", "policy", "seed", "constitution"),
        _plan_revisions,
        _read_revisions,
        _settings("revisions", "policy", lambda ctx: revision_reads(ctx.constitution)),
        enabled=lambda ctx: ctx.cfg.revisions.rounds > 0 and bool(ctx.constitution.critique_principles),
        help="Critique → revision rounds on each answer, under sampled principles (SFT data).",
    ),
    Stage(
        "introspection",
        (),
        "introspection",
        Introspection,
        None,
        ("introspection", "teacher", "policy", "seed", "constitution"),
        _plan_introspection,
        _nothing,
        _settings(
            "introspection",
            "introspection",
            lambda ctx: introspection_reads(
                ctx.constitution,
                ctx.cfg.introspection,
                teacher_patch(ctx) if ctx.cfg.introspection.backend is None else None,
            ),
        ),
        enabled=lambda ctx: ctx.cfg.introspection is not None and bool(ctx.constitution.traits),
        help="Character constitutions: self-reflections and self-interactions in character (SFT data).",
    ),
    Stage(
        "teacher",
        ("queries", "turns"),
        "teacher",
        Response,
        "text",
        ("responses", "teacher", "policy", "seed", "constitution"),
        _plan_teacher,
        _answers("teacher"),
        _settings("responses", "teacher", lambda ctx: teacher_system_prompt(ctx.constitution, teacher_patch(ctx))),
        enabled=lambda ctx: ctx.cfg.comparisons.mode in ("distill", "both"),
        help="Context distillation: the teacher answers with the constitution as its system prompt.",
    ),
    Stage(
        "comparisons",
        ("queries", "turns", "responses", "revisions", "teacher"),
        "feedback",
        Comparison,
        None,
        ("comparisons", "feedback", "policy", "seed"),
        _plan_comparisons,
        _nothing,
        _settings("comparisons", "feedback", lambda ctx: ctx.ranking.content_hash()),
        help="Pairs of answers ranked by the feedback model under sampled principles, both orders (soft labels).",
    ),
)
NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
# Files of a run beside the stage files: the errors of every stage, person reviews of the labels.
OTHER_RECORD_FILES = ("errors", "reviews")


def stage(name: str) -> Stage:
    if name not in BY_NAME:
        raise UserError(f"unknown stage {name!r}; choose one of {', '.join(NAMES)}")
    return BY_NAME[name]


def text_fields() -> dict[str, str]:
    """Which field of which stage holds the text an id stands for (a revision stands for its final text)."""
    return {s.name: s.text_field for s in STAGES if s.text_field}


def stages_of_role(role: str) -> list[str]:
    return [s.name for s in STAGES if s.role == role]


def stages_reading(sections: Iterable[str]) -> list[str]:
    """The stages whose settings live in any of these config sections, in run order."""
    wanted = set(sections)
    return [s.name for s in STAGES if wanted & set(s.sections)]
