"""Parsing GPT-OSS harmony output: analysis apart from final, cut-off answers, streaming."""

from __future__ import annotations

import pytest

from runner.infer.harmony_parse import HarmonyStream, parse

FULL = ("<|channel|>analysis<|message|>The user wants a list.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>A list is mutable.<|return|>")


def test_analysis_and_final_are_separated():
    result = parse(FULL)
    assert result.analysis == "The user wants a list."
    assert result.final == "A list is mutable."
    assert result.complete and result.format_ok
    assert [m.channel for m in result.messages] == ["analysis", "final"]


def test_answer_cut_by_the_token_limit_is_not_complete():
    result = parse("<|channel|>analysis<|message|>Thinking about lists and")
    assert result.analysis == "Thinking about lists and"
    assert result.final == "" and not result.complete


def test_final_without_analysis_and_trailing_eos():
    result = parse("<|channel|>final<|message|>Short answer.<|return|><|endoftext|>")
    assert result.final == "Short answer." and result.analysis == "" and result.complete


def test_text_without_harmony_markers_is_taken_as_the_answer():
    result = parse("just text<|return|>")
    assert result.final == "just text" and not result.format_ok and result.complete


def test_tool_call_header_gives_recipient_and_channel():
    result = parse(" to=functions.lookup<|channel|>commentary <|constrain|>json<|message|>{\"q\": 1}<|call|>")
    message = result.messages[0]
    assert (message.role, message.channel, message.recipient) == ("assistant", "commentary",
                                                                  "functions.lookup")
    assert message.content == '{"q": 1}' and message.terminator == "<|call|>"


@pytest.mark.parametrize("size", [1, 2, 5, 17, len(FULL)])
def test_stream_deltas_add_up_to_the_parsed_channels(size):
    stream = HarmonyStream()
    deltas = []
    for start in range(0, len(FULL), size):
        deltas += stream.feed(FULL[start:start + size])
    analysis = "".join(text for channel, text in deltas if channel == "analysis")
    final = "".join(text for channel, text in deltas if channel == "final")
    assert (analysis, final) == ("The user wants a list.", "A list is mutable.")
    # No special-token fragment ever leaks into a delta, whatever the piece boundaries.
    assert not any("<|" in text or "|>" in text for _, text in deltas)
    assert stream.result().final == "A list is mutable."


def test_stream_of_plain_text_is_final_content():
    stream = HarmonyStream()
    deltas = stream.feed("hello ") + stream.feed("world")
    assert deltas == [("final", "hello "), ("final", "world")]


def test_stream_holds_back_half_a_special_token_but_not_a_plain_less_than():
    stream = HarmonyStream()
    stream.feed("<|channel|>final<|message|>a < b")
    assert stream.feed(" and <|") == [("final", " and ")]
    assert stream.feed("return|>") == []
    assert stream.finish() == [] and stream.result().final == "a < b and"
