"""Exact dedup (normalized, across batches) and near dedup (MinHash LSH)."""

from __future__ import annotations

import random

from runner.data.dedup import ExactDedup, NearDedup, normalize


def test_normalize_ignores_case_width_and_whitespace_runs():
    assert normalize("  What IS\u00a0a   Ｌist?\n") == "what is a list?"


def test_exact_dedup_within_and_across_batches_in_order():
    dedup = ExactDedup()
    assert dedup.duplicates(["a b", "c", "A  B", "d"]) == [False, False, True, False]
    assert dedup.duplicates(["d", "e", "e", "C"]) == [True, False, True, True]
    assert dedup.duplicates([]) == []


def test_exact_dedup_agrees_with_a_set_on_many_random_texts():
    rng = random.Random(7)
    texts = [f"text {rng.randrange(3000)}" for _ in range(20000)]
    dedup, seen, expected = ExactDedup(), set(), []
    for text in texts:
        expected.append(text in seen)
        seen.add(text)
    got = []
    for start in range(0, len(texts), 3001):     # uneven batches
        got += dedup.duplicates(texts[start:start + 3001])
    assert got == expected


def test_near_dedup_catches_small_edits_but_not_different_texts():
    words = [f"w{i}" for i in range(60)]
    near = NearDedup(threshold=0.8, num_perm=128, shingle_size=3)
    assert not near.is_duplicate(" ".join(words))
    assert near.is_duplicate(" ".join(words[:-1] + ["changed"]))    # one word of sixty
    assert not near.is_duplicate(" ".join(reversed(words)))
    assert not near.is_duplicate("a completely different short text")
