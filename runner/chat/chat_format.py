"""Pairs -> chat messages -> rendered text: template choice, pinned date, fixes, format checks.

The official GPT-OSS template stamps `strftime_now("%Y-%m-%d")` into every system message; a
render-time `strftime_now` that returns the recipe's `current_date` shadows that global, so the
same pairs always render to the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path

from runner.errors import StepError

# The original notebook's fix: a template that forgot the channel gets the final channel.
CHANNEL_FIX = {"find": "<|start|>assistant<|message|>",
               "replace": "<|start|>assistant<|channel|>final<|message|>",
               "unless_contains": "<|channel|>"}


def pinned_clock(date: str):
    """A stand-in for the template's `strftime_now` that always returns `date`."""
    moment = datetime.strptime(date, "%Y-%m-%d")
    return lambda fmt: moment.strftime(fmt)


def build_messages(pair: dict, system_prompt: str = "") -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": pair["instruction"]},
                       {"role": "assistant", "content": pair["response"]}]


def _trl_templates() -> Path:
    import trl
    return Path(trl.__file__).parent / "chat_templates"


def training_variant(template: str) -> str | None:
    """trl's copy of this template with `{% generation %}` markers, if trl ships one."""
    for path in sorted(_trl_templates().glob("*.jinja")):
        if path.stem.endswith("_training"):
            continue
        training = path.with_name(f"{path.stem}_training.jinja")
        if training.is_file() and path.read_text(encoding="utf-8") == template:
            return training.read_text(encoding="utf-8")
    return None


def has_generation_markers(template: str) -> bool:
    import re
    return re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None


def resolve_template(settings: dict, tokenizer, recipe_dir: Path) -> tuple[str, str]:
    """(template text, where it came from). mask=template needs generation markers."""
    choice = settings["template"]
    if choice == "tokenizer":
        template, source = getattr(tokenizer, "chat_template", None), "the tokenizer's template"
        if not isinstance(template, str) or not template:
            raise StepError("chat_template.template is \"tokenizer\" but the model's tokenizer "
                            "has no (single) chat template: set chat_template.template to a "
                            "Jinja file, relative to the recipe")
    else:
        path = Path(recipe_dir) / choice
        if not path.is_file():
            raise StepError(f"chat_template.template: {path} does not exist (paths are relative "
                            "to the recipe's folder; use \"tokenizer\" for the model's own)")
        template, source = path.read_text(encoding="utf-8"), str(path)
    if settings["mask"] == "template" and not has_generation_markers(template):
        training = training_variant(template)
        if training is None:
            raise StepError(f"chat_template.mask is \"template\" but {source} has no "
                            "{% generation %} markers: use mask: markers, or a template file "
                            "that wraps assistant output in {% generation %}...{% endgeneration %}")
        template, source = training, f"{source} (trl's training copy, with generation markers)"
    return template, source


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # character spans of generation blocks (template mask only)


def render(messages: list[dict], tokenizer, template: str, settings: dict) -> Rendered:
    """Render one conversation like `apply_chat_template(tokenize=False)`, keeping spans."""
    from transformers.utils.chat_template_utils import render_jinja_template

    kwargs = {**tokenizer.special_tokens_map, "reasoning_effort": settings["reasoning_effort"],
              "strftime_now": pinned_clock(settings["current_date"])}
    texts, spans = render_jinja_template(
        conversations=[messages], chat_template=template, add_generation_prompt=False,
        return_assistant_tokens_mask=settings["mask"] == "template", **kwargs)
    return Rendered(texts[0], [tuple(s) for s in spans[0]] if spans else [])


def template_renderer(tokenizer, template: str, settings: dict, rules: list[dict]):
    """messages -> rendered and fixed text, as rows are (for reading the template's markers)."""
    plain = {**settings, "mask": "markers"}
    return lambda messages: apply_fixes(render(messages, tokenizer, template, plain), rules)[0].text


def end_at_end_token(rendered: Rendered, end_token: str) -> Rendered:
    """The row cut right after its final end-of-turn token when only white space follows.

    Templates write a newline after the closing token (ChatML's `<|im_end|>\n`); the trained
    span must end at the token the model stops at, and the newline would be trained as part of it.
    """
    text = rendered.text
    at = text.rfind(end_token) if end_token else -1
    if at == -1 or text[at + len(end_token):].strip():
        return rendered
    end = at + len(end_token)
    return Rendered(text[:end], [(a, min(b, end)) for a, b in rendered.spans if a < end])


def fix_rules(settings: dict) -> list[dict]:
    rules = [CHANNEL_FIX] if settings.get("channel_fix", True) else []
    return rules + [{"unless_contains": "", **rule} for rule in settings.get("fixes") or []]


def _segments(rendered: Rendered) -> list[str]:
    """The text cut at span edges: outside, span, outside, span, ..., outside."""
    cuts = [0] + [edge for span in rendered.spans for edge in span] + [len(rendered.text)]
    return [rendered.text[a:b] for a, b in pairwise(cuts)]


def apply_fixes(rendered: Rendered, rules: list[dict]) -> tuple[Rendered, list[int]]:
    """Apply the replace rules in order; returns the fixed row and the indexes of rules that fired.

    Rules run on each segment so the trained spans move with the text; a rule whose match
    crosses a span edge cannot be applied safely and stops the run.
    """
    text, segments, fired = rendered.text, _segments(rendered), []
    for index, rule in enumerate(rules):
        if rule["find"] not in text or (rule["unless_contains"] and rule["unless_contains"] in text):
            continue
        text = text.replace(rule["find"], rule["replace"])
        segments = [segment.replace(rule["find"], rule["replace"]) for segment in segments]
        if "".join(segments) != text:
            raise StepError(f"chat_template fix {rule['find']!r} -> {rule['replace']!r} matches "
                            "across the edge of a {% generation %} block, so the trained span "
                            "would be wrong: narrow the rule or use mask: markers")
        fired.append(index)
    spans, offset = [], 0
    for position, segment in enumerate(segments):
        if position % 2:
            spans.append((offset, offset + len(segment)))
        offset += len(segment)
    return Rendered(text, spans), fired


def check_failures(text: str, require: list[str], forbid: list[str]) -> list[str]:
    """The checks this row fails, worded for the user."""
    return ([f"missing {needed!r}" for needed in require if needed not in text]
            + [f"contains forbidden {banned!r}" for banned in forbid if banned in text])
