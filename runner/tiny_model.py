"""The project's own model factory: random-init GPT-OSS or Llama models of any shape, offline.

Tests, the CPU demo and GPU benchmarks at real shapes use these models; nothing is downloaded.
The tokenizer is a byte-level BPE trained here on Python standard-library docstrings, with
GPT-OSS's special tokens, and it carries the official harmony chat template (the copy shipped in
trl) so rendered conversations are byte-identical to what the real GPT-OSS tokenizer produces.

    python -m runner.tiny_model --family llama --preset llama-3.2-1b --out DIR
    python -m runner.tiny_model --family gpt_oss --preset gpt-oss-20b --set num_hidden_layers=4 --out DIR
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

# Bump when the factory's output changes for the same shape (part of the cache key).
FACTORY_VERSION = 1

# GPT-OSS's special tokens (names as in the o200k_harmony encoding).
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>",
                  "<|channel|>", "<|start|>", "<|end|>", "<|message|>", "<|call|>",
                  "<|endofprompt|>")
BOS, EOS, PAD = "<|startoftext|>", "<|return|>", "<|endoftext|>"
# BPE on a few MB of docstrings cannot usefully learn 200k merges; real-shape models keep their
# full embedding size and the tokenizer just uses the first ids.
TOKENIZER_VOCAB_CAP = 8192

# Standard-library files whose docstrings form the tokenizer corpus (deterministic per Python).
CORPUS_FILES = ("textwrap.py", "string.py", "argparse.py", "json/__init__.py", "pathlib.py",
                "collections/__init__.py", "functools.py", "typing.py", "csv.py",
                "dataclasses.py", "enum.py", "contextlib.py", "random.py", "statistics.py",
                "shutil.py", "subprocess.py", "logging/__init__.py", "asyncio/tasks.py",
                "datetime.py", "inspect.py", "unittest/case.py", "difflib.py", "heapq.py")

# Llama 3.x long-context RoPE scaling, shared by the Llama presets.
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

PRESETS = {
    "gpt_oss": {
        "gpt-oss-20b": dict(num_hidden_layers=24, hidden_size=2880, intermediate_size=2880,
                            num_local_experts=32, num_experts_per_tok=4, num_attention_heads=64,
                            num_key_value_heads=8, head_dim=64, vocab_size=201088,
                            sliding_window=128, max_position_embeddings=131072),
        "gpt-oss-120b": dict(num_hidden_layers=36, hidden_size=2880, intermediate_size=2880,
                             num_local_experts=128, num_experts_per_tok=4, num_attention_heads=64,
                             num_key_value_heads=8, head_dim=64, vocab_size=201088,
                             sliding_window=128, max_position_embeddings=131072),
    },
    "llama": {
        "llama-3.2-1b": dict(num_hidden_layers=16, hidden_size=2048, intermediate_size=8192,
                             num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                             vocab_size=128256, tie_word_embeddings=True, rms_norm_eps=1e-5,
                             max_position_embeddings=131072,
                             rope_parameters=LLAMA3_ROPE),
        "llama-3.2-3b": dict(num_hidden_layers=28, hidden_size=3072, intermediate_size=8192,
                             num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                             vocab_size=128256, tie_word_embeddings=True, rms_norm_eps=1e-5,
                             max_position_embeddings=131072,
                             rope_parameters=LLAMA3_ROPE),
    },
}
DEFAULT_SHAPE = dict(num_hidden_layers=2, hidden_size=64, num_local_experts=4, vocab_size=2048)


def harmony_template() -> str:
    """The official GPT-OSS chat template, as shipped in the installed trl."""
    import trl
    return (Path(trl.__file__).parent / "chat_templates" / "gptoss.jinja").read_text(encoding="utf-8")


def _docstrings(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def tokenizer_corpus() -> list[str]:
    """Docstrings of a fixed set of stdlib modules plus the template's own literal text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [harmony_template()]
    for name in CORPUS_FILES:
        if (stdlib / name).is_file():
            texts.extend(_docstrings(stdlib / name))
    return texts


