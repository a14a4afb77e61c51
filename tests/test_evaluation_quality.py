"""Answer quality signals on crafted strings: empty, cut off, repetition loops, harmony channels;
their rates over base and tuned answers; and where a plain (non-harmony) answer ends."""

from __future__ import annotations

import pytest

from runner.infer.answer_format import HARMONY, AnswerFormat, PlainAnswer
from runner.infer.answer_quality import (
    LOOP_REPEATS,
    LOOP_SHARE,
    channel_problem,
    repetition,
    signals,
    summarize,
    words,
)
from runner.infer.harmony_parse import parse

PROSE = ("To read a CSV file, open it with open() in a with statement and pass the file object "
         "to csv.reader. Each row comes back as a list of strings, so convert the numbers "
         "yourself; csv.DictReader gives dictionaries keyed by the header row instead.")
CODE = ("import csv\n\nwith open('data.csv', newline='') as handle:\n"
        "    for row in csv.reader(handle):\n        print(row)\n")


def test_words_split_punctuation_and_ignore_case():
    assert words("Hello, World! print(x)") == ["hello", ",", "world", "!", "print", "(", "x", ")"]


@pytest.mark.parametrize("text", [PROSE, CODE, PROSE + "\n\n" + CODE])
def test_ordinary_answers_are_not_loops(text):
    found = repetition(text)
    assert found["repeated_ngram_share"] < 0.1 and not found["loop"]


def test_a_sentence_said_over_and_over_is_a_loop():
    found = repetition("A list is mutable. " * 6)
    # 6 x 5 words = 30 words, 27 four-grams, 5 distinct: 1 - 5/27
    assert found["repeated_ngram_share"] == round(1 - 5 / 27, 4)
    assert found["max_ngram_repeats"] == 6 and found["loop"]


def test_a_loop_after_a_sound_start_is_caught():
    found = repetition(PROSE + " the" * 14)
    # a small share of the whole answer, but one 4-gram eleven times
    assert found["repeated_ngram_share"] < LOOP_SHARE and found["max_ngram_repeats"] == 11
    assert found["loop"]
    assert not repetition(PROSE + " the" * 10)["loop"]  # seven times: not yet


def test_punctuation_loops_count_too():
    assert repetition("!" * 40)["loop"]


def test_short_or_empty_text_is_never_a_loop():
    assert repetition("") == {"repeated_ngram_share": 0.0, "max_ngram_repeats": 0, "loop": False}
    # 7 four-grams, all the same: too short to call a loop
    assert not repetition("yes " * 10)["loop"]
    assert repetition("yes " * (LOOP_REPEATS + 3))["loop"]


def test_the_share_is_exactly_one_minus_distinct_over_total():
    found = repetition("a b c d a b c d e")  # abcd bcda cdab dabc abcd bcde: 5 distinct of 6
    assert found["repeated_ngram_share"] == round(1 - 5 / 6, 4) and found["max_ngram_repeats"] == 2


FULL = ("<|channel|>analysis<|message|>The user wants a list.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>A list is mutable.<|return|>")


@pytest.mark.parametrize("text,ended,problem", [
    (FULL, True, ""),
    ("<|channel|>analysis<|message|>Thinking about lists and", False, ""),  # cut off, not wrong
    ("<|channel|>analysis<|message|>Done thinking.<|end|><|return|>", True,
     "ended without a final answer"),
    ("<|channel|>final<|message|>Only an answer.<|return|>", True,
     "final answer without an analysis message"),
    ("<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>commentary<|message|>"
     "b<|end|><|start|>assistant<|channel|>final<|message|>c<|return|>", True,
     "stray channel 'commentary'"),
    ("<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>final<|message|>b<|end|>"
     "<|start|>assistant<|channel|>analysis<|message|>c<|end|>", True,
     "analysis after the final answer"),
    ("<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>final<|message|>b<|end|>"
     "<|start|>assistant<|channel|>final<|message|>c<|return|>", True, "more than one final message"),
    ("<|message|>no channel<|end|>", True, "a message without a channel"),
])
def test_harmony_channel_structure(text, ended, problem):
    parsed = parse(text)
    assert channel_problem([m.channel for m in parsed.messages], ended) == problem
    found = signals(parsed.final, parsed.analysis, ended, parsed)
    assert found["channels_ok"] == (problem == "") and found["channel_problem"] == problem


def test_signals_of_a_good_harmony_answer():
    parsed = parse(FULL)
    found = signals(parsed.final, parsed.analysis, True, parsed)
    assert found == {"empty": False, "cut_off": False, "repeated_ngram_share": 0.0,
                     "max_ngram_repeats": 1, "loop": False, "channels": ["analysis", "final"],
                     "channels_ok": True, "channel_problem": ""}


def test_plain_text_is_a_channel_problem_for_harmony():
    parsed = parse("just words, no markers")
    found = signals(parsed.final, parsed.analysis, False, parsed)
    assert found["channel_problem"] == "no harmony channels: the output is plain text"


def test_cut_off_harmony_answer_is_empty_and_cut_off():
    parsed = parse("<|channel|>analysis<|message|>Thinking")
    found = signals(parsed.final, parsed.analysis, False, parsed)
    assert found["empty"] and found["cut_off"] and found["channels_ok"]


def test_generic_answers_have_no_channel_keys():
    found = signals("An answer.", "", True)
    assert set(found) == {"empty", "cut_off", "repeated_ngram_share", "max_ngram_repeats", "loop"}
    assert signals("   \n", "", True)["empty"]


def _row(model: str, **quality) -> dict:
    return {"model": model, "quality": {"empty": False, "cut_off": False, "loop": False,
                                        "repeated_ngram_share": 0.0, **quality}}


def test_summary_counts_and_rates_per_model():
    rows = [_row("base", loop=True, repeated_ngram_share=0.6), _row("tuned"),
            _row("base", cut_off=True), _row("tuned", empty=True, cut_off=True),
            _row("base"), _row("tuned", channels_ok=False), _row("base"), _row("tuned", channels_ok=True)]
    summary = summarize(rows)
    assert summary["base"] == {"answers": 4, "empty": 0, "empty_rate": 0.0, "cut_off": 1,
                               "cut_off_rate": 0.25, "loops": 1, "loop_rate": 0.25,
                               "mean_repeated_ngram_share": 0.15}
    tuned = summary["tuned"]
    assert (tuned["empty"], tuned["cut_off"], tuned["loops"]) == (1, 1, 0)
    # only answers judged for channels (harmony) count in the channel rate
    assert tuned["channel_errors"] == 1 and tuned["channel_error_rate"] == 0.5


def test_plain_answer_ends_at_the_first_stop_token():
    chatml = AnswerFormat.from_chat({"template_kind": "generic", "end_token": "<|im_end|>",
                                     "stop_tokens": ["<|endoftext|>", "<|im_end|>"]})
    assert not chatml.harmony and chatml.stop_tokens == ("<|im_end|>", "<|endoftext|>")
    parsed = chatml.parse("  Use csv.reader.<|im_end|>\n<|im_start|>user", True)
    assert parsed == PlainAnswer("Use csv.reader.", True)
    assert parsed.as_dict() == {"analysis": "", "final": "Use csv.reader.", "complete": True,
                                "format_ok": True}
    assert chatml.parse("cut off mid", False).final == "cut off mid"


def test_harmony_chat_keeps_harmony_parsing_and_stops():
    assert AnswerFormat.from_chat({"template_kind": "harmony"}) is HARMONY
    assert "<|end|>" not in HARMONY.stop_tokens  # it only closes the analysis message
    assert HARMONY.parse(FULL, True).final == "A list is mutable."
