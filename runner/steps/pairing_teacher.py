"""The pairing step's `teacher_qa` strategy: a teacher model writes grounded questions and answers.

Its own module: it is the one pairing strategy that talks to a network service (machinery in
runner/data/teacher_*.py and grounding.py).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from runner.artifacts import write_json
from runner.errors import StepError
from runner.registry import StepContext, step
from runner.steps.pairing import _cleaned, _needs_headings

OUTPUTS = ["pairs.jsonl", "stats.json", "sections.jsonl"]


@step("pairing", "teacher_qa", inputs=["cleaning"], outputs=OUTPUTS, version=1,
      volatile=["stats.json", "sections.jsonl"])
def teacher_qa(ctx: StepContext) -> dict:
    """For each heading section (`section_min_chars`..`section_max_chars` of text and code), a
    teacher model behind any OpenAI-compatible `endpoint` (vLLM, `recipe serve`, a hosted API)
    writes `questions_per_section` question/answer pairs from `prompt_template` (sandboxed
    Jinja). Every request and answer is kept in a content-addressed cache (`cache_dir`, default
    runs/<name>/cache/pairing/teacher): a re-run sends no request, a killed run keeps what it
    paid for. `concurrency`, `requests_per_minute`, `timeout_s` and retries with backoff and
    jitter on 429/5xx (`max_retries`, `backoff_s`) govern the traffic. An answer is kept only
    when grounded in its section (`grounding`: share of its content words found in the section,
    identifiers verbatim); refusals, empty answers, echoed and repeated questions go; the
    optional `judge` scores each pair. Unusable teacher output (not JSON, wrong shape,
    truncated) is counted per reason, never fatal. Writes pairs.jsonl, sections.jsonl (one line
    per section: ok / rejected / failed, with the reason) and stats.json (requests, cache hits,
    tokens, cost from `price`, every failure by reason). Fails when more than
    `max_failed_share` of the sections got no answer, or at once when the endpoint refuses the
    key or the model."""
    from runner.data.teacher_cache import TeacherCache
    from runner.data.teacher_client import FatalEndpointError
    from runner.data.teacher_pairs import compile_prompts

    s = ctx.settings
    documents, cleaning_stats = _cleaned(ctx)
    if cleaning_stats and not cleaning_stats.get("keep_headings"):
        raise _needs_headings()
    compile_prompts(s)
    cache = TeacherCache(Path(s["cache_dir"]).expanduser() if s["cache_dir"]
                         else ctx.cache_dir / "teacher")
    skipped: Counter = Counter()
    counts = {"documents": 0, "pairs": 0}
    try:
        import asyncio  # here, not at the top: `recipe validate` imports every step module

        summary = asyncio.run(_generate(ctx, documents, cleaning_stats, cache, skipped, counts))
    except FatalEndpointError as exc:
        raise StepError(_fatal_message(exc, s)) from None
    summary["sections"]["skipped_short"] = skipped["short_section"]
    write_json(ctx.out_dir / "stats.json", {
        "strategy": s["strategy"], "documents": counts["documents"], "pairs": counts["pairs"],
        "dropped": summary["pairs_dropped"], "teacher": summary,
        "upstream": {"cleaning": cleaning_stats}})
    _log_summary(ctx, summary, counts)
    _check_failures(summary, s["max_failed_share"])
    return {"pairs": counts["pairs"], "documents": counts["documents"],
            "requests": summary["teacher"]["requests"],
            "cache_hits": summary["teacher"]["cache_hits"]}


async def _generate(ctx, documents: Path, cleaning_stats: dict, cache, skipped: Counter,
                    counts: dict) -> dict:
    from runner.data.teacher_client import ChatClient, ClientPolicy
    from runner.data.teacher_pairs import Generator, TeacherPairer, generation_params

    s = ctx.settings
    judge_settings = s["judge"]
    policy = ClientPolicy.from_settings(s)
    teacher_key = _secret(s["api_key"], "pairing.api_key")
    judge_key = _secret(judge_settings["api_key"], "pairing.judge.api_key") or teacher_key
    judge_endpoint = judge_settings["endpoint"] or s["endpoint"]

    async with ChatClient(s["endpoint"], teacher_key, policy, s["seed"]) as client, \
            ChatClient(judge_endpoint, judge_key, policy, s["seed"] + 1) as judge_client:
        model = s["model"] or await client.first_model()
        teacher = Generator("teacher", client, model, generation_params(s), cache)
        judge = None
        if judge_settings["enabled"]:
            judge_model = judge_settings["model"] or (
                model if judge_endpoint == s["endpoint"] else await judge_client.first_model())
            judge_params = {**generation_params(s), "temperature": judge_settings["temperature"]}
            judge = Generator("judge", judge_client, judge_model, judge_params, cache)
        pairer = TeacherPairer(s, teacher, judge)
        with open(ctx.out_dir / "pairs.jsonl", "w", encoding="utf-8") as pairs_out, \
                open(ctx.out_dir / "sections.jsonl", "w", encoding="utf-8") as sections_out, \
                ctx.progress(total=None, desc="sections", unit="section") as bar:
            def write_pair(pair: dict) -> None:
                pairs_out.write(json.dumps(pair, ensure_ascii=False) + "\n")
                counts["pairs"] += 1

            def write_outcome(outcome: dict) -> None:
                sections_out.write(json.dumps(outcome, ensure_ascii=False) + "\n")
                bar.update(1)

            await pairer.run(_sections(documents, s, skipped, counts), write_pair, write_outcome)
        return pairer.summary(s["endpoint"])


def _sections(documents: Path, s: dict, skipped: Counter, counts: dict):
    """The documents' sections as the teacher sees them, at most `max_sections` of them."""
    from runner.artifacts import read_jsonl
    from runner.data.teacher_pairs import document_sections

    limit = s["max_sections"] or None
    given = 0
    for doc in read_jsonl(documents):
        counts["documents"] += 1
        if "sections" not in doc:
            raise _needs_headings()
        for section in document_sections(doc, s, skipped):
            if limit is not None and given >= limit:
                return
            given += 1
            yield section


