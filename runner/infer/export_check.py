"""Load exported checkpoints in a fresh interpreter, as a user would, and generate from them.

MXFP4: the export runs through Unsloth, whose import patches transformers' GPT-OSS layers with
compiled code that cannot trace compressed-tensors' weight handling; like Unsloth's own quantize
step, the check therefore runs in a process of its own. GGUF: each file is loaded by
transformers' GGUF loader (model and tokenizer) in a process that never saw the merged model;
its greedy tokens and argmaxes on the merged model's prompts come back and are compared here.

    python -m runner.infer.export_check CHECKPOINT --prompt "What is a list?" --out DIR
    python -m runner.infer.export_check --gguf-job JOB.json --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from runner.errors import StepError


def _fresh_process(arguments: list[str], what: str) -> None:
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the runner package
    search_path = os.pathsep.join([root, *(p for p in sys.path if p and Path(p).is_dir())])
    done = subprocess.run([sys.executable, "-m", "runner.infer.export_check", *arguments],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": search_path})
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise StepError(f"loading {what} back in a fresh process failed:\n{tail}")


def check_in_subprocess(checkpoint: Path, prompt: str, max_new_tokens: int, work: Path) -> tuple[dict, object]:
    """(generation record, logits on the prompt) of a compressed `checkpoint`, in a fresh process."""
    import torch

    work.mkdir(parents=True, exist_ok=True)
    _fresh_process([str(checkpoint), "--prompt", prompt, "--max-new-tokens", str(max_new_tokens),
                    "--out", str(work)], str(checkpoint))
    record = json.loads((work / "generation.json").read_text())
    return record, torch.load(work / "logits.pt")


def check_gguf_in_subprocess(job: dict, work: Path) -> dict:
    """Per GGUF file of job["files"] (in job["folder"]): load time, whether its chat template
    matches, and per prompt its tokenizer's ids, greedy ids, argmaxes and answer; or the error
    that loading it raised."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "job.json").write_text(json.dumps(job))
    _fresh_process(["--gguf-job", str(work / "job.json"), "--out", str(work)],
                   f"the GGUF files in {job['folder']}")
    return json.loads((work / "gguf_check.json").read_text())


# --- GGUF agreement: the same greedy generation and argmaxes on both sides, compared ------

def greedy_ids(model, input_ids: list[int], max_new_tokens: int, stop_ids: list[int]) -> list[int]:
    """The new token ids of a greedy generation (the same call on both sides of the check)."""
    import torch

    ids = torch.tensor([input_ids], device=model.device)
    with torch.inference_mode():
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                top_p=None, top_k=None, eos_token_id=stop_ids or None,
                                pad_token_id=stop_ids[0] if stop_ids else None)
    return output[0, ids.shape[1]:].tolist()


def top1_ids(model, ids: list[int]) -> list[int]:
    """The model's argmax next token at every position of ids (teacher-forced)."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=model.device)).logits
    return logits[0].argmax(-1).tolist()


def reference_answers(model, tokenizer, prompts: list[str], stop_ids: list[int],
                      max_new_tokens: int) -> list[dict]:
    """What the merged model does on each prompt: its ids, greedy continuation and argmaxes."""
    from runner.infer.generation import render_prompt

    answers = []
    for prompt in prompts:
        text = render_prompt(tokenizer, prompt, effort="low")
        input_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        continuation = greedy_ids(model, input_ids, max_new_tokens, stop_ids)
        answers.append({"prompt": prompt, "text": text, "input_ids": input_ids,
                        "reference_ids": continuation,
                        "reference_top1": top1_ids(model, input_ids + continuation),
                        "reference_answer": tokenizer.decode(continuation, skip_special_tokens=False)})
    return answers


def _common_prefix(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


def agreement(reference: list[dict], measured: dict, outtype: str) -> dict:
    """How far one GGUF file's tokens agree with the merged model's, and whether that passes."""
    from runner.infer.gguf_export import MIN_TOP1_AGREEMENT

    rows, matched_top1, positions, matched_tokens, compared_tokens = [], 0, 0, 0, 0
    for ref, got in zip(reference, measured["prompts"], strict=True):
        top1 = sum(x == y for x, y in zip(ref["reference_top1"], got["top1"], strict=True))
        same = sum(x == y for x, y in zip(ref["reference_ids"], got["greedy_ids"], strict=False))
        longest = max(len(ref["reference_ids"]), len(got["greedy_ids"]), 1)
        matched_top1, positions = matched_top1 + top1, positions + len(got["top1"])
        matched_tokens, compared_tokens = matched_tokens + same, compared_tokens + longest
        rows.append({"prompt": ref["prompt"], "token_agreement": round(same / longest, 4),
                     "common_prefix": _common_prefix(ref["reference_ids"], got["greedy_ids"]),
                     "reference_tokens": len(ref["reference_ids"]), "gguf_tokens": len(got["greedy_ids"]),
                     "top1_agreement": round(top1 / max(len(got["top1"]), 1), 4),
                     "reference_answer": ref["reference_answer"], "gguf_answer": got["answer"],
                     "tokenizer_matches": got["tokenizer_ids"] == ref["input_ids"]})
    result = {"top1_agreement": round(matched_top1 / max(positions, 1), 4), "positions": positions,
              "min_top1_agreement": MIN_TOP1_AGREEMENT[outtype],
              "token_agreement": round(matched_tokens / max(compared_tokens, 1), 4),
              "common_prefix": [row["common_prefix"] for row in rows],
              "tokenizer_matches": all(row["tokenizer_matches"] for row in rows),
              "chat_template_matches": measured["chat_template_matches"],
              "load_s": measured["load_s"], "prompts": rows}
    result["passed"] = (result["top1_agreement"] >= result["min_top1_agreement"]
                        and result["tokenizer_matches"] and result["chat_template_matches"])
    return result


def failure_message(name: str, result: dict) -> str:
    """Why a GGUF file failed its check, for the StepError."""
    reasons = []
    if result["top1_agreement"] < result["min_top1_agreement"]:
        reasons.append(f"its next-token argmax agrees with the merged model's at "
                       f"{result['top1_agreement']:.1%} of {result['positions']} positions "
                       f"(at least {result['min_top1_agreement']:.0%} expected)")
    if not result["tokenizer_matches"]:
        reasons.append("its tokenizer encodes the verify prompts to other ids than the model's "
                       "tokenizer (the converter wrote another kind of vocabulary)")
    if not result["chat_template_matches"]:
        reasons.append("its chat template differs from the model's")
    return (f"{name} is broken: {'; '.join(reasons)}. Greedy tokens agree "
            f"{result['token_agreement']:.0%}, common prefixes {result['common_prefix']}.")


def default_template(tokenizer) -> str | None:
    """The tokenizer's default chat template (named templates come as a dict)."""
    template = tokenizer.chat_template
    return template.get("default") if isinstance(template, dict) else template


