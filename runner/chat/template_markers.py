"""Read a chat template's turn markers off the template itself, so no marker is hand-typed.

A probe conversation with sentinel contents is rendered (one exchange, then two); the text
around the sentinels is the template's own furniture:

    <before user> USER1 <mid> ANSWER1 <tail>                       (one exchange)
    ... ANSWER1 <between> USER2 ... ANSWER2 <tail>                  (two exchanges)

- end_token: the special token that opens <tail> (what closes the final assistant turn);
- instruction_part: the user turn's header, the shared end of <before user> and <between>,
  cut at the special token that opens the header (the one before the role word "user");
- response_part: the assistant turn's header, the end of <mid>, cut the same way.

Harmony gives `<|start|>user<|message|>`, `<|start|>assistant<|channel|>final<|message|>` and
`<|return|>`; ChatML gives `<|im_start|>user\\n`, `<|im_start|>assistant\\n` and `<|im_end|>`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

from runner.errors import StepError

USER1, ANSWER1 = "RECIPE-PROBE-USER-ONE", "RECIPE-PROBE-ANSWER-ONE"
USER2, ANSWER2 = "RECIPE-PROBE-USER-TWO", "RECIPE-PROBE-ANSWER-TWO"
USER_ROLES = ("user", "human")
ASSISTANT_ROLES = ("assistant", "model", "bot", "gpt")
HARMONY_REQUIRE = ["<|start|>user", "<|start|>assistant", "<|channel|>", "<|message|>"]

Render = Callable[[list[dict]], str]  # messages -> text, no generation prompt


@dataclass(frozen=True)
class Markers:
    instruction_part: str
    response_part: str
    end_token: str
    template_kind: str  # "harmony" or "generic"

    def as_dict(self) -> dict:
        return asdict(self)


def _exchange(*turns: tuple[str, str]) -> list[dict]:
    messages = []
    for user, answer in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return messages


def derive_markers(render: Render, special_tokens: list[str]) -> Markers:
    """The markers of the template behind `render`; a StepError says which one it cannot find."""
    one = render(_exchange((USER1, ANSWER1)))
    two = render(_exchange((USER1, ANSWER1), (USER2, ANSWER2)))
    for sentinel in (USER1, ANSWER1):
        if one.count(sentinel) != 1:
            raise StepError(f"the chat template does not write each message's content exactly "
                            f"once (probe {sentinel!r} appears {one.count(sentinel)} times): set "
                            "chat_template.instruction_part / response_part / end_token by hand")
    specials = sorted({t for t in special_tokens if t}, key=len, reverse=True)
    before_user = one[:one.index(USER1)]
    mid = one[one.index(USER1) + len(USER1):one.index(ANSWER1)]
    tail = one[one.index(ANSWER1) + len(ANSWER1):]
    between = two[two.index(ANSWER1) + len(ANSWER1):two.index(USER2)] if USER2 in two else ""
    end_token = _leading_special(tail, specials)
    if end_token is None:
        raise StepError("the chat template writes no special token after the assistant's "
                        f"answer (it writes {tail!r}), so a model trained on it never learns "
                        "to stop: use a template that closes the assistant turn, or set "
                        "chat_template.end_token")
    instruction = _header(_common_suffix(before_user, between) if between else before_user,
                          USER_ROLES, specials, "instruction_part")
    response = _header(mid, ASSISTANT_ROLES, specials, "response_part")
    harmony = "<|channel|>" in response or end_token == "<|return|>"
    return Markers(instruction, response, end_token, "harmony" if harmony else "generic")


def _leading_special(text: str, specials: list[str]) -> str | None:
    stripped = text.lstrip()
    return next((token for token in specials if stripped.startswith(token)), None)


def _common_suffix(a: str, b: str) -> str:
    size = 0
    while size < min(len(a), len(b)) and a[-1 - size] == b[-1 - size]:
        size += 1
    return a[len(a) - size:]


def _header(text: str, roles: tuple[str, ...], specials: list[str], key: str) -> str:
    """The end of `text` from the special token that opens the turn header (before the role)."""
    lowered = text.lower()
    role_at = max((lowered.rfind(role) for role in roles), default=-1)
    starts = sorted({i for token in specials for i in _find_all(text, token)})
    if role_at >= 0:
        starts = [i for i in starts if i < role_at] or starts
    if not starts:
        raise StepError(f"cannot find the turn header for chat_template.{key} in the template's "
                        f"text {text!r}: set chat_template.{key} by hand")
    header = text[starts[-1]:]
    if not header.strip():
        raise StepError(f"the chat template writes an empty header for chat_template.{key}: "
                        f"set it by hand")
    return header


def _find_all(text: str, token: str) -> list[int]:
    found, start = [], text.find(token)
    while start != -1:
        found.append(start)
        start = text.find(token, start + 1)
    return found


def resolve_markers(settings: dict, derived: Markers) -> tuple[dict, list[str]]:
    """The chat settings in effect: "auto" values from the template, given values as given.

    Returns (resolved, conflicts): a given end_token that is not the template's own end token is
    a conflict, since the trained span would then never end where the template ends a turn.
    """
    resolved, conflicts = {"mask": settings["mask"], "template_kind": derived.template_kind}, []
    for key in ("instruction_part", "response_part", "end_token"):
        given = settings.get(key, "auto")
        resolved[key] = getattr(derived, key) if given == "auto" else given
        resolved[f"{key}_from"] = "template" if given == "auto" else "recipe"
    if resolved["end_token_from"] == "recipe" and resolved["end_token"] != derived.end_token:
        conflicts.append(f"chat_template.end_token is {resolved['end_token']!r} but the template "
                         f"ends the assistant turn with {derived.end_token!r}")
    harmony = derived.template_kind == "harmony"
    channel_fix = settings.get("channel_fix", "auto")
    resolved["channel_fix"] = harmony if channel_fix == "auto" else bool(channel_fix)
    require = settings.get("require", "auto")
    resolved["require"] = (list(HARMONY_REQUIRE) if harmony else
                           [resolved["instruction_part"].strip(), resolved["response_part"].strip(),
                            resolved["end_token"]]) if require == "auto" else list(require)
    return resolved, conflicts


def jinja_render(template: str, special_tokens_map: dict, **extra) -> Render:
    """A renderer with transformers' own Jinja environment (no torch import)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    def render(messages: list[dict]) -> str:
        texts, _ = render_jinja_template(conversations=[messages], chat_template=template,
                                         add_generation_prompt=False,
                                         **{**special_tokens_map, **extra})
        return texts[0]
    return render


