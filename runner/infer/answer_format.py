"""How a chat template ends an answer: its stop tokens, and where the answer sits in the output.

Harmony (GPT-OSS) answers live in channels (analysis, then final) and are parsed by
harmony_parse. Any other template's answer is the text before its end token. Both parses offer
the same fields (analysis, final, complete, format_ok) to the evaluation step, the export
checks and the server.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.chat.resolved import is_harmony
from runner.infer.harmony_parse import HarmonyParse
from runner.infer.harmony_parse import parse as parse_harmony

# Harmony ends an assistant turn with <|return|> (answer done) or <|call|> (tool call);
# <|end|> only closes the analysis message, so generation must go on past it.
HARMONY_STOP_TOKENS = ("<|return|>", "<|call|>", "<|endoftext|>")


@dataclass
class PlainAnswer:
    """The answer of a template without channels: everything before the first stop token."""
    final: str
    complete: bool      # a stop token ended it (not the token limit)
    analysis: str = ""  # such templates have no reasoning channel
    format_ok: bool = True

    def as_dict(self) -> dict:
        return {"analysis": self.analysis, "final": self.final, "complete": self.complete,
                "format_ok": self.format_ok}


@dataclass(frozen=True)
class AnswerFormat:
    harmony: bool = True
    stop_tokens: tuple[str, ...] = HARMONY_STOP_TOKENS

    @classmethod
    def from_chat(cls, chat: dict) -> AnswerFormat:
        """From the resolved chat settings (chat_template/chat.json, see runner.chat.resolved)."""
        if is_harmony(chat):
            return HARMONY
        stops = [chat.get("end_token"), *(chat.get("stop_tokens") or [])]
        return cls(harmony=False, stop_tokens=tuple(dict.fromkeys(t for t in stops if t)))

    def _single_token_ids(self, tokenizer) -> dict[str, int]:
        found = {}
        for token in self.stop_tokens:
            ids = tokenizer.convert_tokens_to_ids(token)
            if isinstance(ids, int) and ids != tokenizer.unk_token_id:
                found[token] = ids
        return found

    def with_model_stops(self, tokenizer, model) -> AnswerFormat:
        """A non-harmony template also stops at the model's generation_config eos tokens (a
        model may end its turn with its own eos); harmony must not (see HARMONY_STOP_TOKENS)."""
        config = getattr(model, "generation_config", None)
        if self.harmony or config is None or config.eos_token_id is None:
            return self
        eos = config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos)
        extra = [t for t in tokenizer.convert_ids_to_tokens(eos) if t]
        return AnswerFormat(False, tuple(dict.fromkeys([*self.stop_tokens, *extra])))

    def stop_ids(self, tokenizer) -> list[int]:
        return list(dict.fromkeys(self._single_token_ids(tokenizer).values()))

    def stop_strings(self, tokenizer) -> list[str]:
        """Stop tokens that are not one token in this vocabulary: matched on the text instead."""
        single = self._single_token_ids(tokenizer)
        return [t for t in self.stop_tokens if t not in single]

    def parse(self, text: str, ended: bool) -> HarmonyParse | PlainAnswer:
        if self.harmony:
            return parse_harmony(text)
        cut = min((text.find(t) for t in self.stop_tokens if t in text), default=len(text))
        return PlainAnswer(text[:cut].strip(), ended)


HARMONY = AnswerFormat()
