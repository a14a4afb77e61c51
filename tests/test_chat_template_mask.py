"""runner.chat.loss_mask: Unsloth-style response-only labels, span labels, and their verification."""

from __future__ import annotations

import pytest

from runner.chat.loss_mask import IGNORE, labels_problem, response_only_labels, span_labels, trained_text
from runner.models import load_tokenizer

USER, ASSISTANT = "<|start|>user<|message|>", "<|start|>assistant<|channel|>final<|message|>"
SYSTEM = "<|start|>system<|message|>Reasoning: low<|end|>"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECIPE_CACHE", str(tmp_path_factory.mktemp("recipe-cache")))
        yield load_tokenizer({"name": "tiny"})


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_single_turn_trains_answer_and_end_token_only(tokenizer):
    ids = ids_of(tokenizer, f"{SYSTEM}{USER}Why?<|end|>{ASSISTANT}Because.<|return|>")
    labels = response_only_labels(ids, tokenizer, USER, ASSISTANT)
    assert trained_text(tokenizer, ids, labels) == "Because.<|return|>"
    assert labels_problem(tokenizer, ids, labels, "Because.<|return|>") is None
    assert labels[:len(ids) - len(ids_of(tokenizer, "Because.<|return|>"))] == [IGNORE] * (
        len(ids) - len(ids_of(tokenizer, "Because.<|return|>")))


def test_multi_turn_stops_at_each_user_marker(tokenizer):
    text = f"{USER}one?<|end|>{ASSISTANT}A1<|end|>{USER}two?<|end|>{ASSISTANT}A2<|return|>"
    ids = ids_of(tokenizer, text)
    labels = response_only_labels(ids, tokenizer, USER, ASSISTANT)
    assert trained_text(tokenizer, ids, labels) == "A1<|end|>A2<|return|>"
    assert "two?" not in trained_text(tokenizer, ids, labels)


def test_marker_missing_trains_nothing_and_is_reported(tokenizer):
    ids = ids_of(tokenizer, f"{USER}Why?<|end|><|start|>assistant<|message|>Because.<|return|>")
    labels = response_only_labels(ids, tokenizer, USER, ASSISTANT)
    assert set(labels) == {IGNORE}
    assert labels_problem(tokenizer, ids, labels, "Because.<|return|>") == \
        "no token is trained (every label is masked)"


def test_verification_rejects_trained_prompt_and_wrong_labels(tokenizer):
    text = f"{USER}Why?<|end|>{ASSISTANT}Because.<|return|>"
    ids = ids_of(tokenizer, text)
    problem = labels_problem(tokenizer, ids, list(ids), "Because.<|return|>")
    assert problem.startswith("the trained tokens decode to '<|start|>user")
    shifted = response_only_labels(ids, tokenizer, USER, ASSISTANT)
    shifted = shifted[1:] + [IGNORE]  # labels shifted by one: a classic collator bug
    assert "not its token" in labels_problem(tokenizer, ids, shifted, "Because.<|return|>")
    cut = response_only_labels(ids[:-1], tokenizer, USER, ASSISTANT)
    assert labels_problem(tokenizer, ids[:-1], cut, "Because.<|return|>") is not None
    assert labels_problem(tokenizer, ids[:-1], cut, "Because.<|return|>", truncated=True) is None


def test_span_labels_follow_character_spans(tokenizer):
    text = f"{USER}Why?<|end|>{ASSISTANT}Because.<|return|>"
    start = text.index(ASSISTANT)
    encoding = tokenizer(text, add_special_tokens=False)
    labels = span_labels(encoding, [(start, len(text))])
    assert trained_text(tokenizer, encoding["input_ids"], labels) == f"{ASSISTANT}Because.<|return|>"
    assert labels_problem(tokenizer, encoding["input_ids"], labels, "Because.<|return|>",
                          allowed_prefix=ASSISTANT) is None
