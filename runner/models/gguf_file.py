"""`model.name: path/to/model.gguf`: a GGUF file, converted once into the model cache as safetensors.

transformers reads GGUF through the `gguf` package, dequantizing every tensor (tens of seconds);
the converted folder reloads in well under a second. Its cache key is the file's content hash, so
a changed file converts again and a renamed one does not. Conversion happens under a file lock
(two runs converting at once: one converts, the other waits and reuses it) into a temporary
folder that is renamed into place only after its completion record is written, so a killed
conversion leaves nothing that looks complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from runner.errors import StepError

LOCAL = True
DONE = "recipe_model.json"  # written last: its presence means the folder is complete
# Part of the cache key: a change to how a file is converted must not reuse old conversions.
# 2: SmolLM2's ("smollm") tokenizer is rebuilt as the byte-level BPE it was trained with.
CONVERTER_VERSION = 2


def matches(name: str, base_dir: Path) -> bool:
    return name.lower().endswith(".gguf")


def _file(model_settings: dict, base_dir: Path) -> Path:
    return (base_dir / str(model_settings["name"]).strip()).expanduser().resolve()


def offline_problem(model_settings: dict, base_dir: Path) -> str | None:
    path = _file(model_settings, base_dir)
    if not path.is_file():
        return (f"model.name {model_settings['name']!r}: GGUF file {path} does not exist "
                "(relative paths start at the recipe's folder)")
    return None


def resolve(model_settings: dict, base_dir: Path) -> str:
    problem = offline_problem(model_settings, base_dir)
    if problem:
        raise StepError(problem)
    return str(converted_folder(_file(model_settings, base_dir)))


def content_hash(path: Path) -> str:
    """sha256 of the file, remembered per (path, size, mtime) so a cached load does not re-read it."""
    from runner.models.sources import cache_root

    stat = path.stat()
    memo_file = cache_root() / "models" / ".gguf-hashes.json"
    stamp = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        memo = json.loads(memo_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    if stamp in memo:
        return memo[stamp]
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    memo[stamp] = digest
    memo_file.parent.mkdir(parents=True, exist_ok=True)
    scratch = memo_file.with_name(f".gguf-hashes.{os.getpid()}.tmp")
    scratch.write_text(json.dumps(memo, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(scratch, memo_file)
    return digest


def is_complete(folder: Path) -> bool:
    try:
        return json.loads((folder / DONE).read_text(encoding="utf-8"))["complete"] is True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def converted_folder(gguf: Path) -> Path:
    """The cache folder holding `gguf` as a safetensors model, converting it first if needed."""
    from runner.models.sources import cache_root

    digest = content_hash(gguf)
    models = cache_root() / "models"
    final = models / _folder_name(gguf, digest)
    if is_complete(final):
        return final
    with _locked(models / ".locks" / f"{final.name}.lock"):
        if is_complete(final):  # another run converted it while we waited
            return final
        for stale in models.glob(f".tmp-{final.name}-*"):  # dead conversions (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        scratch = models / f".tmp-{final.name}-{os.getpid()}"
        try:
            _convert(gguf, scratch, digest)
            shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover
            os.rename(scratch, final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return final


def _folder_name(gguf: Path, digest: str) -> str:
    return f"gguf-{_slug(gguf.stem)}-{digest[:16]}-v{CONVERTER_VERSION}"


def _slug(stem: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)[:60]


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert(gguf: Path, out: Path, digest: str) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runner.console import log
    from runner.models.gguf_reading import one_parse_per_file

    log(f"converting {gguf.name} to safetensors once (dequantizing every tensor; later loads "
        "read the converted copy)")
    folder, name = str(gguf.parent), gguf.name
    try:
        with one_parse_per_file():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, ImportError) as error:
        raise StepError(f"cannot read GGUF file {gguf}: {error}\n    hint: transformers reads "
                        "GGUF through the `gguf` package (make install); only architectures "
                        "that transformers can load from GGUF work") from error
    # The loader leaves its GGUF quantizer attached, and save_pretrained refuses a quantized
    # model; the weights are already plain float32 tensors, so the marker can go.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _align_special_tokens(tokenizer, model)
    _restore_byte_level(tokenizer, gguf)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {"complete": True, "source": str(gguf), "sha256": digest,
              "converter_version": CONVERTER_VERSION, "transformers": transformers.__version__,
              "dtype": "float32", "parameters": sum(p.numel() for p in model.parameters())}
    (out / DONE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _align_special_tokens(tokenizer, model) -> None:
    """Make the tokenizer's eos/pad the model's own.

    transformers' GGUF tokenizer conversion can name another token as eos than the file's model
    metadata does (SmolLM2: `<|im_start|>` instead of `<|im_end|>`); the config and generation
    config hold the ids the model was trained to stop on.
    """
    config = model.config
    for attribute in ("eos_token_id", "pad_token_id"):
        wanted = getattr(config, attribute, None)
        wanted = wanted[0] if isinstance(wanted, list) and wanted else wanted
        if isinstance(wanted, int) and 0 <= wanted < len(tokenizer):
            token = tokenizer.convert_ids_to_tokens(wanted)
            setattr(tokenizer, attribute.removesuffix("_id"), token)


def _restore_byte_level(tokenizer, gguf: Path) -> None:
    """Give a GGUF "smollm" tokenizer back the byte-level BPE pipeline SmolLM2 was trained with.

    transformers rebuilds it from the file as a byte-fallback BPE without the byte-level
    pre-tokenizer and decoder. Text mostly encodes the same, but the saved tokenizer.json is not
    the model's own, and llama.cpp's converter (the gguf export) cannot map it back to a
    vocabulary type and refuses it. The original tokenizer.json splits digits one by one, then
    applies GPT-2's byte-level regex without a prefix space.
    """
    if _gguf_pre_tokenizer(gguf) != "smollm" or not getattr(tokenizer, "is_fast", False):
        return
    from tokenizers import decoders, pre_tokenizers

    backend = tokenizer.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    backend.decoder = decoders.ByteLevel()
    backend.model.byte_fallback = False


def _gguf_pre_tokenizer(gguf: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields.get("tokenizer.ggml.pre")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def ready_folder(model_settings: dict, base_dir: Path) -> Path | None:
    path = _file(model_settings, base_dir)
    return converted_if_ready(path) if path.is_file() else None


def converted_if_ready(gguf: Path) -> Path | None:
    """The converted folder if a conversion already finished (nothing is converted here)."""
    from runner.models.sources import cache_root

    folder = cache_root() / "models" / _folder_name(gguf, content_hash(gguf))
    return folder if is_complete(folder) else None
