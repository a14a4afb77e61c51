"""Quality signals of one generated answer, and their counts and rates over a set of answers.

Each answer of the evaluation step carries these signals (answers.jsonl, `quality`):

- empty: the answer (harmony: its final channel) holds no visible text.
- cut_off: no stop token ended the generation: it ran into max_new_tokens.
- repeated_ngram_share: over the answer's word 4-grams (words and punctuation marks, lower
  case; harmony: the analysis and final text together), the share that repeat an earlier
  4-gram of the same answer: 1 - distinct / total. Ordinary prose and code stay well under
  0.1; text that says the same thing twice over reaches 0.5.
  max_ngram_repeats: how often the most frequent 4-gram occurs.
- loop: repeated_ngram_share >= LOOP_SHARE over at least MIN_NGRAMS 4-grams (shorter answers
  are too short to call a loop), or one 4-gram occurring LOOP_REPEATS times or more (a loop
  that took over only the end of a longer answer).
- channels, channels_ok, channel_problem (harmony only): the channel of each message, and
  whether they form the expected structure: one or more analysis messages, then one final
  message, and no other channel. An answer cut off before its final message is judged only on
  what it wrote (a missing final counts as cut off, not as a channel problem).
"""

from __future__ import annotations

import re
from collections import Counter

NGRAM = 4
LOOP_SHARE = 0.3
MIN_NGRAMS = 8
LOOP_REPEATS = 8
_WORD = re.compile(r"\w+|[^\w\s]")
EXPECTED_CHANNELS = ("analysis", "final")


def words(text: str) -> list[str]:
    """Words and punctuation marks, lower case: the units the n-grams are made of."""
    return _WORD.findall(text.lower())


def repetition(text: str, n: int = NGRAM) -> dict:
    """Share of repeated word n-grams, the most repeated one's count, and the loop flag."""
    tokens = words(text)
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return {"repeated_ngram_share": 0.0, "max_ngram_repeats": 0, "loop": False}
    counts = Counter(grams)
    share, most = 1 - len(counts) / len(grams), max(counts.values())
    loop = (len(grams) >= MIN_NGRAMS and share >= LOOP_SHARE) or most >= LOOP_REPEATS
    return {"repeated_ngram_share": round(share, 4), "max_ngram_repeats": most, "loop": loop}


def channel_problem(channels: list[str], ended: bool) -> str:
    """What is wrong with a harmony answer's channel sequence ("" when nothing is)."""
    stray = [c for c in channels if c not in EXPECTED_CHANNELS]
    if stray:
        return f"stray channel {stray[0]!r}" if stray[0] else "a message without a channel"
    if channels.count("final") > 1:
        return "more than one final message"
    if "final" in channels and channels.index("final") != len(channels) - 1:
        return "analysis after the final answer"
    if "analysis" not in channels and channels:
        return "final answer without an analysis message"
    if ended and "final" not in channels:
        return "ended without a final answer"
    return ""


def signals(final: str, analysis: str, ended: bool, harmony=None) -> dict:
    """The signals of one answer; harmony: its HarmonyParse (None for other templates)."""
    found = {"empty": not final.strip(), "cut_off": not ended,
             **repetition(f"{analysis}\n{final}" if analysis else final)}
    if harmony is not None:
        channels = [m.channel for m in harmony.messages]
        problem = (channel_problem(channels, ended) if harmony.format_ok
                   else "no harmony channels: the output is plain text")
        found.update(channels=channels, channels_ok=not problem, channel_problem=problem)
    return found


# signal in `quality` -> names of its count and its rate in a summary.
COUNTED = (("empty", "empty", "empty_rate"), ("cut_off", "cut_off", "cut_off_rate"),
           ("loop", "loops", "loop_rate"))


def summarize(rows: list[dict]) -> dict:
    """Per model (rows' `model`: base or tuned): answers, counts and rates of each signal."""
    summary = {}
    for model in dict.fromkeys(row.get("model", "tuned") for row in rows):
        signals_of = [row.get("quality") or {} for row in rows if row.get("model", "tuned") == model]
        total = len(signals_of)
        item = {"answers": total}
        for key, count, rate in COUNTED:
            item[count] = sum(bool(s.get(key)) for s in signals_of)
            item[rate] = round(item[count] / total, 4) if total else None
        judged = [s for s in signals_of if "channels_ok" in s]
        if judged:
            item["channel_errors"] = sum(not s["channels_ok"] for s in judged)
            item["channel_error_rate"] = round(item["channel_errors"] / len(judged), 4)
        shares = [s.get("repeated_ngram_share", 0.0) for s in signals_of]
        item["mean_repeated_ngram_share"] = round(sum(shares) / total, 4) if total else None
        summary[model] = item
    return summary
