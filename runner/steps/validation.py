"""The validation step: final filters over pairs, and the data report of the whole data half."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

from runner.artifacts import read_json, read_jsonl, write_json, write_jsonl
from runner.errors import StepError
from runner.registry import StepContext, step

# The hand-run workflow's final filter: ASCII letters, digits, whitespace and . , ? ! only.
_OUTSIDE_CHARSET = re.compile(r"[^a-zA-Z0-9\s\.,?!]")
DEDUP_BATCH = 50_000    # pairs checked against the seen digests at once (numpy, in order)


class PairFilter:
    """Per pair: charset filter and length limits; per batch (in order): exact, then near dedup."""

    def __init__(self, settings: dict):
        self.s = settings
        self.exact = None
        if settings["dedup"] == "exact":
            from runner.dedup import ExactDedup
            self.exact = ExactDedup()
        near = settings["near_dedup"]
        self.near = None
        if near["enabled"]:
            from runner.dedup import NearDedup
            self.near = NearDedup(near["threshold"], near["num_perm"], near["shingle_size"])

    def prepare(self, pair: dict) -> tuple[dict | None, str | None]:
        """(the pair as it would be kept, None) or (None, drop reason)."""
        s = self.s
        instruction = str(pair.get("instruction") or "").strip()
        response = str(pair.get("response") or "").strip()
        if s["charset_filter"]:
            instruction = _OUTSIDE_CHARSET.sub("", instruction)
            response = _OUTSIDE_CHARSET.sub("", response)
        for name, text in (("instruction", instruction), ("response", response)):
            if len(text) <= s[f"min_{name}_chars"]:
                return None, f"{name}_too_short"
            if s[f"max_{name}_chars"] and len(text) > s[f"max_{name}_chars"]:
                return None, f"{name}_too_long"
        return {**pair, "instruction": instruction, "response": response}, None

    def deduplicate(self, batch: list[dict], dropped: Counter) -> Iterator[dict]:
        repeats = (self.exact.duplicates([p["instruction"] for p in batch]) if self.exact
                   else [False] * len(batch))
        for pair, repeated in zip(batch, repeats, strict=True):
            if repeated:
                dropped["duplicate_instruction"] += 1
            elif self.near and self.near.is_duplicate(f"{pair['instruction']}\n{pair['response']}"):
                dropped["near_duplicate"] += 1
            else:
                yield pair


@step("validation", inputs=["pairing"],
      outputs=["pairs.jsonl", "stats.json", "data_report.md", "data_report.json"], version=1)
def validate_pairs(ctx: StepContext) -> dict:
    """Final filters, in order: the original's charset filter (`charset_filter`, off: it
    destroys code and non-English text), length limits (longer than `min_*_chars`, at most
    `max_*_chars`), exact dedup of the normalized instruction (`dedup`), near-duplicate removal
    of instruction + response with MinHash LSH (`near_dedup`). Writes the kept pairs, drop
    counts per reason, and data_report.md/json: counts per stage with drop reasons, length
    histograms and `examples` random pairs (`seed`)."""
    from runner.data_report import LengthHistogram, Reservoir, build_report, render_markdown

    settings = ctx.settings
    source = ctx.inputs["pairing"] / "pairs.jsonl"
    if not source.exists():
        raise StepError(f"validation: {source} is missing; run the pairing step first")
    pairing_stats = _read_stats(ctx.inputs["pairing"] / "stats.json")
    pair_filter = PairFilter(settings)
    dropped: Counter = Counter()
    histograms = {"instruction": LengthHistogram(), "response": LengthHistogram()}
    sample = Reservoir(settings["examples"], settings["seed"])
    seen = {"pairs": 0}

    def candidates() -> Iterator[list[dict]]:
        batch = []
        for pair in ctx.progress(read_jsonl(source), total=pairing_stats.get("pairs"),
                                 desc="pairs", unit="pair"):
            seen["pairs"] += 1
            candidate, reason = pair_filter.prepare(pair)
            if candidate is None:
                dropped[reason] += 1
                continue
            batch.append(candidate)
            if len(batch) == DEDUP_BATCH:
                yield batch
                batch = []
        yield batch

    def kept_pairs() -> Iterator[dict]:
        for batch in candidates():
            for kept in pair_filter.deduplicate(batch, dropped):
                histograms["instruction"].add(len(kept["instruction"]))
                histograms["response"].add(len(kept["response"]))
                sample.add(kept)
                yield kept

    kept = write_jsonl(ctx.out_dir / "pairs.jsonl", kept_pairs())
    stats = {"pairs_in": seen["pairs"], "kept": kept, "dropped": dict(dropped.most_common())}
    write_json(ctx.out_dir / "stats.json", stats)
    report = build_report(pairing_stats.get("upstream", {}).get("cleaning", {}), pairing_stats,
                          stats, {k: h.as_dict() for k, h in histograms.items()}, sample.items)
    write_json(ctx.out_dir / "data_report.json", report)
    (ctx.out_dir / "data_report.md").write_text(render_markdown(report, ctx.recipe_name),
                                                encoding="utf-8")
    ctx.log(f"{kept} of {seen['pairs']} pairs kept"
            + (f" (dropped: {', '.join(f'{r} {c}' for r, c in dropped.most_common())})"
               if dropped else "") + f"; report: {ctx.run_dir / 'validation' / 'data_report.md'}")
    if not kept:
        raise StepError("validation: no pair is left; see the drop reasons above and loosen "
                        "the validation limits, or pick another pairing.strategy")
    return {"pairs_in": seen["pairs"], "kept": kept}


def _read_stats(path) -> dict:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}
