"""The training benchmark's inputs: random-init models of real shapes and rendered harmony rows.

Two kinds of rows, each written as chat_template writes dataset.jsonl (so the runner trains them
as `recipe run` does) and tokenized with labels (for the engines that take tokens):
- full: every row as long as the sequence length (the throughput ceiling);
- docs: row lengths sampled from the offline Python-docs pairs (training-row-lengths.json: the
  1,908 pairs of python_docs_offline.yaml rendered with the harmony template, counts scaled to
  the o200k tokenizer's density, mean 371), capped at the sequence length.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
LENGTHS = BENCH / "results" / "training-row-lengths.json"


def build_model(folder: Path, family: str, preset: str | None, shape: dict, device: str) -> None:
    from runner.tiny_model import build_tiny

    if (folder / "tiny_model.json").is_file():
        return
    start = time.time()
    build_tiny(folder, family, preset=preset, device=device,
               dtype="bfloat16" if preset else "float32", **shape)
    print(f"built {folder.name} ({preset}, {shape}) in {time.time() - start:.0f}s", flush=True)


def docs_lengths(count: int, cap: int, seed: int = 0) -> list[int]:
    data = json.loads(LENGTHS.read_text())
    rng = random.Random(seed)
    return [min(cap, round(rng.choice(data["lengths"]) * data["scale"])) for _ in range(count)]


def write_rows(model_dir: Path, out: Path, lengths: list[int]) -> None:
    """out/chat_template/dataset.jsonl and out/tokens.json: one rendered row per length."""
    from transformers import AutoTokenizer

    from runner.chat.loss_mask import response_only_labels
    from runner.tiny_model import tokenizer_corpus
    from runner.validate import fill_defaults, schema

    if (out / "tokens.json").is_file():
        return
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chat = resolved_chat(tokenizer, fill_defaults({}, schema()["$defs"]["chat_template"],
                                                  top=False))
    words = " ".join(tokenizer_corpus()[1:]).split()
    rng, rows, tokens = random.Random(0), [], []
    for index, length in enumerate(lengths):
        question = f"Question {index}: " + " ".join(rng.choices(words, k=12))
        answer, text, ids = fit_answer(tokenizer, chat, question, words, rng, length)
        labels = response_only_labels(ids, tokenizer, chat["instruction_part"],
                                      chat["response_part"])
        rows.append({"text": text, "messages": [{"role": "user", "content": question},
                                                {"role": "assistant", "content": answer}],
                     "provenance": {"document_id": "bench"}})
        tokens.append({"input_ids": ids, "labels": labels})
    (out / "chat_template").mkdir(parents=True, exist_ok=True)
    (out / "chat_template" / "chat.json").write_text(json.dumps(chat))
    (out / "chat_template" / "dataset.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    (out / "tokens.json").write_text(json.dumps(tokens))
    real = [len(t["input_ids"]) for t in tokens]
    print(f"{out.name}: {len(real)} rows, mean {sum(real) / len(real):.0f} tokens, "
          f"max {max(real)}", flush=True)


def resolved_chat(tokenizer, chat: dict) -> dict:
    """The chat settings with the markers read off the template, as chat_template's chat.json."""
    from runner.chat.chat_format import template_renderer
    from runner.chat.template_markers import derive_markers, resolve_markers
    from runner.steps.chat_template import special_tokens

    markers = derive_markers(template_renderer(tokenizer, tokenizer.chat_template, chat, []),
                             special_tokens(tokenizer))
    return {**chat, **resolve_markers(chat, markers)[0]}


def fit_answer(tokenizer, chat, question, words, rng, seq):
    """A random answer as long as the rendered row can be within `seq` tokens."""
    from runner.chat.chat_format import render
    from runner.chat.loss_mask import tokenize_row

    def row(answer):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        text = render(messages, tokenizer, tokenizer.chat_template, chat).text
        return answer, text, tokenize_row(tokenizer, text)

    overhead = len(row("")[2])
    pool = " ".join(rng.choices(words, k=seq * 2))
    encoding = tokenizer(pool, add_special_tokens=False, return_offsets_mapping=True)
    cut = encoding["offset_mapping"][max(1, seq - overhead - 1)][0]
    answer = pool[:cut].rsplit(" ", 1)[0]
    # Tokens can merge differently at the edges; a row never gets shorter than its template.
    while len((best := row(answer))[2]) > seq and " " in answer:
        answer = answer.rsplit(" ", 1)[0]
    return best
