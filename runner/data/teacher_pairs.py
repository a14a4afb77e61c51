"""teacher_qa pairing: a teacher model behind an OpenAI-compatible endpoint writes question /
answer pairs for each heading section, and only answers grounded in that section are kept.

Per section: render the prompt (sandboxed Jinja), look the request up in the content-addressed
cache, else send it (teacher_client: concurrency, rate limit, retries); read the JSON answer
(teacher_prompts), check each answer against the section (grounding), optionally have a judge
score it, and drop repeated questions. Sections run concurrently in windows; their pairs and
outcome lines are written in document order, so the output does not depend on timing.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from runner.data.dedup import normalize
from runner.data.grounding import Grounding
from runner.data.jinja_templates import compile_template, render
from runner.data.section_pairs import build_response, page_title, section_groups
from runner.data.teacher_cache import TeacherCache, request_key
from runner.data.teacher_client import ChatClient, RequestFailed
from runner.data.teacher_prompts import (
    JUDGE_SAMPLE,
    PROMPT_SAMPLE,
    Rejected,
    parse_pairs,
    parse_score,
)
from runner.data.teacher_stats import TeacherStats, by_count


@dataclass
class Section:
    document_id: str
    url: str | None
    title: str
    heading: str
    heading_path: list[str]
    text: str


@dataclass
class SectionResult:
    outcome: dict
    candidates: list[dict] = field(default_factory=list)   # grounded (and judged) pairs
    dropped: Counter = field(default_factory=Counter)      # this section's pairs left out


def document_sections(doc: dict, settings: dict, skipped: Counter) -> Iterator[Section]:
    """A document's heading sections as the teacher sees them: text and code, whole blocks."""
    title = page_title(doc.get("title") or "")
    for section, blocks in section_groups(doc["sections"], settings["max_heading_level"]):
        text = build_response(blocks, keep_code=True, limit=settings["section_max_chars"])
        if len(text) < settings["section_min_chars"]:
            skipped["short_section"] += 1
            continue
        yield Section(doc.get("id") or "", doc.get("url"), title, section["heading"] or title,
                      section["heading_path"], text)


class Generator:
    """One endpoint + model + prompt templates: messages -> cached or fresh answer text."""

    def __init__(self, role: str, client: ChatClient, model: str, params: dict,
                 cache: TeacherCache):
        self.client, self.model, self.params, self.cache = client, model, params, cache
        self.stats = TeacherStats(role)

    async def answer(self, messages: list[dict]) -> tuple[str, str, str]:
        """(text, finish_reason, key); RequestFailed when no answer came."""
        key = request_key(self.model, messages, self.params)
        record = self.cache.get(key)
        cached = record is not None
        if record is None:
            body = {"model": self.model, "messages": messages, **self.params}
            try:
                done = await self.client.complete(body)
            except RequestFailed as failure:
                self.stats.failed[failure.reason] += 1
                raise
            record = {"model": self.model, "messages": messages, "params": self.params,
                      "response": {"text": done.text, "finish_reason": done.finish_reason,
                                   "usage": done.usage}}
            self.cache.put(key, record)          # paid for: kept even if the run dies next
        response = record["response"]
        self.stats.add_answer(response.get("usage") or {}, cached=cached)
        return str(response.get("text") or ""), str(response.get("finish_reason") or ""), key

    def finish_counts(self) -> TeacherStats:
        self.stats.requests = self.client.counts.requests
        self.stats.failed_attempts = self.client.counts.failed_attempts
        return self.stats


def _messages(system: str, user: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system.strip() else []) + [
        {"role": "user", "content": user}]


def generation_params(settings: dict) -> dict:
    params = {"temperature": settings["temperature"], "max_tokens": settings["max_tokens"],
              "seed": settings["seed"], **settings["extra_body"]}
    if settings["json_mode"]:
        params["response_format"] = {"type": "json_object"}
    return params


def compile_prompts(settings: dict) -> tuple:
    """(system, prompt, judge prompt) templates; a mistake is a StepError before any request."""
    return (compile_template(settings["system_prompt"], "pairing.system_prompt", PROMPT_SAMPLE),
            compile_template(settings["prompt_template"], "pairing.prompt_template", PROMPT_SAMPLE),
            compile_template(settings["judge"]["prompt_template"], "pairing.judge.prompt_template",
                             JUDGE_SAMPLE))


