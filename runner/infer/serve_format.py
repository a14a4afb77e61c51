"""How the served model's answers end and where they sit: harmony channels or a plain answer
before the template's end token, from the run's chat.json, else read off the tokenizer's template.

A server that took every model for GPT-OSS would stop only at harmony's tokens: a ChatML model
whose eos is not its end-of-turn token would talk on past `<|im_end|>` into invented turns.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from runner.chat.resolved import CHAT_FILE, read_chat
from runner.errors import StepError
from runner.infer.answer_format import HARMONY, AnswerFormat
from runner.infer.harmony_parse import HarmonyStream


@dataclass(frozen=True)
class ServedFormat:
    answer: AnswerFormat
    template: str | None      # the template the run trained with (None: the tokenizer's own)
    source: str               # where the format was read, for the start-up line


def run_chat_folder(model_dir: Path) -> Path | None:
    """The chat_template step folder of the run that made model_dir (runs/NAME/export/lora,
    runs/NAME/export/merged_16bit, runs/NAME/training/adapter), if it has a chat.json."""
    model_dir = Path(model_dir).resolve()
    if model_dir.parent.name not in ("export", "training"):
        return None
    folder = model_dir.parent.parent / "chat_template"
    return folder if (folder / CHAT_FILE).is_file() else None


def served_format(model_dir: Path, tokenizer) -> ServedFormat:
    chat_dir = run_chat_folder(model_dir)
    if chat_dir is not None:
        template = chat_dir / "chat_template.jinja"
        return ServedFormat(AnswerFormat.from_chat(read_chat(chat_dir)),
                            template.read_text(encoding="utf-8") if template.is_file() else None,
                            f"{chat_dir / CHAT_FILE}")
    return ServedFormat(_from_tokenizer(tokenizer), None, "the tokenizer's chat template")


def _from_tokenizer(tokenizer) -> AnswerFormat:
    """The markers of the tokenizer's own template (runner.chat.template_markers); a template
    they cannot be read off ends at the tokenizer's eos."""
    from runner.chat.template_markers import derive_markers

    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        raise StepError("the served model's tokenizer has no chat template: serve a model "
                        "folder whose tokenizer ships one")

    def render(messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False)
    try:
        markers = derive_markers(render, _special_tokens(tokenizer))
    except StepError as error:
        print(f"warning: the served template's markers could not be read ({error}); answers end "
              f"at the tokenizer's eos {tokenizer.eos_token!r}", file=sys.stderr, flush=True)
        return AnswerFormat(False, tuple(t for t in [tokenizer.eos_token] if t))
    if markers.template_kind == "harmony":
        return HARMONY
    return AnswerFormat.from_chat({"template_kind": markers.template_kind,
                                   "end_token": markers.end_token,
                                   "stop_tokens": [tokenizer.eos_token] if tokenizer.eos_token else []})


def _special_tokens(tokenizer) -> list[str]:
    added = [token.content for token in tokenizer.added_tokens_decoder.values() if token.special]
    return sorted(set(added) | set(tokenizer.all_special_tokens))


class PlainStream:
    """Streaming for a template without channels: (final, text) deltas, the end token and
    anything after it left out, and text that may be the start of a stop token held back."""

    def __init__(self, stop_tokens: tuple[str, ...]):
        self.stops = [t for t in stop_tokens if t]
        self.text, self.sent, self.done = "", 0, False

    def feed(self, piece: str) -> list[tuple[str, str]]:
        self.text += piece
        return self._deltas(hold_back=True)

    def finish(self) -> list[tuple[str, str]]:
        return self._deltas(hold_back=False)

    def _deltas(self, hold_back: bool) -> list[tuple[str, str]]:
        """What the answer gained: the text before any stop token, stripped as the plain
        answer is (runner.infer.answer_format.PlainAnswer), so stream and completion agree."""
        if self.done:
            return []
        cut = min((self.text.find(t) for t in self.stops if t in self.text), default=-1)
        self.done = cut >= 0 or not hold_back
        visible = self.text[:cut] if cut >= 0 else self.text
        if not self.done:   # a stop token may be arriving, and trailing space may be the last
            visible = visible[:len(visible) - self._partial_stop()]
        visible = visible.rstrip().lstrip()
        new = visible[self.sent:]
        self.sent = len(visible)
        return [("final", new)] if new else []

    def _partial_stop(self) -> int:
        """Length of the longest tail of the text that begins a stop token."""
        return max((n for t in self.stops for n in range(1, len(t))
                    if self.text.endswith(t[:n])), default=0)


def stream_parser(answer: AnswerFormat):
    return HarmonyStream() if answer.harmony else PlainStream(answer.stop_tokens)