def _check_compressed(args) -> None:
    import torch

    from runner.infer.export_tools import load_compressed_checkpoint
    from runner.infer.generation import (
        GenerationSettings,
        generate,
        load_tokenizer_from,
        pick_device,
        render_prompt,
    )

    path, out = Path(args.checkpoint), Path(args.out)
    model = load_compressed_checkpoint(path, pick_device()).eval()
    tokenizer = load_tokenizer_from(path)
    text = render_prompt(tokenizer, args.prompt, effort="low")
    result = generate(model, tokenizer, text,
                      GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=False))
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        torch.save(model(input_ids=ids.to(model.device)).logits.float().cpu(), out / "logits.pt")
    (out / "generation.json").write_text(json.dumps(
        {"prompt": args.prompt, "new_tokens": result.new_tokens, "final": result.parsed.final,
         "raw": result.text}, ensure_ascii=False))


def _check_gguf_file(job: dict, name: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runner.infer.generation import pick_device
    from runner.models.gguf_reading import one_parse_per_file

    started = time.perf_counter()
    with one_parse_per_file():
        model = AutoModelForCausalLM.from_pretrained(job["folder"], gguf_file=name).to(pick_device()).eval()
        tokenizer = AutoTokenizer.from_pretrained(job["folder"], gguf_file=name)
    loaded = round(time.perf_counter() - started, 2)
    prompts = []
    for entry in job["prompts"]:
        continuation = greedy_ids(model, entry["input_ids"], job["max_new_tokens"], job["stop_ids"])
        prompts.append({"tokenizer_ids": tokenizer(entry["text"], add_special_tokens=False)["input_ids"],
                        "greedy_ids": continuation,
                        "top1": top1_ids(model, entry["input_ids"] + entry["reference_ids"]),
                        "answer": tokenizer.decode(continuation, skip_special_tokens=False)})
    return {"load_s": loaded, "prompts": prompts,
            "chat_template_matches": default_template(tokenizer) == job["chat_template"]}


def _check_gguf(args) -> None:
    job = json.loads(Path(args.gguf_job).read_text())
    results = {}
    for name in job["files"]:
        try:
            results[name] = _check_gguf_file(job, name)
        except (OSError, ValueError, KeyError, RuntimeError, IndexError, TypeError) as error:
            # a truncated or garbled file fails in the reader in many ways; all of them mean
            # this file cannot be used, and the step names it
            results[name] = {"error": f"{type(error).__name__}: {error}"}
    (Path(args.out) / "gguf_check.json").write_text(json.dumps(results, ensure_ascii=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.infer.export_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="a compressed-tensors (MXFP4) checkpoint")
    parser.add_argument("--prompt", help="prompt for the checkpoint")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--gguf-job", help="JSON job of the GGUF check (written by the export step)")
    parser.add_argument("--out", required=True, help="folder for the results")
    args = parser.parse_args(argv)
    if args.gguf_job:
        _check_gguf(args)
    elif args.checkpoint and args.prompt:
        _check_compressed(args)
    else:
        parser.error("give CHECKPOINT with --prompt, or --gguf-job")
    return 0


if __name__ == "__main__":
    sys.exit(main())
