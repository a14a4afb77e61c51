"""Packed (padding-free) batches without contamination: the rows of a micro-batch in one sequence.

The collator concatenates each micro-batch's rows into one sequence whose `position_ids` restart
at 0 for every row, and pads it to a multiple of PAD_MULTIPLE tokens so that only a few shapes
occur. Position ids alone do not keep rows apart in GPT-OSS (transformers' GptOssModel does not
pass them to its mask builder, and Unsloth's flex kernel builds a plain causal mask), so
`runner.train.packed_attention` turns the restarting position ids into document masks: every
token attends only to earlier tokens of its own row (and, in sliding layers, only within
`config.sliding_window`), with GPT-OSS's attention sinks applied exactly.

Rows per optimizer step, the trained tokens and the loss normalisation are those of the padded
batch, so a packed step computes the same loss and gradients as the padded one.
"""

from __future__ import annotations

from runner.chat.loss_mask import IGNORE

# FlexAttention works on 128-token blocks; lengths rounded to it also keep shapes few.
PAD_MULTIPLE = 128


def pack_rows(rows: list[dict], pad_token_id: int, multiple: int = PAD_MULTIPLE) -> dict:
    """One packed sequence (lists) from rows of {"input_ids", "labels"}.

    Each row's first label is masked: in the packed sequence it would be predicted from the
    previous row's last token, and a row trained alone never predicts its first token either.
    The padding after the rows is one more "row" of pad tokens that nothing trains.
    """
    ids, labels, positions = [], [], []
    for row in rows:
        row_ids = [int(i) for i in row["input_ids"]]
        if not row_ids:
            continue
        row_labels = [int(label) for label in row["labels"]]
        row_labels[0] = IGNORE
        ids += row_ids
        labels += row_labels
        positions += range(len(row_ids))
    pad = (-len(ids)) % max(1, multiple)
    ids += [pad_token_id] * pad
    labels += [IGNORE] * pad
    positions += range(pad)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


class PackedCollator:
    """Data collator: the micro-batch's rows -> one packed sequence (a [1, T] batch).

    `multiple` is the length the sequence is padded to a multiple of (1: no padding, as
    `padding_free` asks). With `trained_positions` set (by runner.train.lean_loss) the batch also
    lists the positions whose next token is trained and those tokens, for
    runner.train.trained_head. Plain attributes only, so dataloader workers can pickle it.
    """

    def __init__(self, pad_token_id: int, multiple: int = PAD_MULTIPLE):
        self.pad_token_id = int(pad_token_id)
        self.multiple = int(multiple)
        self.trained_positions = False

    def __call__(self, features: list[dict]) -> dict:
        import torch

        packed = pack_rows(features, self.pad_token_id, self.multiple)
        batch = {key: torch.tensor([value], dtype=torch.long) for key, value in packed.items()}
        if self.trained_positions:
            from runner.train.trained_head import trained_targets
            index, targets = trained_targets(packed["labels"])
            batch["trained_index"] = torch.tensor(index, dtype=torch.long)
            batch["trained_labels"] = torch.tensor(targets, dtype=torch.long)
        return batch


def document_ids(position_ids):
    """[B, T] position ids that restart at 0 for each row -> the row index of every token."""
    return (position_ids == 0).cumsum(dim=-1) - 1


def row_spans(position_ids: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each row in one packed sequence's position ids."""
    starts = [i for i, position in enumerate(position_ids) if position == 0]
    return list(zip(starts, starts[1:] + [len(position_ids)], strict=True))


def collator_for(training: dict, tokenizer):
    """The packing collator the recipe asks for, or None for TRL's padded batches."""
    if not (training.get("packing") or training.get("padding_free")):
        return None
    multiple = PAD_MULTIPLE if training.get("packing") else 1
    return PackedCollator(tokenizer.pad_token_id, multiple)
