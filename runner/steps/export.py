"""export: the trained adapter as lora / merged_16bit / gguf / mxfp4 folders, and a Hub push.

Every target is checked before anything is written (a missing converter, GPU, token or network
stops the step at once with what to do), and every artifact is loaded back and generates from
export.verify_prompt; the merged model's logits must match the adapter model's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from runner.artifacts import write_json
from runner.errors import StepError
from runner.registry import StepContext, step

TARGET_ORDER = ("lora", "merged_16bit", "gguf", "mxfp4", "hub")
# Merged vs base+adapter logits. At float32 the merge must be exact up to float noise (max |diff|).
# At 16 bits the weights are rounded and, in a mixture-of-experts model, a rounded router logit
# can pick another expert for a token, which moves that token's logits a lot while the rest stay
# put: so the 16-bit check bounds the mean |diff| (relative to the largest |logit|) and asks
# most next-token argmaxes to agree.
MAX_DIFF_FP32 = 1e-4
MEAN_DIFF_16BIT = {"bfloat16": 0.01, "float16": 0.005}
MIN_TOP1_AGREEMENT = 0.8
VERIFY_TOKENS = 24


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def merged_dtype(model_settings: dict) -> str:
    return "float16" if model_settings.get("dtype") == "float16" else "bfloat16"


def free_memory() -> None:
    """After `del model`: give its memory back before the next one loads (a 20B model fits a
    GPU only once)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Exporter:
    """What the targets share: the adapter, the tokenizer and the reference logits of
    base + adapter on the verify prompt (kept on the CPU, so no two models are ever loaded)."""

    def __init__(self, ctx: StepContext):
        from runner.infer.generation import load_tokenizer_from, pick_device

        self.ctx = ctx
        self.adapter = ctx.inputs["training"] / "adapter"
        self.device = pick_device()
        self.model_settings = {**ctx.sections["model"], "load_in_4bit": False}
        self.tokenizer = load_tokenizer_from(self.adapter, self.model_settings, ctx.recipe_dir)
        self.reference = None

    def load_tuned(self):
        """Base + adapter at full precision on CPU (float32), the model dtype on a GPU."""
        from runner.infer.generation import load_tuned

        model = load_tuned(self.model_settings, self.adapter, device=self.device,
                           dtype="float32" if self.device == "cpu" else None,
                           base_dir=self.ctx.recipe_dir).eval()
        if self.reference is None:
            self.reference = self.logits(model)
        return model

    def logits(self, model):
        import torch

        _, ids = self.prompt_ids()
        with torch.inference_mode():
            return model(input_ids=ids.to(model.device)).logits.float().cpu()

    def prompt_ids(self):
        from runner.infer.generation import render_prompt

        text = render_prompt(self.tokenizer, self.ctx.settings["verify_prompt"], effort="low")
        return text, self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]

    def verify(self, load, name: str, compare_dtype: str | None = None) -> dict:
        """Load an exported artifact with load(), generate from the verify prompt, compare its
        logits with base + adapter if asked, then free it."""
        model = load().eval()
        report = {"verify": self.check_generates(model, name)}
        if compare_dtype:
            report["logits_vs_adapter"] = self.compare_logits(model, compare_dtype)
        del model
        free_memory()
        return report

    def check_generates(self, model, name: str) -> dict:
        from runner.infer.generation import GenerationSettings, generate

        text, _ = self.prompt_ids()
        settings = GenerationSettings(max_new_tokens=VERIFY_TOKENS, do_sample=False)
        result = generate(model, self.tokenizer, text, settings)
        if result.new_tokens == 0:
            raise StepError(f"the exported {name} loaded but generated nothing from "
                            f"{self.ctx.settings['verify_prompt']!r}")
        self.ctx.log(f"{name}: reloaded, generated {result.new_tokens} tokens")
        return {"prompt": self.ctx.settings["verify_prompt"], "new_tokens": result.new_tokens,
                "final": result.parsed.final, "raw": result.text}

    def logit_distance(self, actual) -> dict:
        """How far logits on the verify prompt are from base + adapter's."""
        if self.reference is None:
            self.load_tuned()  # sets the reference; the model itself is dropped at once
            free_memory()
        expected = self.reference
        diff = (expected - actual).abs()
        return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                "logit_scale": max(1.0, float(expected.abs().max())),
                "top1_agreement": float((expected.argmax(-1) == actual.argmax(-1)).float().mean())}

    def compare_logits(self, merged, dtype: str) -> dict:
        """logit_distance, held to the bounds of the merged weights' dtype."""
        result = {"dtype": dtype, **self.logit_distance(self.logits(merged))}
        scale = result["logit_scale"]
        if dtype == "float32":
            result["tolerance"] = {"max_abs_diff": MAX_DIFF_FP32 * scale}
            ok = result["max_abs_diff"] <= MAX_DIFF_FP32 * scale
        else:
            result["tolerance"] = {"mean_abs_diff": MEAN_DIFF_16BIT[dtype] * scale,
                                   "top1_agreement": MIN_TOP1_AGREEMENT}
            ok = (result["mean_abs_diff"] <= MEAN_DIFF_16BIT[dtype] * scale
                  and result["top1_agreement"] >= MIN_TOP1_AGREEMENT)
        if not ok:
            raise StepError(f"the merged model ({dtype}) disagrees with base + adapter on "
                            f"{self.ctx.settings['verify_prompt']!r}: {result}; the merge is broken")
        return result


