"""GGUF export for real: a tiny Llama with SmolLM2's released tokenizer is merged, converted by
llama.cpp's converter (convert-hf-to-gguf) to f16 and q8_0, reloaded in a fresh process through
transformers' GGUF loader and compared with the merged model; a truncated file and a file with
another model's weights fail the check.

The project's own tiny Llama cannot be used: its tokenizer is trained here, and the converter
names a BPE tokenizer's pre-tokenizer by the token ids it gives a probe text, which match no
released model, so it refuses it. SmolLM2's vocabulary (rebuilt from the packaged GGUF file, with
its digit-splitting byte-level pre-tokenizer) is one it knows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from gguf_helpers import smollm2_tokenizer, tiny_llama
from tuned_fixture import publish, section_settings

from runner.artifacts import read_json, write_json
from runner.errors import StepError
from runner.registry import StepContext

PROMPTS = ("What is a Python list?", "How do I read a file in Python?")


def trained_run(root: Path, tokenizer) -> tuple[Path, dict]:
    """runs/<name>/training/adapter: a LoRA with non-zero weights on the tiny Llama."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = tiny_llama(root / "base", tokenizer)
    run = root / "runs" / "gguf"
    torch.manual_seed(1)
    tuned = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False))
    tuned.save_pretrained(run / "training" / "adapter")
    tokenizer.save_pretrained(run / "training" / "adapter")
    sections = {"model": section_settings("model", name=str(base)), "lora": section_settings("lora"),
                "training": section_settings("training")}
    return run, sections


def export_context(run: Path, sections: dict, **settings) -> StepContext:
    out = run / ".export.tmp"
    out.mkdir(parents=True)
    return StepContext(recipe_name="gguf", step="export", key="test",
                       settings=section_settings("export", **settings), sections=sections,
                       inputs={"training": run / "training"}, out_dir=out, run_dir=run,
                       cache_dir=run / "cache" / "export", recipe_dir=run.parent.parent, quiet=True)


