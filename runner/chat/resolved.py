"""The chat settings in effect: what the chat_template step resolved, read back by later steps.

The recipe may leave `instruction_part`, `response_part`, `end_token`, `require` and
`channel_fix` on "auto"; the chat_template step derives them from the template and writes the
result to `chat_template/chat.json`. Training, evaluation and export read that file, never the
raw section, so every step works with the same markers the mask was verified with.
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_FILE = "chat.json"
KEYS = ("mask", "instruction_part", "response_part", "end_token", "template_kind")


def read_chat(chat_dir: Path, section: dict | None = None) -> dict:
    """The resolved chat settings of a chat_template step folder.

    section: the recipe's chat_template section, used only for a folder written before
    chat.json existed (its markers are then taken as given).
    """
    path = Path(chat_dir) / CHAT_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    section = dict(section or {})
    if any(section.get(key) == "auto" for key in KEYS):
        from runner.errors import StepError
        raise StepError(f"{path} is missing, so the chat markers read off the template are not "
                        "known: re-run the chat_template step (--force chat_template)")
    kind = "harmony" if "<|channel|>" in str(section.get("response_part", "")) else "generic"
    return {**{key: section.get(key) for key in KEYS}, "template_kind": kind,
            "stop_tokens": [section.get("end_token")] if section.get("end_token") else []}


def is_harmony(chat: dict) -> bool:
    return chat.get("template_kind") == "harmony"
