"""The MXFP4 checkpoint's reload check, on CPU: llm-compressor (as Unsloth runs it) writes GPT-OSS
experts one Linear per expert; the check must load every weight back and generate, in a fresh
process. Runs where llm-compressor is installed (the GPU image carries it), skipped elsewhere."""

from __future__ import annotations

import pytest
from tuned_fixture import copy_run, make_ctx, publish, section_settings

pytest.importorskip("llmcompressor")

from runner.infer.export_check import check_in_subprocess  # noqa: E402
from runner.steps.export import export  # noqa: E402


def mxfp4_checkpoint(merged, out):
    """What Unsloth's quantize step does: data-free MXFP4 of every Linear but lm_head/routers."""
    import torch
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.bfloat16,
                                                 attn_implementation="eager")
    oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme="MXFP4",
                                                     ignore=["lm_head", "re:.*\\.router$"]))
    model.save_pretrained(out, save_compressed=True)
    AutoTokenizer.from_pretrained(merged).save_pretrained(out)
    return out


def test_mxfp4_checkpoint_reloads_every_weight_and_generates(tmp_path):
    run = copy_run(tmp_path)
    ctx = make_ctx(run, "export", section_settings("export", targets=["merged_16bit"], verify=False),
                   ["training"])
    export(ctx)
    merged = publish(ctx) / "merged_16bit"
    checkpoint = mxfp4_checkpoint(merged, tmp_path / "mxfp4")
    record, logits = check_in_subprocess(checkpoint, "What is a list?", 6, tmp_path / "check")
    assert record["new_tokens"] > 0 and logits.shape[-1] > 1000


    # Plain transformers cannot place the per-expert weights (they would stay random); the
    # check's loader gives the experts that layout first, so every weight arrives.
    from transformers import AutoModelForCausalLM

    from runner.infer.export_tools import load_compressed_checkpoint

    _, info = AutoModelForCausalLM.from_pretrained(checkpoint, output_loading_info=True)
    assert any("experts" in key for key in info["missing_keys"])
    model = load_compressed_checkpoint(checkpoint, "cpu")
    assert type(model.model.layers[0].mlp.experts).__name__ == "GptOssLinearExperts"
