"""Parse GPT-OSS "harmony" output into its channels (analysis = reasoning, final = the answer).

Generated text starts right after the prompt's `<|start|>assistant`, so its first message has
no `<|start|>role` of its own:

    <|channel|>analysis<|message|>thinking...<|end|><|start|>assistant<|channel|>final<|message|>answer<|return|>

A hand-written parser because the official `openai-harmony` package fetches its tokenizer
vocabulary from the network on first use, and the grammar needed here is this small.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

START, CHANNEL, MESSAGE = "<|start|>", "<|channel|>", "<|message|>"
TERMINATORS = ("<|end|>", "<|return|>", "<|call|>")
# Tokens that may trail a generation (eos/pad) and carry no text.
_SPECIAL = re.compile(r"<\|[a-z_]+\|>")
_TERMINATOR = re.compile("|".join(re.escape(t) for t in TERMINATORS))


@dataclass
class HarmonyMessage:
    role: str
    channel: str          # "analysis", "final", "commentary" or "" when the header named none
    content: str
    terminator: str = ""  # "" while the message is still open (generation stopped mid-way)
    recipient: str = ""   # "functions.x" for a tool call (`to=` in the header)


@dataclass
class HarmonyParse:
    messages: list[HarmonyMessage] = field(default_factory=list)
    format_ok: bool = True  # False: the text had no harmony structure; it was taken as final

    def channel_text(self, channel: str) -> str:
        return "\n".join(m.content for m in self.messages if m.channel == channel).strip()

    @property
    def analysis(self) -> str:
        return self.channel_text("analysis")

    @property
    def final(self) -> str:
        return self.channel_text("final")

    @property
    def complete(self) -> bool:
        """A final message was finished (`<|return|>` or `<|end|>`), not cut by the token limit."""
        return any(m.channel == "final" and m.terminator for m in self.messages)

    def as_dict(self) -> dict:
        return {"analysis": self.analysis, "final": self.final, "complete": self.complete,
                "format_ok": self.format_ok}


def _parse_header(header: str, default_role: str) -> tuple[str, str, str]:
    """`assistant to=functions.f<|channel|>commentary json` -> (role, channel, recipient)."""
    role_part, _, channel_part = header.partition(CHANNEL)
    role_words = role_part.split()
    role = next((w for w in role_words if not w.startswith("to=")), default_role)
    recipient = next((w[3:] for w in role_words + channel_part.split() if w.startswith("to=")), "")
    channel_words = _SPECIAL.sub(" ", channel_part).split()
    channel = channel_words[0] if channel_words else ""
    return role, channel, recipient


def _split_content(body: str) -> tuple[str, str]:
    match = _TERMINATOR.search(body)
    if match is None:
        return body, ""
    return body[:match.start()], match.group(0)


def parse(text: str, role: str = "assistant") -> HarmonyParse:
    """Split generated text into messages; text with no harmony markers counts as the final answer."""
    if MESSAGE not in text:
        content, terminator = _split_content(text)
        plain = _SPECIAL.sub("", content)
        message = HarmonyMessage(role, "final", plain, terminator)
        return HarmonyParse([message] if plain.strip() else [], format_ok=False)
    result = HarmonyParse()
    for index, segment in enumerate(text.split(START)):
        if MESSAGE not in segment:
            continue  # an empty lead-in or a header cut off before its <|message|>
        header, _, body = segment.partition(MESSAGE)
        seg_role, channel, recipient = _parse_header(header, role if index == 0 else "")
        content, terminator = _split_content(body)
        if not terminator:
            content = _SPECIAL.sub("", content)  # eos/pad tokens after an unterminated message
        result.messages.append(HarmonyMessage(seg_role, channel, content, terminator, recipient))
    return result


# The end of a text that may be the beginning of a special token still arriving.
_PARTIAL_MARKER = re.compile(r"<(\|[a-z_]*\|?)?$")


def _hold_back_partial_marker(content: str) -> str:
    match = _PARTIAL_MARKER.search(content)
    return content[:match.start()] if match else content


class HarmonyStream:
    """Incremental parser for streaming: feed text pieces, get (channel, new text) deltas.

    Re-parses the accumulated text each time (generations are short enough) and emits only
    what each message gained since the last call, so a piece that carries a whole header plus
    content, or half a special token, still comes out right. Call finish() at the end for
    whatever was held back.
    """

    def __init__(self, role: str = "assistant"):
        self.role = role
        self.text = ""
        self._sent: list[int] = []

    def feed(self, piece: str) -> list[tuple[str, str]]:
        self.text += piece
        if MESSAGE not in self.text and _could_be_header(self.text.lstrip()):
            return []  # a header still arriving: its channel is not known yet
        return self._deltas(hold_back=True)

    def finish(self) -> list[tuple[str, str]]:
        return self._deltas(hold_back=False)

    def _deltas(self, hold_back: bool) -> list[tuple[str, str]]:
        deltas: list[tuple[str, str]] = []
        for index, message in enumerate(parse(self.text, self.role).messages):
            content = message.content
            if hold_back and not message.terminator:
                content = _hold_back_partial_marker(content)
            if index >= len(self._sent):
                self._sent.append(0)
            new = content[self._sent[index]:]
            if new:
                deltas.append((message.channel, new))
                self._sent[index] = len(content)
        return deltas

    def result(self) -> HarmonyParse:
        return parse(self.text, self.role)


def _could_be_header(text: str) -> bool:
    return text.startswith("<|") or text in ("", "<")