def markers_of_folder(folder: str | os.PathLike, extra: dict | None = None) -> Markers | None:
    """Markers of a local model folder's own template, read from its files (for `recipe show`)."""
    import json
    from pathlib import Path

    folder = Path(folder)
    config_file, jinja_file = folder / "tokenizer_config.json", folder / "chat_template.jinja"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    template = (jinja_file.read_text(encoding="utf-8") if jinja_file.is_file()
                else config.get("chat_template"))
    if not isinstance(template, str):
        return None
    specials = [entry.get("content") for entry in (config.get("added_tokens_decoder") or {}).values()]
    tokenizer_file = folder / "tokenizer.json"
    if tokenizer_file.is_file():
        added = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("added_tokens") or []
        specials += [entry["content"] for entry in added if entry.get("special")]
    token_map = {key: value for key, value in config.items()
                 if key.endswith("_token") and isinstance(value, str)}
    return derive_markers(jinja_render(template, token_map, **(extra or {})), specials)


def end_token_problem(end_token: str, tokenizer, stop_ids: list[int]) -> str | None:
    """Why rows ending with `end_token` would teach the model a stop it never stops at, or None."""
    ids = list(tokenizer(end_token, add_special_tokens=False)["input_ids"])
    stops = ", ".join(repr(tokenizer.convert_ids_to_tokens(i)) for i in stop_ids) or "none"
    if len(ids) != 1:
        return (f"the trained answers end with {end_token!r}, which is {len(ids)} tokens, not one "
                f"token: generation stops only at single tokens (the model's stop tokens: {stops})")
    if ids[0] not in stop_ids:
        return (f"the template ends the assistant turn with {end_token!r} (id {ids[0]}), but the "
                f"model stops generating only at {stops}: a model trained on these rows would "
                "not stop where its answers end. Use the model's own template, or a template "
                "whose assistant turn ends with one of those tokens")
    return None
