"""gates: check the evaluation against the recipe's thresholds; a gate not met fails the run.

Every gate set in the `gates` section (null = off) is measured on the evaluation step's
artifacts: held_out.json for the loss gates, the tuned model's answers in answers.jsonl (their
quality signals, runner.infer.answer_quality) for the rate gates. gates.json (and the step's
metrics, which the manifest keeps even when the step fails) holds each gate's value, threshold
and verdict, so the run report can show them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runner.artifacts import read_json, read_jsonl, write_json
from runner.errors import StepError
from runner.registry import StepContext, step


class GateFailure(StepError):
    """Gates not met; carries the measurements so the failed step's record still shows them."""

    def __init__(self, message: str, metrics: dict):
        super().__init__(message)
        self.metrics = metrics


@dataclass
class Measured:
    losses: dict
    tuned: dict           # answer_quality.summarize() of the tuned model's answers
    harmony: bool | None  # None: no answers to tell

    @classmethod
    def read(cls, folder: Path) -> Measured:
        from runner.infer.answer_quality import summarize

        rows = list(read_jsonl(folder / "answers.jsonl"))
        tuned = [row for row in rows if row.get("model", "tuned") == "tuned"]
        kinds = {row.get("template_kind") for row in tuned}
        return cls(read_json(folder / "held_out.json"), summarize(tuned).get("tuned", {}),
                   None if not kinds else kinds == {"harmony"})


@dataclass(frozen=True)
class Gate:
    key: str
    label: str
    bound: str                                   # "min" or "max"
    value: Callable[[Measured], float | None]
    detail: Callable[[Measured], str]
    missing: Callable[[Measured], str]           # why the value is absent, and what to do


def _loss_detail(m: Measured) -> str:
    base, tuned = m.losses.get("base") or {}, m.losses.get("tuned") or {}
    return f"base {base.get('loss')} -> tuned {tuned.get('loss')}, {m.losses.get('rows')} rows"


def _no_loss(m: Measured) -> str:
    if not m.losses:
        return "held-out loss was not computed: set evaluation.held_out_loss: true"
    return f"no held-out rows to score ({m.losses.get('source')}): raise evaluation.held_out_rows"


def _rate(count: str, rate: str, what: str) -> dict:
    def detail(m: Measured) -> str:
        return f"{m.tuned.get(count)} of {m.tuned.get('answers')} tuned answers {what}"
    return {"value": lambda m: m.tuned.get(rate), "detail": detail, "missing": _no_answers}


def _no_answers(m: Measured) -> str:
    return "the evaluation has no answers: add evaluation.prompts"


def _no_channels(m: Measured) -> str:
    if m.harmony is False:
        return "the chat template is not harmony, so its answers have no channels"
    return _no_answers(m)


GATES = (
    Gate("min_held_out_loss_drop", "held-out loss drop, (base - tuned) / base", "min",
         lambda m: m.losses.get("relative_drop"), _loss_detail, _no_loss),
    Gate("max_held_out_loss", "tuned held-out loss", "max",
         lambda m: (m.losses.get("tuned") or {}).get("loss"), _loss_detail, _no_loss),
    Gate("max_empty_rate", "share of empty answers", "max", **_rate("empty", "empty_rate", "are empty")),
    Gate("max_cut_off_rate", "share of answers cut off at max_new_tokens", "max",
         **_rate("cut_off", "cut_off_rate", "hit the token limit")),
    Gate("max_loop_rate", "share of answers in a repetition loop", "max",
         **_rate("loops", "loop_rate", "loop")),
    Gate("max_channel_error_rate", "share of answers with broken harmony channels", "max",
         **{**_rate("channel_errors", "channel_error_rate", "have broken channels"),
            "missing": _no_channels}),
)


def check(gate: Gate, threshold: float, measured: Measured) -> dict:
    """One gate's verdict; a gate whose value cannot be measured is not met."""
    value = gate.value(measured)
    result = {"gate": gate.key, "label": gate.label, "bound": gate.bound, "threshold": threshold,
              "value": value, "passed": False, "detail": "", "problem": ""}
    if value is None:
        result["problem"] = f"{gate.missing(measured)}, or remove gates.{gate.key}"
        return result
    passed = value >= threshold if gate.bound == "min" else value <= threshold
    return {**result, "passed": passed, "detail": gate.detail(measured)}


def failure_line(result: dict) -> str:
    if result["problem"]:
        return f"gates.{result['gate']}: not measured: {result['problem']}"
    wanted = ">=" if result["bound"] == "min" else "<="
    return (f"gates.{result['gate']}: {result['label']} is {result['value']:.4g}, needs "
            f"{wanted} {result['threshold']} ({result['detail']})")


@step("gates", inputs=["evaluation"], outputs=["gates.json"])
def check_gates(ctx: StepContext) -> dict:
    """Check each gate set in the recipe (held-out loss drop, rates of empty, cut-off, looping
    or badly channelled answers) against the evaluation; fail the run if any is not met."""
    measured = Measured.read(ctx.inputs["evaluation"])
    results = [check(gate, ctx.settings[gate.key], measured) for gate in GATES
               if ctx.settings.get(gate.key) is not None]
    failed = [r for r in results if not r["passed"]]
    metrics = {"gates": results, "checked": len(results), "failed": len(failed)}
    for result in results:
        ctx.log(("met: " if result["passed"] else "NOT met: ") + failure_line(result))
    if not results:
        ctx.log("no gate is set (every gates key is null): nothing to check")
    if failed:
        raise GateFailure(
            f"{len(failed)} of {len(results)} evaluation gates not met:\n  - "
            + "\n  - ".join(failure_line(r) for r in failed)
            + "\n  fix the data or training, or change the threshold in the recipe's gates "
              "section (e.g. --set gates.KEY=VALUE); the evaluation report shows every answer",
            metrics)
    write_json(ctx.out_dir / "gates.json", {"passed": True, **metrics})
    return metrics
