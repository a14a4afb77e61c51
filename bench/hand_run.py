"""The hand-run workflow's data functions, re-implemented straight (see ../shared/SEED_NOTES.md).

This is the fidelity reference for the `cleaning`/`pairing`/`validation` steps and the baseline of
bench/bench_data.py: plain `re` calls in the original order, whole lists in memory, one process.
"""

from __future__ import annotations

import re

SKIP_WORDS = ["navigation", "copyright", "index", "table of contents", "previous", "next",
              "click here", "download", "share"]


def clean_content(content: str) -> str:
    content = re.sub(r"<[^>]+>", "", content)
    content = re.sub(r"!\[.*?\]\(.*?\)", "", content)
    content = re.sub(r"\[([^\]]+)\]\([^\)]+\)", r"\1", content)
    content = re.sub(r"```[^`]*```", "", content)
    content = re.sub(r"`[^`]+`", "", content)
    content = re.sub(r"[#*_~>`|-]+", " ", content)
    content = re.sub(r"\\(.)", r"\1", content)
    content = re.sub(r"https?://[^\s]+", "", content)
    content = re.sub(r"\S+\.\w+", "", content)
    content = re.sub(r"\s+", " ", content)
    return content


def clean_sentences(content: str) -> list[str]:
    sentences = re.split(r"(?<=[.!?])\s+", clean_content(content))
    kept = []
    for sent in sentences:
        sent = sent.strip()
        if len(sent) > 30 and not any(skip in sent.lower() for skip in SKIP_WORDS):
            kept.append(sent)
    return kept


def process_single_result(content: str) -> list[dict]:
    """One scraped page -> instruction/response pairs (consecutive sentences)."""
    examples = []
    clean = clean_sentences(content)
    for i in range(0, len(clean) - 1):
        instruction = clean[i][:200].strip()
        response = clean[i + 1][:300].strip()
        if len(instruction) > 20 and len(response) > 30:
            examples.append({"instruction": instruction, "response": response})
    return examples


def final_validation(examples: list[dict]) -> list[dict]:
    clean_data = []
    seen = set()
    for ex in examples:
        instruction = ex.get("instruction", "").strip()
        response = ex.get("response", "").strip()
        instruction = re.sub(r"[^a-zA-Z0-9\s\.,?!]", "", instruction)
        response = re.sub(r"[^a-zA-Z0-9\s\.,?!]", "", response)
        if len(instruction) > 10 and len(response) > 20 and instruction not in seen:
            seen.add(instruction)
            clean_data.append({"instruction": instruction, "response": response})
    return clean_data


def hand_run(pages: list[str]) -> list[dict]:
    """The whole data half of the original over a list of page texts."""
    examples = []
    for page in pages:
        examples.extend(process_single_result(page))
    return final_validation(examples)
