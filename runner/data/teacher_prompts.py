"""The teacher's default prompts (sandboxed Jinja) and the reading of what it answers.

A teacher answer is read as JSON - {"pairs": [{"question", "answer"}, ...]} (a bare list of such
objects, or a ```json fence around either, is read too) - or, failing that, as "Question: ... /
Answer: ..." blocks. Anything else is rejected with a reason: empty, truncated (the model hit
max_tokens before the JSON ended), not_json, or wrong_shape (JSON, but not that shape).
"""

from __future__ import annotations

import json
import re

SYSTEM_PROMPT = ("You write training data for a documentation assistant. You use only facts "
                 "stated in the documentation section you are given, and you reply with JSON only.")
PROMPT_TEMPLATE = """Documentation page: {{ title }}
Section: {{ heading_path | join(" > ") }}

<section>
{{ section }}
</section>

Write {{ questions }} question-and-answer pairs that a user of this documentation might ask and \
that the section above answers. Each question must make sense on its own: name the function, \
module, command or topic it is about. Each answer must be correct and complete using only the \
section; keep names, code and values exactly as the section writes them, and put code in fenced \
blocks.

Reply with JSON only, in this shape:
{"pairs": [{"question": "...", "answer": "..."}]}
"""
JUDGE_TEMPLATE = """Documentation section:
<section>
{{ section }}
</section>

Question: {{ question }}
Answer: {{ answer }}

Rate the answer from 1 (wrong or not supported by the section) to 5 (correct, complete and fully \
supported by the section). Reply with JSON only: {"score": N, "reason": "..."}
"""
PROMPT_SAMPLE = {"section": "Text of the section.", "heading": "Heading", "title": "Title",
                 "heading_path": ["Title", "Heading"], "url": "", "questions": 3}
JUDGE_SAMPLE = {"section": "Text of the section.", "question": "A question?", "answer": "An answer."}
_LABELLED = re.compile(r"^\W*(?:question|q)\W*:\**\s*(.+?)\s*\n+\W*(?:answer|a)\W*:\**\s*(.+?)"
                       r"(?=\n\s*\n\W*(?:question|q)\W*:|\Z)", re.I | re.M | re.S)
_FENCE = re.compile(r"^```[\w-]*\s*\n(.*?)\n?```\s*$", re.S)


class Rejected(Exception):
    """Teacher output that cannot be used; `reason` is counted per reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def parse_json(text: str, finish_reason: str):
    """The first JSON value in the answer (a code fence around it is fine)."""
    stripped = text.strip()
    if not stripped:
        raise Rejected("empty")
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1).strip()
    starts = [i for i in (stripped.find("{"), stripped.find("[")) if i >= 0]
    if not starts:
        raise Rejected("truncated" if finish_reason == "length" else "not_json")
    try:
        value, _ = json.JSONDecoder().raw_decode(stripped[min(starts):])
    except ValueError:
        raise Rejected("truncated" if finish_reason == "length" else "not_json") from None
    return value


def parse_pairs(text: str, finish_reason: str) -> list[tuple[str, str]]:
    """(question, answer) pairs of a teacher answer, or Rejected. Small teachers often write
    "Question: ... Answer: ..." instead of JSON; that is read too."""
    try:
        return _json_pairs(parse_json(text, finish_reason))
    except Rejected as rejected:
        matches = list(_LABELLED.finditer(text))
        if finish_reason == "length" and matches and matches[-1].end() >= len(text.rstrip()):
            matches.pop()                   # it runs to the cut: it may end mid-answer
        labelled = [(m.group(1).strip(), m.group(2).strip()) for m in matches]
        if labelled and rejected.reason != "empty":
            return labelled
        raise


def _json_pairs(value) -> list[tuple[str, str]]:
    items = value.get("pairs") if isinstance(value, dict) else value
    if not isinstance(items, list) or not items:
        raise Rejected("wrong_shape")
    pairs = []
    for item in items:
        if not isinstance(item, dict):
            raise Rejected("wrong_shape")
        question, answer = item.get("question"), item.get("answer")
        if not isinstance(question, str) or not isinstance(answer, (str, type(None))):
            raise Rejected("wrong_shape")
        pairs.append((question.strip(), (answer or "").strip()))
    return pairs


def parse_score(text: str, finish_reason: str) -> float:
    """The judge's score, or Rejected."""
    value = parse_json(text, finish_reason)
    score = value.get("score") if isinstance(value, dict) else value
    if isinstance(score, str):
        try:
            score = float(score.strip())
        except ValueError:
            raise Rejected("wrong_shape") from None
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise Rejected("wrong_shape")
    return float(score)