class TeacherPairer:
    def __init__(self, settings: dict, teacher: Generator, judge: Generator | None):
        self.s = settings
        self.teacher, self.judge = teacher, judge
        self.system, self.prompt, self.judge_prompt = compile_prompts(settings)
        self.sections: Counter = Counter()
        self.dropped: Counter = Counter()
        self.questions: set[str] = set()
        self.supports: list[float] = []

    async def run(self, sections: Iterable[Section], write_pair: Callable[[dict], None],
                  write_outcome: Callable[[dict], None]) -> None:
        """Every section, in order; results are written as each window completes."""
        window_size = max(1, self.s["concurrency"]) * 4
        window: list[Section] = []
        for section in sections:
            window.append(section)
            if len(window) == window_size:
                await self._window(window, write_pair, write_outcome)
                window = []
        if window:
            await self._window(window, write_pair, write_outcome)

    async def _window(self, window, write_pair, write_outcome) -> None:
        # A FatalEndpointError propagates: every other request would fail the same way.
        results = await asyncio.gather(*(self.section(s) for s in window))
        for result in results:
            kept = 0
            for candidate in result.candidates:
                question_key = normalize(candidate["instruction"])
                if question_key in self.questions:
                    result.dropped["duplicate_question"] += 1
                    continue
                self.questions.add(question_key)
                self.supports.append(candidate["provenance"]["support"])
                write_pair(candidate)
                kept += 1
            self.dropped.update(result.dropped)
            if result.outcome["status"] == "answered":
                result.outcome.update(status="ok" if kept else "rejected", pairs=kept)
                if result.dropped:
                    result.outcome["dropped"] = by_count(result.dropped)
                if not kept:
                    result.outcome["reason"] = next(iter(result.outcome["dropped"]))
            self.sections[result.outcome["status"]] += 1
            write_outcome(result.outcome)

    async def section(self, section: Section) -> SectionResult:
        where = {"document_id": section.document_id, "heading_path": section.heading_path}
        variables = {"section": section.text, "heading": section.heading, "title": section.title,
                     "heading_path": section.heading_path, "url": section.url or "",
                     "questions": self.s["questions_per_section"]}
        place = f"document {section.document_id}, section {section.heading!r}"
        messages = _messages(render(self.system, "pairing.system_prompt", place, **variables),
                             render(self.prompt, "pairing.prompt_template", place, **variables))
        try:
            text, finish, key = await self.teacher.answer(messages)
        except RequestFailed as failure:
            return SectionResult({**where, "status": "failed", "reason": failure.reason,
                                  "detail": failure.detail[:200], "attempts": failure.attempts})
        try:
            pairs = parse_pairs(text, finish)
        except Rejected as rejected:
            self.teacher.stats.rejected_outputs[rejected.reason] += 1
            return SectionResult({**where, "status": "rejected", "reason": rejected.reason,
                                  "request": key})
        grounding = Grounding(section.text, self.s["grounding"]["min_support"],
                              self.s["grounding"]["check_identifiers"])
        candidates, dropped = [], Counter()
        for question, answer in pairs:
            reason = grounding.verdict(question, answer) if question else "empty_question"
            if reason:
                dropped[reason] += 1
                continue
            candidates.append({"instruction": question, "response": answer, "provenance": {
                **where, "url": section.url, "instruction_source": "teacher",
                "teacher_model": self.teacher.model, "request": key,
                "support": round(grounding.score(answer), 3)}})
        if self.judge is not None and candidates:
            candidates = await self._judged(section, candidates, dropped)
        return SectionResult({**where, "status": "answered", "request": key}, candidates, dropped)

    async def _judged(self, section: Section, candidates: list[dict], dropped: Counter
                      ) -> list[dict]:
        scores = await asyncio.gather(*(self._score(section, c) for c in candidates))
        kept = []
        for candidate, (score, reason) in zip(candidates, scores, strict=True):
            if reason:
                dropped[reason] += 1
            else:
                candidate["provenance"]["judge_score"] = score
                kept.append(candidate)
        return kept

    async def _score(self, section: Section, candidate: dict) -> tuple[float | None, str | None]:
        place = f"document {section.document_id}, judging {candidate['instruction'][:60]!r}"
        prompt = render(self.judge_prompt, "pairing.judge.prompt_template", place,
                        section=section.text, question=candidate["instruction"],
                        answer=candidate["response"])
        try:
            text, finish, _ = await self.judge.answer(_messages("", prompt))
            score = parse_score(text, finish)
        except RequestFailed:
            return None, "judge_failed"
        except Rejected as rejected:
            self.judge.stats.rejected_outputs[rejected.reason] += 1
            return None, "judge_unreadable"
        if score < self.s["judge"]["threshold"]:
            return score, "judge_below_threshold"
        return score, None

    def summary(self, endpoint: str) -> dict:
        price = self.s["price"]
        result = {"endpoint": endpoint, "model": self.teacher.model,
                  "sections": by_count(self.sections),
                  "pairs_dropped": by_count(self.dropped),
                  "mean_support": round(sum(self.supports) / len(self.supports), 3)
                  if self.supports else None,
                  "teacher": self.teacher.finish_counts().as_dict(price)}
        if self.judge is not None:
            result["judge"] = {**self.judge.finish_counts().as_dict(price),
                               "model": self.judge.model}
        return result