@pytest.fixture(scope="module")
def one_thread_everywhere(one_torch_thread):
    """The converter and the check run in processes of their own: one thread there too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_thread_everywhere):
    from runner.steps.export import export

    run, sections = trained_run(tmp_path_factory.mktemp("gguf"), smollm2_tokenizer())
    ctx = export_context(run, sections, targets=["merged_16bit", "gguf"],
                         gguf_outtypes=["f16", "q8_0"], verify_prompt=PROMPTS[0],
                         verify_prompts=list(PROMPTS[1:]))
    metrics = export(ctx)
    return publish(ctx), metrics, sections


def test_each_outtype_is_a_gguf_file_of_that_type(exported):
    from gguf import GGMLQuantizationType, GGUFReader

    out, metrics, _ = exported
    report = read_json(out / "export_report.json")["targets"]["gguf"]
    assert report["outtypes"] == ["f16", "q8_0"] and report["converter"]["version"] == "0.1.1"
    for outtype, kind in (("f16", GGMLQuantizationType.F16), ("q8_0", GGMLQuantizationType.Q8_0)):
        path = out / "gguf" / f"model-{outtype}.gguf"
        assert report["files"][outtype]["path"] == f"gguf/{path.name}"
        assert report["files"][outtype]["size_bytes"] == path.stat().st_size
        reader = GGUFReader(path)
        projection = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
        assert projection.tensor_type == kind
        field = reader.fields["tokenizer.ggml.pre"]
        assert bytes(field.parts[field.data[0]]).decode() == "smollm"  # recognised, with merges
        assert "tokenizer.ggml.merges" in reader.fields
    assert metrics["gguf_bytes"] == report["size_bytes"] == sum(
        f["size_bytes"] for f in report["files"].values())


def test_each_file_reloads_and_agrees_with_the_merged_model(exported):
    out, metrics, _ = exported
    files = read_json(out / "export_report.json")["targets"]["gguf"]["files"]
    for outtype in ("f16", "q8_0"):
        check = files[outtype]["check"]
        assert check["passed"] and check["tokenizer_matches"] and check["chat_template_matches"]
        assert check["top1_agreement"] >= check["min_top1_agreement"]
        assert check["positions"] > 2 * 24  # two prompts' tokens plus their greedy answers
        assert [row["prompt"] for row in check["prompts"]] == list(PROMPTS)
        assert all(row["reference_tokens"] > 0 and row["gguf_answer"] for row in check["prompts"])
        assert metrics[f"gguf_{outtype}_top1_agreement"] == check["top1_agreement"]
    # f16 holds the bf16 weights exactly but for the smallest, so its answers are the merged model's
    assert files["f16"]["check"]["token_agreement"] >= 0.9
    assert not list(out.glob(".gguf-check*")) and not list(out.glob(".merged-for-gguf"))


def test_the_run_report_shows_the_agreement(exported):
    from runner.plan import COMPLETE
    from runner.reporting.report_model import export_section
    from runner.reporting.report_run import RunFolder

    out, _, _ = exported
    write_json(out / COMPLETE, {})
    html = str(export_section(RunFolder(out.parent)))
    check = read_json(out / "export_report.json")["targets"]["gguf"]["files"]["q8_0"]["check"]
    assert f"q8_0: passed, reloaded in a fresh process; next-token argmax agrees " \
           f"{check['top1_agreement']:.1%} (bound 85.0%)" in html
    assert "greedy answers, merged model vs GGUF file" in html


def test_a_truncated_file_and_another_models_weights_fail_the_check(exported, tmp_path):
    """Both in one check: the q8_0 file cut short, and the f16 file with its token embedding's
    rows shuffled (well-formed, but another model)."""
    import numpy as np
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from runner.infer.gguf_export import check_files, merged_reference

    out, _, _ = exported
    whole = (out / "gguf" / "model-q8_0.gguf").read_bytes()
    (tmp_path / "model-q8_0.gguf").write_bytes(whole[: len(whole) * 2 // 3])
    shutil.copy(out / "gguf" / "model-f16.gguf", tmp_path / "model-f16.gguf")
    reader = GGUFReader(tmp_path / "model-f16.gguf", "r+")
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    embedding.data[:] = np.random.default_rng(0).permutation(np.array(embedding.data))
    reader.data.flush()
    del reader, embedding
    tokenizer = AutoTokenizer.from_pretrained(out / "merged_16bit")
    merged = merged_reference(out / "merged_16bit", tokenizer, list(PROMPTS), "cpu", 24)
    files = {"f16": tmp_path / "model-f16.gguf", "q8_0": tmp_path / "model-q8_0.gguf"}
    with pytest.raises(StepError) as caught:
        check_files(tmp_path, files, tokenizer, merged, 24)
    message = str(caught.value)
    assert "model-q8_0.gguf does not load through transformers' GGUF loader" in message
    assert "model-f16.gguf is broken: its next-token argmax agrees with the merged model's at" in message
    assert "(at least 97% expected)" in message


def test_a_byte_level_tokenizer_declaring_byte_fallback_is_refused_before_converting(exported, tmp_path):
    """transformers writes tokenizers it reads from GGUF files that way; the converter would store
    such a vocabulary as SentencePiece's, and the GGUF file would tokenize otherwise."""
    import json

    from runner.steps.export import export

    out, _, sections = exported
    run = tmp_path / "runs" / "gguf"
    shutil.copytree(out.parent / "training", run / "training")
    tokenizer_file = run / "training" / "adapter" / "tokenizer.json"
    tokenizer = json.loads(tokenizer_file.read_text())
    tokenizer["model"]["byte_fallback"] = True
    tokenizer_file.write_text(json.dumps(tokenizer))
    ctx = export_context(run, sections, targets=["merged_16bit", "gguf"])
    with pytest.raises(StepError, match="declares byte_fallback, which llama.cpp's converter reads as a "
                                        "SentencePiece vocabulary"):
        export(ctx)
    assert list(ctx.out_dir.iterdir()) == []  # refused before anything was written
