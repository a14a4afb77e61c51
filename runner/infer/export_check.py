"""Load an exported checkpoint in a fresh interpreter and generate from a prompt.

The MXFP4 export runs through Unsloth, whose import patches transformers' GPT-OSS layers with
compiled code that cannot trace compressed-tensors' weight handling; like Unsloth's own quantize
step, the check therefore runs in a process of its own (as a user loading the folder would).

    python -m runner.infer.export_check CHECKPOINT --prompt "What is a list?" --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from runner.errors import StepError


def check_in_subprocess(checkpoint: Path, prompt: str, max_new_tokens: int, work: Path) -> tuple[dict, object]:
    """(generation record, logits on the prompt) of `checkpoint`, loaded in a fresh process."""
    import torch

    work.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the runner package
    search_path = os.pathsep.join([root, *(p for p in sys.path if p and Path(p).is_dir())])
    done = subprocess.run([sys.executable, "-m", "runner.infer.export_check", str(checkpoint),
                           "--prompt", prompt, "--max-new-tokens", str(max_new_tokens),
                           "--out", str(work)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": search_path})
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise StepError(f"loading {checkpoint} back in a fresh process failed:\n{tail}")
    record = json.loads((work / "generation.json").read_text())
    return record, torch.load(work / "logits.pt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.infer.export_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", required=True, help="folder for generation.json and logits.pt")
    args = parser.parse_args(argv)

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