def export_lora(ex: Exporter, out: Path) -> dict:
    from runner.infer.generation import load_path

    shutil.copytree(ex.adapter, out)
    weights = sum(p.stat().st_size for p in out.glob("adapter_model.*"))
    ex.ctx.log(f"lora: adapter + tokenizer, {folder_size(out) / 1e6:.2f} MB")
    report = {"path": "lora", "size_bytes": folder_size(out), "adapter_bytes": weights}
    if ex.ctx.settings["verify"]:
        report.update(ex.verify(lambda: load_path(out, device=ex.device)[0], "lora adapter"))
    return report


def write_merged(ex: Exporter, out: Path, dtype: str) -> dict | None:
    """Merge and save at 16 bits; on CPU the float32 merge is first checked to be exact."""
    import torch
    from peft import PeftModel

    model = ex.load_tuned()
    merged = model.merge_and_unload() if isinstance(model, PeftModel) else model
    exact = None
    if ex.ctx.settings["verify"] and merged.dtype == torch.float32:
        exact = ex.compare_logits(merged, "float32")
    merged.to(getattr(torch, dtype)).save_pretrained(out, max_shard_size="5GB")
    ex.tokenizer.save_pretrained(out)
    del model, merged
    free_memory()
    return exact


def export_merged(ex: Exporter, out: Path) -> dict:
    from runner.infer.generation import load_path

    dtype = merged_dtype(ex.model_settings)
    ex.ctx.log(f"merged_16bit: merging the adapter into the base weights ({dtype})")
    exact = write_merged(ex, out, dtype)
    report = {"path": "merged_16bit", "dtype": dtype, "size_bytes": folder_size(out)}
    if exact:
        report["logits_float32_merge_vs_adapter"] = exact
    if ex.ctx.settings["verify"]:
        full = "float32" if ex.device == "cpu" else None  # compared at the reference's precision
        report.update(ex.verify(lambda: load_path(out, device=ex.device, dtype=full)[0],
                                "merged model", compare_dtype=dtype))
    return report


def export_gguf(ex: Exporter, out: Path) -> dict:
    """GGUF files from the merged 16-bit folder (merged_16bit/, or a scratch merge), each
    reloaded in a fresh process and compared with the merged model (runner/infer/gguf_export.py)."""
    from runner.infer.gguf_export import export_gguf_files

    merged = ex.ctx.out_dir / "merged_16bit"
    scratch = None
    if not merged.is_dir():
        scratch = merged = ex.ctx.out_dir / ".merged-for-gguf"
        write_merged(ex, merged, merged_dtype(ex.model_settings))
    try:
        return export_gguf_files(merged, out, ex.ctx.settings, ex.tokenizer, ex.device, ex.ctx.log,
                                 VERIFY_TOKENS)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def export_mxfp4(ex: Exporter, out: Path) -> dict:
    from runner.infer.export_check import check_in_subprocess
    from runner.infer.export_tools import export_mxfp4 as through_unsloth

    through_unsloth(ex.adapter, out, ex.ctx.out_dir / ".mxfp4-work",
                    int(ex.model_settings.get("max_seq_length", 1024)), ex.ctx.log)
    free_memory()
    report = {"path": "mxfp4", "size_bytes": folder_size(out)}
    if ex.ctx.settings["verify"]:
        scratch = ex.ctx.out_dir / ".mxfp4-check"
        verify, logits = check_in_subprocess(out, ex.ctx.settings["verify_prompt"], VERIFY_TOKENS,
                                              scratch)
        shutil.rmtree(scratch, ignore_errors=True)
        if verify["new_tokens"] == 0:
            raise StepError(f"the exported mxfp4 model loaded but generated nothing from "
                            f"{verify['prompt']!r}")
        ex.ctx.log(f"mxfp4 model: reloaded in a fresh process, generated {verify['new_tokens']} tokens")
        # 4-bit weights move the logits: recorded for the reader, not held to a bound
        report.update(verify=verify, logits_vs_adapter=ex.logit_distance(logits))
    return report


