"""The tiny model factory and the transformers loading path (all offline, CPU)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runner.errors import StepError
from runner.models import load_model, load_tokenizer, resolve_model
from runner.tiny_model import PRESETS, SPECIAL_TOKENS, harmony_template, model_config

TINY = {"name": "tiny", "load_in_4bit": False, "dtype": "auto", "attn_implementation": "auto"}
PINNED = datetime(2025, 8, 5)

CONVERSATIONS = [
    [{"role": "user", "content": "What is a generator?"},
     {"role": "assistant", "content": "A function that yields values lazily."}],
    [{"role": "system", "content": "You are an expert Python assistant."},
     {"role": "user", "content": "List vs tuple?\n\nExplain  briefly."},
     {"role": "assistant", "content": "Lists are mutable; tuples are not.\n```py\nt = (1,)\n```"}],
    [{"role": "user", "content": "Non-ASCII: é, 你好, emoji 🐍, tabs\there"},
     {"role": "assistant", "content": "  leading spaces and trailing newline\n"}],
    [{"role": "user", "content": "first"}, {"role": "assistant", "content": "one"},
     {"role": "user", "content": "second"}, {"role": "assistant", "content": "two"}],
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECIPE_CACHE", str(tmp_path_factory.mktemp("recipe-cache")))
        yield


@pytest.fixture(scope="module")
def tokenizer(cache):
    return load_tokenizer(TINY)


def official_render(messages, **kwargs) -> str:
    """The trl copy of the GPT-OSS template rendered by plain jinja2, like transformers does."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env.globals.update(raise_exception=raise_exception,
                       strftime_now=lambda fmt: PINNED.strftime(fmt))
    return env.from_string(harmony_template()).render(messages=messages, **kwargs)


def test_tiny_model_is_built_once_and_cached(cache):
    first = Path(resolve_model(TINY))
    assert (first / "config.json").is_file() and (first / "tokenizer.json").is_file()
    built = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    assert Path(resolve_model(TINY)) == first
    # The second call reuses the folder: not one file is rewritten (no timing: the build can be fast).
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == built
    # Built through a temporary sibling: nothing half-written is left next to it.
    assert [p.name for p in first.parent.iterdir()] == [first.name]
    other = resolve_model({**TINY, "tiny": {"num_hidden_layers": 3}})
    assert Path(other) != first


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("effort", ["low", "high"])
def test_template_renders_byte_identically_to_official(tokenizer, messages, effort):
    ours = tokenizer.apply_chat_template(messages, tokenize=False, reasoning_effort=effort,
                                         strftime_now=lambda fmt: PINNED.strftime(fmt))
    assert ours == official_render(messages, reasoning_effort=effort, add_generation_prompt=False)
    # The trained tokenizer is lossless, so the tokens carry exactly these bytes.
    ids = tokenizer(ours, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=False) == ours


def test_rendering_has_the_expected_harmony_shape(tokenizer):
    text = tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False, reasoning_effort="low",
                                         strftime_now=lambda fmt: PINNED.strftime(fmt))
    assert text == (
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
        "Knowledge cutoff: 2024-06\nCurrent date: 2025-08-05\n\nReasoning: low\n\n"
        "# Valid channels: analysis, commentary, final. Channel must be included for every "
        "message.<|end|><|start|>user<|message|>What is a generator?<|end|>"
        "<|start|>assistant<|channel|>final<|message|>A function that yields values lazily."
        "<|return|>")


def test_special_tokens_are_single_ids(tokenizer):
    for token in SPECIAL_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == token
    assert tokenizer.eos_token == "<|return|>" and tokenizer.pad_token == "<|endoftext|>"
    assert len(tokenizer) == 2048


@pytest.mark.parametrize("family,model_class,attention", [
    ("gpt_oss", "GptOssForCausalLM", "eager"), ("llama", "LlamaForCausalLM", "sdpa")])
def test_load_model_runs_a_forward_pass(cache, tokenizer, family, model_class, attention):
    import torch

    settings = {**TINY, "tiny": {"family": family}}
    model = load_model(settings)
    assert type(model).__name__ == model_class
    assert model.config._attn_implementation == attention and model.dtype == torch.float32
    ids = torch.tensor([tokenizer("def f(): return 1", add_special_tokens=False)["input_ids"]])
    loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss) and loss.item() > 1.0  # random init: near log(vocab)


def test_same_seed_gives_same_weights_other_seed_differs(tmp_path):
    from safetensors.torch import load_file

    from runner.tiny_model import build_tiny

    a = load_file(build_tiny(tmp_path / "a", "llama", seed=1, num_hidden_layers=1) / "model.safetensors")
    b = load_file(build_tiny(tmp_path / "b", "llama", seed=1, num_hidden_layers=1) / "model.safetensors")
    c = load_file(build_tiny(tmp_path / "c", "llama", seed=2, num_hidden_layers=1) / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert a[name].equal(b[name]) and not a[name].equal(c[name])


@pytest.mark.parametrize("family,preset,expected", [
    ("gpt_oss", "gpt-oss-20b", 20.9e9), ("llama", "llama-3.2-1b", 1.236e9)])
def test_presets_have_the_real_parameter_count(tokenizer, family, preset, expected):
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(family, tokenizer, **PRESETS[family][preset])
    with torch.device("meta"):  # shapes only, no memory
        model = AutoModelForCausalLM.from_config(config)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - expected) / expected < 0.01


def test_hub_id_offline_fails_naming_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert resolve_model({"name": "unsloth/gpt-oss-20b"}) == "unsloth/gpt-oss-20b"
    with pytest.raises(StepError, match=r"(?s)'unsloth/gpt-oss-20b'.*hint: HF_HUB_OFFLINE is set"):
        load_tokenizer({"name": "unsloth/gpt-oss-20b"})


def test_local_path_relative_to_base_dir(cache, tmp_path):
    import shutil
    shutil.copytree(resolve_model(TINY), tmp_path / "models" / "mine")
    settings = {**TINY, "name": "./models/mine"}
    assert resolve_model(settings, base_dir=tmp_path) == str((tmp_path / "models" / "mine").resolve())
    assert load_tokenizer(settings, base_dir=tmp_path).eos_token == "<|return|>"
    with pytest.raises(StepError, match="not a folder"):
        resolve_model({"name": "./models/missing"}, base_dir=tmp_path)


def test_clear_errors_for_impossible_settings(cache):
    with pytest.raises(StepError, match="load_in_4bit.*CUDA"):
        load_model({**TINY, "load_in_4bit": True}, device="cpu")
    with pytest.raises(StepError, match="no SDPA path"):
        load_model({**TINY, "attn_implementation": "sdpa"})
