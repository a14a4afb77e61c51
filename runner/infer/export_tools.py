"""The export targets that need outside tools: MXFP4 (Unsloth + llm-compressor) and the Hub
(GGUF, through llama.cpp's converter, is runner/infer/gguf_export.py). Each has a preflight that
runs before anything is written and says exactly what is missing, so an export never hangs on a
network it does not have or stops half-way."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from contextlib import contextmanager
from importlib import metadata, util
from pathlib import Path
from urllib.parse import urlsplit

from runner.errors import StepError

HUB_SUFFIX = {"lora": "", "merged_16bit": "-merged-16bit", "mxfp4": "-mxfp4"}
HUB_CONNECT_TIMEOUT_S = 5.0


# --- MXFP4 (Unsloth + llm-compressor) ---------------------------------------------------------

def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def llm_compressor_conflicts() -> list[str]:
    """Pins of the installed llmcompressor that this environment breaks (torch, transformers...)."""
    from packaging.requirements import Requirement

    conflicts = []
    for line in metadata.requires("llmcompressor") or []:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        if requirement.name not in ("torch", "transformers", "compressed-tensors"):
            continue
        have = _installed(requirement.name)
        if have is None or not requirement.specifier.contains(have.split("+")[0], prereleases=True):
            conflicts.append(f"{requirement} (installed: {have or 'none'})")
    return conflicts


def mxfp4_problems() -> list[str]:
    """Everything missing for the MXFP4 export (all of it, so one run tells the whole story)."""
    import torch

    problems = []
    if not torch.cuda.is_available():
        problems.append("mxfp4 export runs through Unsloth on a CUDA GPU and this machine has "
                        "none: export merged_16bit here, or run the export step on a GPU machine")
    if util.find_spec("unsloth") is None:
        problems.append("mxfp4 export needs Unsloth: pip install 'recipe-runner[gpu]'")
    version = _installed("llmcompressor")
    fits = ("llmcompressor 0.14.0.1 (transformers<=5.17, torch<=2.14, compressed-tensors==0.19.0) "
            "fits this stack; llmcompressor 0.12 pins transformers<=5.10.1 and torch<=2.12")
    if version is None:
        problems.append(
            "mxfp4 export needs llm-compressor, which is not installed. Unsloth would try to "
            "`pip install llmcompressor` during the export, which fails without a network, so the "
            f"export stops here instead. {fits}. Offline, carry the wheels and install them with "
            "`pip install --no-deps llmcompressor==0.14.0.1 compressed-tensors==0.19.0 loguru`")
    else:
        conflicts = llm_compressor_conflicts()
        if conflicts:
            problems.append(f"the installed llmcompressor {version} does not fit this environment: "
                            f"it requires {'; '.join(conflicts)}. {fits}")
    return problems


@contextmanager
def _environment(**values: str):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _unsloth_quantize_environment():
    """Never let Unsloth pip-install at run time; hand its quantize subprocess this very
    environment (our preflight checked llmcompressor's pins against it, while Unsloth's own check
    still assumes llmcompressor <= 0.12 and refuses transformers 5); and keep the subprocess'
    script folder (unsloth/) off sys.path, or its `kernels` sub-package shadows the `kernels`
    package that transformers probes for, and the subprocess dies importing it."""
    search_path = os.pathsep.join(p for p in sys.path if p and Path(p).is_dir())
    return _environment(UNSLOTH_DISABLE_LLM_COMPRESSOR_AUTOINSTALL="1", PYTHONSAFEPATH="1",
                        UNSLOTH_COMPRESSED_QUANTIZE_PYTHONPATH=os.environ.get(
                            "UNSLOTH_COMPRESSED_QUANTIZE_PYTHONPATH", search_path))


def export_mxfp4(adapter_dir: Path, out_dir: Path, work_dir: Path, max_seq_length: int, log) -> Path:
    """Unsloth merges the adapter at 16 bit into work_dir, then llm-compressor writes the MXFP4
    checkpoint beside it (work_dir-mxfp4), which is moved to out_dir."""
    from unsloth import FastLanguageModel

    log("loading the tuned model through Unsloth (16-bit)")
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(adapter_dir), max_seq_length=max_seq_length, load_in_4bit=False, dtype=None)
    try:
        with _unsloth_quantize_environment():
            written = model.save_pretrained_merged(str(work_dir), tokenizer, save_method="mxfp4",
                                                   install_missing_dependencies=False)
    except (RuntimeError, OSError, ImportError, ValueError) as error:
        raise StepError(f"mxfp4 export through Unsloth failed: {error}") from error
    finally:
        del model
    os.replace(written or f"{work_dir}-mxfp4", out_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    return out_dir


@contextmanager
def _linearized_moe_skeleton():
    """While loading, give MoE layers llm-compressor's per-expert Linear layout before the
    weights arrive: llm-compressor saves GPT-OSS experts one Linear per expert
    (experts.N.gate_proj/up_proj/down_proj), which plain transformers cannot place in its fused
    expert tensors (they would silently stay random)."""
    import torch
    from llmcompressor.modeling.moe.linear_experts import LinearExperts2D
    from llmcompressor.modeling.moe.linearize import get_non_linearized_moes
    from transformers.quantizers.quantizer_compressed_tensors import CompressedTensorsHfQuantizer

    original = CompressedTensorsHfQuantizer._process_model_before_weight_loading

    def before_weight_loading(self, model, **kwargs):
        for name, experts in get_non_linearized_moes(model):
            linear_cls = LinearExperts2D.get_linear_experts_cls(type(experts))
            with torch.device(next(experts.parameters()).device):  # meta: no memory yet
                model.set_submodule(name, linear_cls(getattr(experts, "config", model.config)))
        return original(self, model, **kwargs)

    CompressedTensorsHfQuantizer._process_model_before_weight_loading = before_weight_loading
    try:
        yield
    finally:
        CompressedTensorsHfQuantizer._process_model_before_weight_loading = original


def load_compressed_checkpoint(path: Path, device: str):
    """A compressed-tensors checkpoint (the MXFP4 export) with every weight in place, or a
    StepError naming the weights that did not load."""
    import torch
    from transformers import AutoModelForCausalLM

    from runner.models import attention_for

    config = json.loads((Path(path) / "config.json").read_text())
    with _linearized_moe_skeleton():
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch.bfloat16, device_map=device, output_loading_info=True,
            attn_implementation=attention_for(config.get("model_type", ""), "auto"))
    if info.get("missing_keys"):
        raise StepError(f"{path} loads with weights missing ({sorted(info['missing_keys'])[:6]}"
                        "...): the checkpoint does not hold the whole model")
    return model


# --- Hub ----------------------------------------------------------------------------------------

def hub_endpoint() -> str:
    from huggingface_hub import constants
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_problems(hub: dict, targets: list[str]) -> list[str]:
    problems = []
    if not hub.get("repo_id"):
        problems.append("export.hub.repo_id is empty: set it to user/name")
    missing = [p for p in hub.get("push") or [] if p not in targets]
    if missing:
        problems.append(f"export.hub.push names {', '.join(missing)}, which export.targets does "
                        "not export in this run: add them to export.targets")
    if not os.environ.get(hub["token_env"]):
        problems.append(f"pushing to the Hub needs a token in the environment variable "
                        f"{hub['token_env']} (export.hub.token_env): export {hub['token_env']}=hf_...")
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"):
        problems.append("HF_HUB_OFFLINE is set, so nothing can be pushed: unset it on a machine "
                        "with a network")
    elif not problems:
        problems += _reachability_problem(hub_endpoint())
    return problems


def _reachability_problem(endpoint: str) -> list[str]:
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=HUB_CONNECT_TIMEOUT_S):
            return []
    except OSError as error:
        return [f"cannot reach the Hub at {endpoint} ({error}): no network? Push from a machine "
                "that can reach it, or drop hub from export.targets"]


def push_to_hub(hub: dict, folders: dict[str, Path], commit_message: str, log) -> dict:
    """One repository per artifact (adapter: repo_id; merged: repo_id-merged-16bit; ...)."""
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=hub_endpoint(), token=os.environ[hub["token_env"]])
    pushed = {}
    for name, folder in folders.items():
        repo_id = hub["repo_id"] + HUB_SUFFIX[name]
        log(f"pushing {name} to {repo_id}")
        try:
            api.create_repo(repo_id, private=hub["private"], exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                       commit_message=commit_message)
            remote = set(api.list_repo_files(repo_id))
        except (HfHubHTTPError, httpx.HTTPError, OSError) as error:
            raise StepError(f"pushing {name} to the Hub repository {repo_id} failed: {error}") from error
        local = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        if not local <= remote:
            raise StepError(f"the Hub repository {repo_id} lacks {sorted(local - remote)} after the push")
        pushed[name] = {"repo_id": repo_id, "url": f"{hub_endpoint()}/{repo_id}",
                        "commit": getattr(commit, "oid", None), "files": len(local)}
    return pushed
