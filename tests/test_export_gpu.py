"""On a CUDA GPU with Unsloth: an Unsloth LoRA adapter on a tiny GPT-OSS exported as lora,
merged_16bit and mxfp4 (Unsloth merge + llm-compressor MXFP4); each reloads and generates."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
unsloth = pytest.importorskip("unsloth")  # imported before transformers, as Unsloth asks

from tuned_fixture import TINY, make_ctx, publish, section_settings, tiny_model_dir  # noqa: E402

from runner.artifacts import read_json, write_jsonl  # noqa: E402
from runner.steps.export import export  # noqa: E402

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def unsloth_run(root):
    """runs/tiny/training as the unsloth backend leaves it, with non-zero adapter weights."""
    from unsloth import FastLanguageModel

    run = root / "runs" / "tiny"
    adapter = run / "training" / "adapter"
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(tiny_model_dir()), max_seq_length=256, load_in_4bit=False, dtype=None)
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, lora_dropout=0,
                                             target_modules=PROJECTIONS, bias="none",
                                             use_gradient_checkpointing="unsloth", random_state=3407)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    write_jsonl(run / "training" / "eval.jsonl", [])
    del model
    return run


def test_unsloth_adapter_exports_to_lora_merged_and_mxfp4(tmp_path):
    pytest.importorskip("llmcompressor")
    run = unsloth_run(tmp_path)
    TINY["max_seq_length"] = 256
    ctx = make_ctx(run, "export", section_settings(
        "export", targets=["lora", "merged_16bit", "mxfp4"]), ["training"])
    metrics = export(ctx)
    out = publish(ctx)
    report = read_json(out / "export_report.json")
    print(json.dumps(report, indent=1, default=str)[:6000])
    for target in ("lora", "merged_16bit", "mxfp4"):
        assert report["targets"][target]["verify"]["new_tokens"] > 0, target
    config = read_json(out / "mxfp4" / "config.json")
    assert config["quantization_config"]["format"].startswith("mxfp4")
    assert report["targets"]["merged_16bit"]["logits_vs_adapter"]["top1_agreement"] >= 0.8
    assert not (out / ".mxfp4-work").exists() and metrics["mxfp4_bytes"] > 0
