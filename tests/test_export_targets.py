"""The export step on the tiny model: lora and merged_16bit written, reloaded, logits checked;
targets that need what this machine lacks stop at once with what to do, before writing anything;
GGUF of the tiny model's home-made tokenizer is refused by the converter, saying why."""

from __future__ import annotations

import importlib.util
import socket
import time

import pytest
import torch
from tuned_fixture import copy_run, make_ctx, publish, section_settings

from runner.artifacts import read_json
from runner.errors import StepError
from runner.steps.export import export


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run = copy_run(tmp_path_factory.mktemp("export"))
    ctx = make_ctx(run, "export", section_settings("export", targets=["merged_16bit", "lora"]),
                   ["training"])
    metrics = export(ctx)
    return run, publish(ctx), metrics


def test_lora_and_merged_are_written_with_sizes(exported):
    run, out, metrics = exported
    report = read_json(out / "export_report.json")
    assert list(report["targets"]) == ["lora", "merged_16bit"]
    lora = report["targets"]["lora"]
    assert (out / "lora" / "adapter_config.json").is_file()
    assert (out / "lora" / "tokenizer_config.json").is_file()
    assert 0 < lora["adapter_bytes"] < lora["size_bytes"] == metrics["lora_bytes"]
    merged = report["targets"]["merged_16bit"]
    assert (out / "merged_16bit" / "config.json").is_file() and merged["dtype"] == "bfloat16"
    assert merged["size_bytes"] == metrics["merged_16bit_bytes"]
    assert report["vllm_command"].startswith(f"vllm serve {run / 'export' / 'merged_16bit'} ")


def test_every_artifact_was_reloaded_and_generated(exported):
    _, out, _ = exported
    report = read_json(out / "export_report.json")
    for target in ("lora", "merged_16bit"):
        verify = report["targets"][target]["verify"]
        assert verify["prompt"] == "What is a Python list?" and verify["new_tokens"] > 0


def test_merged_and_adapter_models_agree_on_logits(exported):
    """Checked here independently of the step: plain transformers + peft on the written folders."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, out, _ = exported
    tokenizer = AutoTokenizer.from_pretrained(out / "lora")
    ids = tokenizer("def add(a, b): return a + b", return_tensors="pt")["input_ids"]
    base_path = read_json(out / "lora" / "adapter_config.json")["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_path, attn_implementation="eager")
    adapter = PeftModel.from_pretrained(base, out / "lora").eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged_16bit", dtype=torch.float32,
                                                  attn_implementation="eager").eval()
    with torch.inference_mode():
        expected, actual = adapter(input_ids=ids).logits, merged(input_ids=ids).logits
        with adapter.disable_adapter():
            untuned = adapter(input_ids=ids).logits
    scale = float(expected.abs().max())
    assert float((expected - actual).abs().mean()) < 0.01 * scale
    assert float((expected.argmax(-1) == actual.argmax(-1)).float().mean()) >= 0.8
    # ...and the merge really carries the adapter: far from the untuned base.
    assert float((expected - untuned).abs().mean()) > 10 * float((expected - actual).abs().mean())
    checks = read_json(out / "export_report.json")["targets"]["merged_16bit"]
    assert checks["logits_float32_merge_vs_adapter"]["max_abs_diff"] < 1e-4
    assert checks["logits_vs_adapter"]["top1_agreement"] >= 0.8


def failed_export(tmp_path, **values) -> str:
    run = copy_run(tmp_path)
    ctx = make_ctx(run, "export", section_settings("export", **values), ["training"])
    with pytest.raises(StepError) as caught:
        export(ctx)
    assert list(ctx.out_dir.iterdir()) == []  # preflight failed: nothing half-written
    return str(caught.value)


def test_gguf_without_a_converter_names_what_is_missing(tmp_path, monkeypatch):
    from runner.infer import gguf_export

    for name in ("LLAMA_CPP_DIR", "LLAMA_CPP_CONVERTER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(gguf_export, "CONVERTER_FOLDER", "no-converter-here")  # as before make install
    message = failed_export(tmp_path, targets=["lora", "gguf"], gguf_outtypes=["q8_0", "q4_k_m"])
    assert "convert_hf_to_gguf.py" in message and "make install" in message
    assert "LLAMA_CPP_DIR" in message and "q4_k_m needs llama.cpp's llama-quantize" in message


def test_gguf_of_a_tokenizer_trained_here_says_why_the_converter_refuses_it(tmp_path):
    """The tiny model's tokenizer is trained by the project: llama.cpp's converter recognises
    tokenizers by the ids they give a probe text, and refuses one it does not know."""
    run = copy_run(tmp_path)
    ctx = make_ctx(run, "export", section_settings("export", targets=["gguf"]), ["training"])
    with pytest.raises(StepError) as caught:
        export(ctx)
    assert "convert_hf_to_gguf.py (q8_0) failed" in str(caught.value)
    assert "match no model it knows" in str(caught.value)
    assert not (ctx.out_dir / ".merged-for-gguf").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_mxfp4_on_cpu_says_it_needs_a_gpu(tmp_path):
    message = failed_export(tmp_path, targets=["lora", "mxfp4"])
    assert "mxfp4" in message and "CUDA GPU" in message


@pytest.mark.skipif(importlib.util.find_spec("llmcompressor") is not None,
                    reason="checks the message for a missing llm-compressor")
def test_mxfp4_without_llm_compressor_explains_instead_of_installing(tmp_path):
    started = time.monotonic()
    message = failed_export(tmp_path, targets=["mxfp4"])
    assert time.monotonic() - started < 30  # never a pip install attempt, never a hang
    assert "llm-compressor" in message and "pip install llmcompressor" in message
    assert "transformers<=5.10.1" in message and "--no-deps" in message


def test_hub_without_a_token_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("RECIPE_TEST_HUB_TOKEN", raising=False)
    message = failed_export(tmp_path, targets=["lora", "hub"],
                            hub={"repo_id": "me/tiny", "token_env": "RECIPE_TEST_HUB_TOKEN"})
    assert "RECIPE_TEST_HUB_TOKEN" in message


def test_hub_push_of_an_artifact_not_exported_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RECIPE_TEST_HUB_TOKEN", "hf_test")
    message = failed_export(tmp_path, targets=["lora", "hub"],
                            hub={"repo_id": "me/tiny", "token_env": "RECIPE_TEST_HUB_TOKEN",
                                 "push": ["lora", "merged_16bit"]})
    assert "merged_16bit" in message and "export.targets" in message


def test_hub_without_a_network_fails_fast_and_clearly(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on: what "no network" looks like here
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RECIPE_TEST_HUB_TOKEN", "hf_test")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    started = time.monotonic()
    message = failed_export(tmp_path, targets=["lora", "hub"],
                            hub={"repo_id": "me/tiny", "token_env": "RECIPE_TEST_HUB_TOKEN"})
    assert time.monotonic() - started < 15
    assert "cannot reach the Hub" in message and str(port) in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE" in failed_export(tmp_path / "offline", targets=["lora", "hub"],
                                             hub={"repo_id": "me/tiny",
                                                  "token_env": "RECIPE_TEST_HUB_TOKEN"})