def train_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer with GPT-OSS special tokens and the harmony template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # Byte-level BPE is lossless: decode(encode(text)) == text for any text, so the rendered
    # template survives tokenization byte for byte.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=min(vocab_size, TOKENIZER_VOCAB_CAP),
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        clean_up_tokenization_spaces=False, chat_template=harmony_template(),
        model_max_length=131072)


def model_config(family: str, tokenizer, **shape):
    """A transformers config of the given family; unspecified fields get small-model values."""
    from transformers import GptOssConfig, LlamaConfig

    shape = {**DEFAULT_SHAPE, **shape}
    hidden = shape["hidden_size"]
    head_dim = shape.pop("head_dim", 64 if hidden >= 256 else 16)
    heads = shape.pop("num_attention_heads", max(1, hidden // head_dim))
    common = dict(head_dim=head_dim, num_attention_heads=heads,
                  num_key_value_heads=shape.pop("num_key_value_heads", max(1, min(8, heads // 2))),
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    shape["vocab_size"] = max(shape["vocab_size"], len(tokenizer))
    if family == "gpt_oss":
        shape.setdefault("intermediate_size", hidden)
        shape.setdefault("num_experts_per_tok", min(4, max(1, shape["num_local_experts"] // 2)))
        shape.setdefault("max_position_embeddings", 131072)
        return GptOssConfig(**common, **shape)
    if family == "llama":
        shape.pop("num_local_experts", None)
        shape.setdefault("intermediate_size", 4 * hidden)
        shape.setdefault("max_position_embeddings", 131072)
        return LlamaConfig(**common, **shape)
    raise ValueError(f"unknown tiny model family {family!r}: use gpt_oss or llama")


def build_tiny(out_dir: str | os.PathLike, family: str = "gpt_oss", *, seed: int = 0,
               preset: str | None = None, dtype: str = "float32", device: str = "cpu",
               **shape_overrides) -> Path:
    """Write a random-init model + trained tokenizer into out_dir (save_pretrained layout).

    shape_overrides are config fields (num_hidden_layers=4, ...) applied over the preset.
    Writes to a temporary sibling first and renames it, so a crash never leaves half a model.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if preset is not None and preset not in PRESETS.get(family, {}):
        raise ValueError(f"unknown preset {preset!r} for {family}: "
                         f"choose from {sorted(PRESETS.get(family, {}))}")
    shape = {**(PRESETS[family][preset] if preset else {}), **shape_overrides}
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would make a shared cache unreadable to others
    try:
        tokenizer = train_tokenizer(shape.get("vocab_size", DEFAULT_SHAPE["vocab_size"]))
        config = model_config(family, tokenizer, **shape)
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in (EOS, PAD, "<|call|>")])
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "tiny_model.json").write_text(json.dumps(
            {"family": family, "preset": preset, "seed": seed, "dtype": dtype,
             "shape": shape, "factory_version": FACTORY_VERSION}, indent=2, default=str))
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _publish(tmp: Path, out_dir: Path) -> None:
    """Rename into place; if another process finished the same build first, keep theirs."""
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if not (out_dir / "tiny_model.json").is_file():
            raise


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.tiny_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(PRESETS), default="gpt_oss")
    parser.add_argument("--preset", help="real shape: " + ", ".join(
        f"{name} ({family})" for family in PRESETS for name in PRESETS[family]))
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="config field override, e.g. num_hidden_layers=4 (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default=None, help="float32 (default without preset) or bfloat16")
    parser.add_argument("--device", default="cpu", help="where to initialise the weights (cuda: faster)")
    parser.add_argument("--out", required=True, help="folder to create")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    overrides = {key: _parse_value(value) for key, value in overrides.items()}
    dtype = args.dtype or ("bfloat16" if args.preset else "float32")
    if Path(args.out).exists():
        print(f"{args.out} already exists; remove it or pick another --out", file=sys.stderr)
        return 1
    path = build_tiny(args.out, args.family, seed=args.seed, preset=args.preset, dtype=dtype,
                      device=args.device, **overrides)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
