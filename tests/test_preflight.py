"""Pre-flight through the real CLI on a machine without a GPU (CUDA_VISIBLE_DEVICES=-1): what a
step that will run needs and this machine lacks - the unsloth backend, 4-bit loading, a token -
is listed by `recipe plan` and refused by `recipe run` before any step, located and with a fix."""

from __future__ import annotations

from conftest import ROOT, run_cli

from runner.sources.brightdata_source import page_variant
from runner.sources.page_cache import PageCache
from runner.validate import load_and_validate

# No GPU, and none of the tokens set (an empty variable counts as unset).
NO_GPU = {"CUDA_VISIBLE_DEVICES": "-1", "BRIGHTDATA_API_TOKEN": "", "HF_TOKEN": ""}
DEMO = ROOT / "recipes" / "demo.yaml"
PYTHON_DOCS = ROOT / "recipes" / "python_docs.yaml"


def cli(*args, env=None):
    return run_cli(*args, env={**NO_GPU, **(env or {})}, timeout=120)


def test_python_docs_on_a_cpu_machine_without_a_token(tmp_path):
    plan = cli("plan", PYTHON_DOCS, "--run-dir", tmp_path)
    assert plan.returncode == 2 and "pre-flight: 3 problems would stop this run" in plan.stderr
    errors = plan.stderr
    assert "python_docs.yaml:86:3: $.training.backend: the unsloth backend needs a CUDA GPU" in errors
    assert "set training.backend: auto" in errors
    assert "python_docs.yaml:69:3: $.model.load_in_4bit: 4-bit loading (bitsandbytes" in errors
    assert "--set model.load_in_4bit=false" in errors
    assert ("$.sources[0].token_env: the brightdata source reads its API token from the "
            "environment variable BRIGHTDATA_API_TOKEN, which is not set") in errors
    assert "export BRIGHTDATA_API_TOKEN=" in errors
    run = cli("run", PYTHON_DOCS, "--run-dir", tmp_path)
    assert run.returncode == 2 and "nothing was run" in run.stderr
    assert "$.training.backend" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "python_docs").exists()          # not even the data half ran


def test_unsloth_and_4bit_matter_only_when_training_runs(tmp_path):
    unsloth = ("--set", "training.backend=unsloth")
    refused = cli("plan", DEMO, "--run-dir", tmp_path, *unsloth)
    assert refused.returncode == 2 and "$.training.backend: the unsloth backend" in refused.stderr
    assert cli("plan", DEMO, "--run-dir", tmp_path, *unsloth, "--until", "validation").returncode == 0
    assert cli("plan", DEMO, "--run-dir", tmp_path).returncode == 0       # auto falls back to hf
    four_bit = ("--set", "model.load_in_4bit=true")
    refused = cli("run", DEMO, "--run-dir", tmp_path, *four_bit, "--quiet")
    assert refused.returncode == 2 and "--set: $.model.load_in_4bit: 4-bit loading" in refused.stderr
    assert "nothing was run" in refused.stderr and not (tmp_path / "demo").exists()
    # Evaluation and export load full weights on a CPU: 4-bit alone does not stop them.
    assert cli("plan", DEMO, "--run-dir", tmp_path, *four_bit, "--until", "chat_template").returncode == 0


def test_hub_export_without_its_token(tmp_path):
    hub = ("--set", "export.targets=[lora, hub]", "--set", "export.hub.repo_id=someone/demo")
    refused = cli("plan", DEMO, "--run-dir", tmp_path, *hub)
    assert refused.returncode == 2
    assert ("$.export.hub.token_env: export target hub pushes with the Hugging Face token in the "
            "environment variable HF_TOKEN, which is not set") in refused.stderr
    other = cli("plan", DEMO, "--run-dir", tmp_path, *hub, "--set", "export.hub.token_env=MY_HUB")
    assert "variable MY_HUB, which is not set" in other.stderr
    assert cli("plan", DEMO, "--run-dir", tmp_path, *hub, env={"HF_TOKEN": "hf_x"}).returncode == 0


def test_cached_brightdata_pages_need_no_token_unless_fetched_again(tmp_path):
    recipe = tmp_path / "bd.yaml"
    urls = ["https://docs.example.org/a.html", "https://docs.example.org/b.html"]
    recipe.write_text("name: bd\nsources:\n  - type: brightdata\n    urls: [" + ", ".join(urls) + "]\n")
    runs = tmp_path / "runs"
    assert "BRIGHTDATA_API_TOKEN, which is not set" in cli("plan", recipe, "--run-dir", runs).stderr
    entry = load_and_validate(recipe).data["sources"][0]
    cache = PageCache(runs / "bd" / "cache" / "pages", {"source": "brightdata", **page_variant(entry)})
    cache.put(urls[0], "# A\n\ntext", status=200, attempts=1)
    assert cli("plan", recipe, "--run-dir", runs).returncode == 2       # b.html is still to fetch
    cache.put(urls[1], "# B\n\ntext", status=200, attempts=1)
    cached = cli("plan", recipe, "--run-dir", runs)
    assert cached.returncode == 0, cached.stderr
    forced = cli("plan", recipe, "--run-dir", runs, "--force", "sources")
    assert forced.returncode == 2 and "$.sources[0].token_env" in forced.stderr
    assert cli("plan", recipe, "--run-dir", runs, env={"BRIGHTDATA_API_TOKEN": "t" * 40},
               ).returncode == 0

