"""Response-only loss labels, computed exactly as training computes them, and their verification.

Two ways to choose the trained tokens:
- markers (`response_only_labels`): Unsloth's `train_on_responses_only` algorithm (with its
  default force_match=True): train from the end of each `response_part` token sequence up to the
  start of the next `instruction_part` sequence, or to the end of the row.
- template (`span_labels`): character spans of the template's `{% generation %}` blocks mapped to
  tokens the way transformers' `return_assistant_tokens_mask` maps them.

Training imports this module to check its real batches with `labels_problem`.
"""

from __future__ import annotations

IGNORE = -100  # the label that PyTorch's cross-entropy skips


def marker_ids(tokenizer, marker: str) -> list[int]:
    """The marker's token ids as they appear inside a rendered row."""
    return list(tokenizer(marker, add_special_tokens=False)["input_ids"])


def tokenize_row(tokenizer, text: str) -> list[int]:
    # The rendered text already holds every special token; trl tokenizes it the same way.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _starts_at(ids: list[int], pos: int, marker: list[int]) -> bool:
    return bool(marker) and ids[pos:pos + len(marker)] == marker


def response_only_labels(input_ids, tokenizer, instruction_part: str, response_part: str,
                         *, ignore_index: int = IGNORE) -> list[int]:
    """Labels for one unpadded row: input ids inside answers, ignore_index elsewhere.

    Follows Unsloth's scan step for step (including its quirks: the token right after an
    instruction marker is never tested as a response start, and an answer that reaches the
    last token keeps that token), so what we verify is what Unsloth trains.
    """
    ids = [int(i) for i in input_ids]
    question, answer = marker_ids(tokenizer, instruction_part), marker_ids(tokenizer, response_part)
    n, last = len(ids), len(ids) - 1
    labels = [ignore_index] * n
    j = 0
    while j < n:
        if _starts_at(ids, j, answer):
            start = j = j + len(answer)
            while j < n:
                if j == last or _starts_at(ids, j, question):
                    end = n if j == last else j
                    labels[start:end] = ids[start:end]
                    if j != last:
                        j += len(question)
                    break
                j += 1
        j += 1
    return labels


def span_labels(encoding, spans: list[tuple[int, int]], *, ignore_index: int = IGNORE) -> list[int]:
    """Labels from character spans (the template's generation blocks) of a tokenized row.

    encoding: the tokenizer's BatchEncoding of the row's text (fast tokenizer, unbatched).
    """
    ids = list(encoding["input_ids"])
    labels = [ignore_index] * len(ids)
    for start_char, end_char in spans:
        start = encoding.char_to_token(start_char)
        if start is None:  # the span starts beyond a truncated row
            break
        end = encoding.char_to_token(end_char - 1)
        stop = end + 1 if end is not None else len(ids)
        labels[start:stop] = ids[start:stop]
    return labels


def encode_with_spans(tokenizer, text: str, spans, *, ignore_index: int = IGNORE):
    """(input_ids, labels) of a row whose trained parts are character spans of its text.

    This is how `mask: template` rows of dataset.jsonl ("trained_spans") become labels; spans
    past the end of a cut row are clipped.
    """
    encoding = tokenizer(text, add_special_tokens=False)
    spans = [(a, min(b, len(text))) for a, b in spans if a < len(text)]
    return list(encoding["input_ids"]), span_labels(encoding, spans, ignore_index=ignore_index)


def trained_ids(input_ids, labels, ignore_index: int = IGNORE) -> list[int]:
    return [int(i) for i, label in zip(input_ids, labels, strict=True) if int(label) != ignore_index]


def trained_text(tokenizer, input_ids, labels, ignore_index: int = IGNORE) -> str:
    return tokenizer.decode(trained_ids(input_ids, labels, ignore_index),
                            skip_special_tokens=False, clean_up_tokenization_spaces=False)


def labels_problem(tokenizer, input_ids, labels, expected: str, *, allowed_prefix: str = "",
                   truncated: bool = False, ignore_index: int = IGNORE) -> str | None:
    """Why these labels are wrong for a row whose trained text must be `expected`, or None.

    expected: the assistant answer followed by its end token (e.g. "...<|return|>").
    allowed_prefix: text the trained span may start with (a template's own assistant header).
    truncated: the row was cut at max_seq_length, so a non-empty prefix of `expected` is right.
    Padding positions must already carry ignore_index.
    """
    if len(labels) != len(input_ids):
        return f"labels have {len(labels)} positions for {len(input_ids)} tokens"
    for position, (token, label) in enumerate(zip(input_ids, labels, strict=True)):
        if int(label) != ignore_index and int(label) != int(token):
            return f"label at position {position} is {int(label)}, not its token {int(token)}"
    got = trained_text(tokenizer, input_ids, labels, ignore_index)
    if not got:
        return "no token is trained (every label is masked)"
    if allowed_prefix and got.startswith(allowed_prefix):
        got = got[len(allowed_prefix):]
    if got == expected or (truncated and got and expected.startswith(got)):
        return None
    return f"the trained tokens decode to {_clip(got)} instead of {_clip(expected)}"


def _clip(text: str, limit: int = 160) -> str:
    return repr(text if len(text) <= limit else text[:limit // 2] + " … " + text[-limit // 2:])