def export_hub(ex: Exporter, out: Path) -> dict:
    from runner.infer.export_tools import push_to_hub

    hub = ex.ctx.settings["hub"]
    folders = {name: ex.ctx.out_dir / name for name in hub["push"]}
    pushed = push_to_hub(hub, folders, f"recipe {ex.ctx.recipe_name}: export", ex.ctx.log)
    out.mkdir()
    write_json(out / "pushed.json", pushed)
    return {"path": "hub/pushed.json", "pushed": pushed}


EXPORTERS = {"lora": export_lora, "merged_16bit": export_merged, "gguf": export_gguf,
             "mxfp4": export_mxfp4, "hub": export_hub}


def trained_model_type(adapter: Path) -> str | None:
    """model_type of the trained model (a full model, or an adapter's local base), if known."""
    import json

    config = adapter / "config.json"
    if not config.is_file() and (adapter / "adapter_config.json").is_file():
        base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
        config = Path(base or "") / "config.json"
    try:
        return json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def preflight(settings: dict, targets: list[str], adapter: Path) -> None:
    """Every reason the export cannot finish, found before anything is written."""
    from runner.infer.export_tools import hub_problems, mxfp4_problems
    from runner.infer.gguf_export import gguf_problems

    problems = []
    if "gguf" in targets:
        problems += gguf_problems(settings["gguf_outtypes"], settings["verify"],
                                  trained_model_type(adapter), adapter / "tokenizer.json")
    if "mxfp4" in targets:
        problems += mxfp4_problems()
    if "hub" in targets:
        problems += hub_problems(settings["hub"], targets)
    if problems:
        raise StepError("export cannot run:\n  - " + "\n  - ".join(problems))


# The model settings export reads (it loads full weights: model.load_in_4bit is not read; the
# adapter comes from training, whose output covers lora and training). export_report.json names
# the run folder's own path (vllm_command), different in every run folder: volatile.
@step("export", inputs=["training"],
      uses=("model.name", "model.revision", "model.max_seq_length", "model.dtype",
            "model.full_finetuning", "model.attn_implementation", "model.tiny"),
      outputs=["export_report.json"], volatile=["export_report.json"])
def export(ctx: StepContext) -> dict:
    """Write each export target into its own folder (lora/, merged_16bit/, gguf/, mxfp4/,
    hub/pushed.json), load each back and generate from verify_prompt; export_report.json says
    sizes, checks and the vLLM command for the merged model."""
    targets = [t for t in TARGET_ORDER if t in ctx.settings["targets"]]
    preflight(ctx.settings, targets, ctx.inputs["training"] / "adapter")
    exporter = Exporter(ctx)
    report = {"targets": {}, "verify_prompt": ctx.settings["verify_prompt"]}
    for target in targets:
        report["targets"][target] = EXPORTERS[target](exporter, ctx.out_dir / target)
    if "merged_16bit" in targets:
        from runner.infer.serve import vllm_command
        report["vllm_command"] = vllm_command(ctx.run_dir / ctx.step / "merged_16bit",
                                              ctx.recipe_name)
        ctx.log(f"production serving: {report['vllm_command']}")
    write_json(ctx.out_dir / "export_report.json", report)
    metrics = {f"{t}_bytes": r["size_bytes"] for t, r in report["targets"].items() if "size_bytes" in r}
    for outtype, file in report["targets"].get("gguf", {}).get("files", {}).items():
        if "check" in file:
            metrics[f"gguf_{outtype}_top1_agreement"] = file["check"]["top1_agreement"]
            metrics[f"gguf_{outtype}_token_agreement"] = file["check"]["token_agreement"]
    return metrics
