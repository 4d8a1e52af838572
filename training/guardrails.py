"""Guardrails for RL: the two ways a proxy reward most often goes wrong, watched at every logged step.

A training reward can climb while what it stands for falls (the policy found what the reward model
or judge over-rates), and answers can grow long because the judge likes length. TRL already logs
each step's mean completion length and KL to the reference; a held-out judge rides along as one
more reward function with weight 0, so TRL scores and logs it beside the training reward
(`rewards/held_out/mean`) without it moving the policy by a hair.

The callback reads the trainer's own log history, which a resumed run restores, so the length
baseline and the alarms already raised survive a resume. Each alarm fires once, with one printed
line, and is kept with its step; with `stop` it ends training through TRL's control flag, so the
model saved and the summary written are those of the step that raised it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from transformers import TrainerCallback

HELD_OUT = "held_out"
# What each guardrail curve is called in TRL's log entries (and so in summary.json's `log`).
SERIES = {
    "reward": "reward",
    "held_out": f"rewards/{HELD_OUT}/mean",
    "length": "completions/mean_length",
    "kl": "kl",
}
# A trend counts when it is this many standard errors of per-step noise away from flat: noise
# alone rarely carries one curve that far, let alone both in opposite directions at once.
TREND_SE = 3.0
# The per-step noise is read from this many windows of history (at least the window itself).
NOISE_WINDOWS = 5


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def point(entry: dict) -> dict | None:
    """A guardrail point from one TRL log entry; None for entries that are not training steps."""
    if _number(entry.get("reward")) is None:
        return None
    return {"step": entry.get("step"), **{name: _number(entry.get(key)) for name, key in SERIES.items()}}


def trend(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """Least-squares slope of ys on xs, and the sum of squares of xs about their mean (None with
    under three points or one x)."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx, sxx


def noise(ys: list[float]) -> float:
    """The standard deviation of a step's value about the curve, from successive differences: a
    slow trend barely moves it, and each step's batch is sampled afresh, so it is the noise a
    trend has to stand out from."""
    diffs = [b - a for a, b in zip(ys, ys[1:])]
    return math.sqrt(sum(d * d for d in diffs) / (2 * len(diffs))) if diffs else 0.0


@dataclass
class Alarm:
    alarm: str
    step: int
    message: str


def length_alarm(p: dict, start: dict, bound: float, unit: str) -> Alarm | None:
    """A point's mean completion length past the bound: tokens, or a ratio of the first point's length."""
    if p["length"] is None:
        return None
    if unit == "tokens":
        limit, why = bound, f"{bound:g} tokens"
    else:
        limit, why = bound * start["length"], f"{bound:g} x {start['length']:.1f} at step {start['step']}"
    if p["length"] <= limit:
        return None
    return Alarm("length", p["step"], f"mean completion length {p['length']:.1f} tokens, past {limit:.1f} ({why})")


def divergence_alarm(history: list[dict], steps: int) -> Alarm | None:
    """Over the last `steps` points of `history`, the training reward rose while the held-out one
    fell, each by over TREND_SE standard errors (the noise read from the whole history)."""
    window = history[-steps:]
    if len(window) < steps:
        return None
    xs = [float(p["step"]) for p in window]
    moves = []
    for key in ("reward", "held_out"):
        fit = trend(xs, [p[key] for p in window])
        if fit is None:
            return None
        moves.append((fit[0], noise([p[key] for p in history]) / math.sqrt(fit[1])))
    (up, up_se), (down, down_se) = moves
    if up - TREND_SE * up_se <= 0 or down + TREND_SE * down_se >= 0:
        return None
    return Alarm(
        "divergence",
        window[-1]["step"],
        f"over steps {window[0]['step']}-{window[-1]['step']} the training reward rose ({up:+.3g}/step) "
        f"while the held-out reward fell ({down:+.3g}/step)",
    )


class Guardrails(TrainerCallback):
    """Checks each newly logged step against the configured alarms (a `GuardrailsConfig`)."""

    def __init__(self, cfg, held_out: str | None):
        self.cfg, self.held_out = cfg, held_out
        self.read = 0  # log entries already seen
        self.start: dict | None = None  # the first point with a length: the ratio bound's baseline
        self.history: deque[dict] = deque(maxlen=NOISE_WINDOWS * (cfg.divergence_steps or 1))
        self.alarms: list[Alarm] = []
        self.stopped: Alarm | None = None

    def _check(self, p: dict) -> list[Alarm]:
        g, found = self.cfg, []
        if p["length"] is not None and self.start is None:
            self.start = p
        if g.length_bound is not None and self.start is not None:
            found.append(length_alarm(p, self.start, g.length_bound, g.length_unit))
        if g.divergence_steps is not None and p["held_out"] is not None:
            self.history.append(p)
            found.append(divergence_alarm(list(self.history), g.divergence_steps))
        fired = {a.alarm for a in self.alarms}
        return [a for a in found if a is not None and a.alarm not in fired]

    def on_log(self, args, state, control, logs=None, **kwargs):
        for entry in state.log_history[self.read :]:
            p = point(entry)
            for alarm in self._check(p) if p is not None else []:
                self.alarms.append(alarm)
                Console().print(
                    f"guardrail: {alarm.alarm} alarm at step {alarm.step}: {alarm.message}",
                    soft_wrap=True,
                    highlight=False,
                    markup=False,
                )
                if self.cfg.stop and self.stopped is None:
                    self.stopped = alarm
        self.read = len(state.log_history)
        if self.stopped is not None:
            control.should_training_stop = True
        return control

    def summary(self) -> dict[str, Any]:
        """What summary.json keeps: the settings, the log keys of each curve, the alarms, why it stopped."""
        g = self.cfg
        out: dict[str, Any] = {
            "held_out": self.held_out,
            "divergence_steps": g.divergence_steps,
            "length_bound": g.length_bound,
            "length_unit": g.length_unit,
            "stop": g.stop,
            "series": {k: v for k, v in SERIES.items() if k != "held_out" or self.held_out is not None},
            "alarms": [asdict(a) for a in self.alarms],
            "stopped": asdict(self.stopped) if self.stopped is not None else None,
        }
        if self.start is not None:
            out["start_length"] = self.start["length"]
        return out