def _secret(value: str, setting: str) -> str:
    from runner.secrets import resolve

    try:
        return resolve(value) if value else ""
    except KeyError as exc:
        raise StepError(f"{setting}: {exc.args[0]}; export it before running") from None


def _fatal_message(exc, s: dict) -> str:
    hints = {"auth_failed": "the endpoint refused the API key: check pairing.api_key "
                            "(e.g. \"${env:OPENAI_API_KEY}\") and that the variable holds a valid key",
             "not_found": "the endpoint does not know this URL or model: check pairing.endpoint "
                          "(it ends in /v1) and pairing.model",
             "unreachable": "nothing answers at pairing.endpoint: start the server (e.g. "
                            "`recipe serve MODEL --port 8000`) or fix the URL",
             "no_models": "set pairing.model to the model the endpoint serves"}
    return (f"pairing (teacher_qa): {s['endpoint']}: {exc.detail}\n{hints.get(exc.reason, '')}\n"
            "Answers received before this are kept in the teacher cache; the next run reuses them.")


def _log_summary(ctx, summary: dict, counts: dict) -> None:
    teacher = summary["teacher"]
    ctx.log(f"{counts['pairs']} pairs from {sum(summary['sections'].values())} sections "
            f"({', '.join(f'{k} {v}' for k, v in summary['sections'].items())}); "
            f"{teacher['requests']} requests, {teacher['cache_hits']} cache hits, tokens "
            f"{teacher['tokens_in']} in / {teacher['tokens_out']} out this run")
    for label, counter in (("failed requests", teacher["failed_by_reason"]),
                           ("unusable answers", teacher["rejected_outputs_by_reason"]),
                           ("pairs dropped", summary["pairs_dropped"])):
        if counter:
            ctx.log(f"{label}: {', '.join(f'{k} {v}' for k, v in counter.items())}")


def _check_failures(summary: dict, max_share: float) -> None:
    sections = summary["sections"]
    attempted = sum(v for k, v in sections.items() if k != "skipped_short")
    failed = sections.get("failed", 0)
    if attempted and failed / attempted > max_share:
        reasons = ", ".join(f"{k} x{v}" for k, v in summary["teacher"]["failed_by_reason"].items())
        raise StepError(f"pairing (teacher_qa): {failed} of {attempted} sections got no answer "
                        f"({reasons}), more than max_failed_share {max_share:.0%}. The answers "
                        "received are cached: run again to retry only the failed sections, or "
                        "lower concurrency / requests_per_minute, or raise timeout_s.")
