"""The validation step: final filters over pairs, and the data report of the whole data half."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

from runner.artifacts import read_json, write_json
from runner.errors import StepError
from runner.registry import StepContext, step

# Candidates checked against the seen digests at once (numpy, in order): up to this many, or
# this many characters of pairs held, whichever comes first.
DEDUP_BATCH = 50_000
DEDUP_BATCH_CHARS = 32_000_000


@step("validation", inputs=["pairing"],
      outputs=["pairs.jsonl", "stats.json", "data_report.md", "data_report.json"], version=2)
def validate_pairs(ctx: StepContext) -> dict:
    """Final filters, in order: the original's charset filter (`charset_filter`, off: it
    destroys code and non-English text), length limits (longer than `min_*_chars`, at most
    `max_*_chars`), exact dedup of the normalized instruction (`dedup`), near-duplicate removal
    of instruction + response with MinHash LSH (`near_dedup`); `workers` > 1 runs the per-pair
    checks in a process pool (dedup stays in order). Writes the kept pairs, drop
    counts per reason, and data_report.md/json: counts per stage with drop reasons, the
    data-quality scorecard (answers ending mid-sentence or on ":", markup residue, URLs, code
    blocks, instruction diversity, duplicate rates, lengths), length histograms and `examples`
    random pairs (`seed`)."""
    from runner.data.pair_checks import Deduplicator
    from runner.data.scorecard import summary_line

    settings = ctx.settings
    source = ctx.inputs["pairing"] / "pairs.jsonl"
    if not source.exists():
        raise StepError(f"validation: {source} is missing; run the pairing step first")
    pairing_stats = _read_stats(ctx.inputs["pairing"] / "stats.json")
    tally = _Tally(settings)
    dedup = Deduplicator(settings)
    with open(ctx.out_dir / "pairs.jsonl", "w", encoding="utf-8") as out:
        for batch in _candidate_batches(ctx, source, pairing_stats.get("pairs"), tally):
            kept = list(dedup.kept(batch, tally.dropped))
            out.writelines(candidate[0] + "\n" for candidate in kept)
            tally.keep(kept)
    scorecard = tally.scorecard.as_dict(tally.pairs_in, dedup.exact_repeats,
                                        tally.dropped["near_duplicate"] if dedup.near else None)
    stats = {"pairs_in": tally.pairs_in, "kept": tally.kept,
             "dropped": dict(tally.dropped.most_common()), "scorecard": scorecard}
    write_json(ctx.out_dir / "stats.json", stats)
    _write_report(ctx, pairing_stats, stats, tally)
    ctx.log(f"scorecard: {summary_line(scorecard)}")
    reasons = ", ".join(f"{r} {c}" for r, c in tally.dropped.most_common())
    ctx.log(f"{tally.kept} of {tally.pairs_in} pairs kept" + (f" (dropped: {reasons})" if reasons
            else "") + f"; report: {ctx.run_dir / 'validation' / 'data_report.md'}")
    if not tally.kept:
        raise StepError("validation: no pair is left; see the drop reasons above and loosen "
                        "the validation limits, or pick another pairing.strategy")
    return {"pairs_in": tally.pairs_in, "kept": tally.kept}


class _Tally:
    """Counts, drop reasons, length histograms and the random examples, all streamed."""

    def __init__(self, settings: dict):
        from runner.data.data_report import LengthHistogram, Reservoir
        from runner.data.scorecard import Scorecard

        self.pairs_in = self.kept = 0
        self.dropped: Counter = Counter()
        self.histograms = {"instruction": LengthHistogram(), "response": LengthHistogram()}
        self.sample = Reservoir(settings["examples"], settings["seed"])
        self.scorecard = Scorecard(settings["seed"])

    def keep(self, candidates: list[tuple]) -> None:
        self.kept += len(candidates)
        self.histograms["instruction"].add_many([c[2] for c in candidates])
        self.histograms["response"].add_many([c[3] for c in candidates])
        for candidate in candidates:
            self.sample.add(candidate[0])
            self.scorecard.add(candidate[5], candidate[6], candidate[7], (candidate[2], candidate[3]))


def _candidate_batches(ctx: StepContext, source, total: int | None, tally: _Tally
                       ) -> Iterator[list]:
    """Per-pair checks (in `workers` processes), grouped in order for the dedup."""
    from runner.data.pair_checks import check_line, init_worker
    from runner.data.parallel import ordered_map, worker_count

    batch, held = [], 0
    with open(source, encoding="utf-8") as lines:
        checked = ordered_map(check_line, (line for line in lines if line.strip()),
                              workers=worker_count(ctx.settings["workers"]),
                              initializer=init_worker, initargs=(ctx.settings,), chunksize=2000)
        for result in ctx.progress(checked, total=total, desc="pairs", unit="pair"):
            tally.pairs_in += 1
            if isinstance(result, str):
                tally.dropped[result] += 1
                continue
            batch.append(result)
            held += len(result[0]) + len(result[4] or "")
            if len(batch) == DEDUP_BATCH or held > DEDUP_BATCH_CHARS:
                yield batch
                batch, held = [], 0
    yield batch


def _write_report(ctx: StepContext, pairing_stats: dict, stats: dict, tally: _Tally) -> None:
    from runner.data.data_report import build_report, render_markdown

    report = build_report(pairing_stats.get("upstream", {}).get("cleaning", {}), pairing_stats,
                          stats, {k: h.as_dict() for k, h in tally.histograms.items()},
                          [json.loads(line) for line in tally.sample.items], stats["scorecard"])
    write_json(ctx.out_dir / "data_report.json", report)
    (ctx.out_dir / "data_report.md").write_text(render_markdown(report, ctx.recipe_name),
                                                encoding="utf-8")


def _read_stats(path) -> dict:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}
