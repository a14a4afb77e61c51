"""Loss labels for training rows, and the check of the trainer's real collated batches.

The labels come from `runner.chat.loss_mask` (the same functions the chat_template step verified its
mask report with). Before training starts, a few batches straight from the trainer's data loader
are compared with them: every trained token must be one the reference marks, and the trained
tokens of a one-answer row must decode to exactly that answer plus its end token.
"""

from __future__ import annotations

from runner.chat.loss_mask import (
    IGNORE,
    encode_with_spans,
    labels_problem,
    response_only_labels,
    tokenize_row,
    trained_text,
)
from runner.errors import StepError


def encode_row(row: dict, tokenizer, chat: dict, *, limit: int, responses_only: bool) -> dict:
    """{"input_ids", "labels"} of one dataset.jsonl row, cut at `limit` tokens.

    mask markers: Unsloth's train_on_responses_only rule; mask template: the row's
    "trained_spans" (character spans the chat_template step found in the template).
    """
    if chat["mask"] == "template":
        if "trained_spans" not in row:
            raise StepError("chat_template.mask is template but dataset.jsonl rows have no "
                            "trained_spans: re-run the chat_template step (--force chat_template)")
        ids, labels = encode_with_spans(tokenizer, row["text"], row["trained_spans"])
    else:
        ids = tokenize_row(tokenizer, row["text"])
        labels = response_only_labels(ids, tokenizer, chat["instruction_part"],
                                      chat["response_part"])
    ids, labels = ids[:limit], labels[:limit]
    return {"input_ids": ids, "labels": labels if responses_only else list(ids)}


def expected_answer(row: dict, chat: dict) -> str | None:
    """What the trained tokens of a row must decode to (as the chat_template step checked)."""
    messages = row.get("messages") or []
    if not messages or messages[-1].get("role") != "assistant":
        return None
    return messages[-1]["content"] + chat["end_token"]


def split_batch(batch: dict) -> list[tuple[list[int], list[int], bool]]:
    """(ids, labels, starts_masked) of each row in a collated batch, padding removed.

    Padded batches carry an attention mask; padding-free and packed batches are one long row
    whose position ids restart at 0 for each original row (whose first label the collator masks).
    """
    ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
    if "attention_mask" in batch:
        rows = []
        for row_ids, row_labels_, mask in zip(ids, labels, batch["attention_mask"].tolist(), strict=True):
            # Padding may sit on either side (Unsloth's GPT-OSS tokenizer pads on the left).
            if any(label != IGNORE for label, m in zip(row_labels_, mask, strict=True) if not m):
                raise StepError("the collated batch trains padding tokens; this is a bug in the "
                                "training data path")
            real = [i for i, m in enumerate(mask) if m]
            rows.append(([row_ids[i] for i in real], [row_labels_[i] for i in real], False))
        return rows
    positions = batch["position_ids"].tolist()
    rows = []
    for row_ids, row_labels_, row_pos in zip(ids, labels, positions, strict=True):
        starts = [i for i, p in enumerate(row_pos) if p == 0] + [len(row_pos)]
        rows += [(row_ids[a:b], row_labels_[a:b], True) for a, b in zip(starts, starts[1:], strict=False) if b > a]
    return rows


class BatchChecker:
    """Checks collated batches against the reference labels of the training rows."""

    def __init__(self, tokenizer, chat: dict, rows: list[dict], limit: int):
        self.tokenizer, self.chat, self.limit = tokenizer, chat, limit
        self.rows = {}
        for row in rows:
            item = encode_row(row, tokenizer, chat, limit=limit, responses_only=True)
            self.rows[tuple(item["input_ids"])] = (item["labels"], row)
        self.checked = 0

    def reference(self, ids: list[int]) -> tuple[list[int], dict | None]:
        labels, row = self.rows.get(tuple(ids), (None, None))
        if labels is not None:
            return list(labels), row
        if self.chat["mask"] == "template":
            raise StepError("a collated batch holds a sequence that is no dataset row, so its "
                            "template mask cannot be checked; use packing: false")
        return response_only_labels(ids, self.tokenizer, self.chat["instruction_part"],
                                    self.chat["response_part"]), None

    def check(self, batch: dict) -> None:
        pad = self.tokenizer.pad_token_id
        for ids, labels, starts_masked in split_batch(batch):
            if not ids or (set(ids) == {pad} and set(labels) == {IGNORE}):
                continue   # empty, or the padding a packed sequence ends with
            reference, row = self.reference(ids)
            if starts_masked:
                reference[0] = IGNORE
            if labels != reference:
                raise StepError(self._mismatch(ids, labels, reference))
            expected = expected_answer(row, self.chat) if row else None
            if expected is not None:
                prefix = self.chat["response_part"] if self.chat["mask"] == "template" else ""
                problem = labels_problem(self.tokenizer, ids, labels, expected,
                                         allowed_prefix=prefix, truncated=len(ids) >= self.limit)
                if problem:
                    raise StepError(f"the trainer's loss mask is wrong: {problem}; check "
                                    "chat_template.instruction_part / response_part against "
                                    "the rendered rows")
            self.checked += 1

    def _mismatch(self, ids, labels, reference) -> str:
        got = trained_text(self.tokenizer, ids, labels)
        want = trained_text(self.tokenizer, ids, reference)
        return (f"the trainer's loss mask differs from the verified one: it trains {got[:200]!r} "
                f"where the mask report trains {want[:200]!r}; check chat_template."
                "instruction_part / response_part and the training backend")
