"""Settings shared by the training backends: recipe sections -> SFTConfig, device decisions,
backend choice, the eval split and the checkpoint folder.

Nothing heavy is imported at module level; torch is imported inside the functions that need it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import StepError

# The MLP projection names of dense models; GPT-OSS fuses them into expert parameters.
MLP_MODULES = {"gate_proj", "up_proj", "down_proj"}
GPT_OSS_EXPERT_PARAMETERS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
EIGHT_BIT_OPTIMS = {"adamw_8bit", "paged_adamw_8bit"}
DATALOADER_WORKERS = 2


@dataclass
class Plan:
    """Decisions about this run that depend on the machine; `notes` are logged and summarised."""
    device: str                       # "cuda" or "cpu"
    optim: str
    fp16: bool
    bf16: bool
    notes: list[str] = field(default_factory=list)
    checkpointing: object = None      # lora.use_gradient_checkpointing "auto", decided


def cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def unsloth_installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def choose_backend(training: dict | None = None) -> tuple[str, str]:
    """auto: unsloth when a CUDA GPU and unsloth are both present, else hf. Returns (backend, why)."""
    from runner.train.distributed_layout import layout_of
    layout = layout_of(training or {})
    if layout.strategy == "fsdp2":
        return "hf", "strategy fsdp2 (Unsloth's multi-GPU path is ddp only)"
    if layout.launched and layout.device == "cpu":
        return "hf", "training.distributed.device is cpu"
    if not cuda_available():
        return "hf", "no CUDA GPU"
    import torch
    gpu = torch.cuda.get_device_name(0)
    if not unsloth_installed():
        return "hf", f"CUDA GPU {gpu} found but unsloth is not installed"
    return "unsloth", f"CUDA GPU {gpu} and unsloth found"


def model_dtype_name(model: dict, device: str, bf16_supported: bool) -> str:
    """The dtype the weights are loaded in (auto: bfloat16 on a GPU that has it, float16 on
    older GPUs, float32 on CPU), as runner.models.resolve_dtype and Unsloth both pick it."""
    if model.get("dtype") not in (None, "auto"):
        return model["dtype"]
    if device != "cuda":
        return "float32"
    return "bfloat16" if bf16_supported else "float16"


def preload_unsloth(training: dict | None) -> bool:
    """Import unsloth now if this run's training will use it; True if it did.

    Unsloth patches transformers and trl when imported and warns (losing some optimizations)
    when an earlier step already imported them, e.g. to load a tokenizer. The executor calls
    this before the first step of a run that includes training.
    """
    if not training or training.get("backend", "auto") == "hf" or not unsloth_installed():
        return False
    from runner.train.distributed_layout import layout_of
    if layout_of(training).launched:
        return False      # the ranks import it themselves; CUDA stays untouched here
    if not cuda_available():
        return False
    import os
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    import unsloth  # noqa: F401
    return True


def plan_for(training: dict, model: dict, device: str, *, bf16_supported: bool = False) -> Plan:
    """Optimizer and mixed precision for this device; explicit settings that cannot work here
    are replaced, with a note saying so."""
    plan = Plan(device=device, optim=training["optim"], fp16=False, bf16=False)
    if device == "cpu":
        if plan.optim in EIGHT_BIT_OPTIMS or plan.optim == "adamw_torch_fused":
            plan.notes.append(f"optim {plan.optim} needs a CUDA GPU; using adamw_torch on CPU")
            plan.optim = "adamw_torch"
        for name in ("fp16", "bf16"):
            if training.get(name):
                plan.notes.append(f"{name}: true ignored on CPU (mixed precision is off there)")
        return plan
    _mixed_precision(plan, training, model_dtype_name(model, device, bf16_supported),
                     bf16_supported)
    return plan


def _mixed_precision(plan: Plan, training: dict, weights: str, bf16_supported: bool) -> None:
    fp16, bf16 = training.get("fp16"), training.get("bf16")
    if fp16 and bf16:
        raise StepError("training.fp16 and training.bf16 are both true: choose one (or leave "
                        "both null to follow the model's dtype)")
    if bf16 and not bf16_supported:
        raise StepError("training.bf16 is true but this GPU has no bfloat16 support: set "
                        "training.bf16: false and training.fp16: true (or leave both null)")
    if fp16 is None and bf16 is None:
        use_bf16 = weights == "bfloat16" or (weights == "float32" and bf16_supported)
    else:
        use_bf16 = bool(bf16)
    # Half-precision weights need the same autocast dtype (Unsloth refuses a mismatch); the
    # notebook's fp16: true was written for a T4, where auto loads float16 weights.
    if use_bf16 and weights == "float16":
        plan.notes.append("bf16 requested but the weights are float16: training in fp16")
        use_bf16 = False
    elif not use_bf16 and weights == "bfloat16":
        if fp16:
            plan.notes.append("fp16: true but the weights load as bfloat16 on this GPU: "
                              "training in bf16 (set model.dtype: float16 to force fp16)")
        use_bf16 = True
    plan.bf16, plan.fp16 = use_bf16, not use_bf16


def gradient_checkpointing(lora: dict) -> bool:
    # "unsloth" is Unsloth's offloaded variant; transformers' plain checkpointing is the nearest.
    return lora.get("use_gradient_checkpointing") not in (False, None)


def decide_checkpointing(plan: Plan, lora: dict, training: dict, model: dict, base_dir,
                         backend: str) -> None:
    """use_gradient_checkpointing "auto" -> plan.checkpointing: off when the memory plan says
    the step fits without it on this GPU (training.gpu_memory_gib when set), else on; the
    reason goes in the notes."""
    from runner.train.memory_plan import GIB, checkpointing_for, model_config

    if lora.get("use_gradient_checkpointing") != "auto":
        return
    card = None
    if plan.device == "cuda":
        import torch
        card = training.get("gpu_memory_gib") or torch.cuda.get_device_properties(
            torch.cuda.current_device()).total_memory / GIB
    config = model_config(model, base_dir) if card else None
    plan.checkpointing, why = checkpointing_for(config, model, lora, training, backend=backend,
                                                card_gib=card)
    plan.notes.append(why)


def packed(training: dict) -> bool:
    """Rows of a micro-batch go in one sequence (runner.train.packing's collator, not TRL's)."""
    return bool(training.get("packing") or training.get("padding_free"))


def max_length_for(training: dict, model: dict) -> int | None:
    # Rows are cut at max_seq_length before they reach the trainer; TRL only re-checks it.
    return int(model["max_seq_length"])


def sft_config_kwargs(training: dict, model: dict, lora: dict, plan: Plan, *,
                      output_dir: Path, has_eval: bool) -> dict:
    """Every SFTConfig field the recipe controls (the hand-run workflow's plus ours)."""
    kwargs = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=training["per_device_train_batch_size"],
        per_device_eval_batch_size=training["per_device_train_batch_size"],
        gradient_accumulation_steps=training["gradient_accumulation_steps"],
        warmup_steps=training["warmup_steps"],
        max_steps=training["max_steps"],
        num_train_epochs=training["num_train_epochs"],
        learning_rate=training["learning_rate"],
        lr_scheduler_type=training["lr_scheduler_type"],
        optim=plan.optim,
        weight_decay=training["weight_decay"],
        max_grad_norm=training["max_grad_norm"],
        logging_steps=training["logging_steps"],
        logging_first_step=True,
        save_strategy="steps",
        save_steps=training["save_steps"],
        save_total_limit=training["save_total_limit"],
        seed=training["seed"],
        data_seed=training["seed"],
        fp16=plan.fp16,
        bf16=plan.bf16,
        # TensorBoard gets its own callback writing into the run folder (see train_metrics).
        report_to="none",
        max_length=max_length_for(training, model),
        # Our collator packs (TRL's packing and padding-free let GPT-OSS rows attend to each
        # other, and Unsloth drops them for GPT-OSS); TRL sees plain rows.
        packing=False,
        padding_free=False,
        dataset_text_field="text",
        router_aux_loss_coef=training["router_aux_loss_coef"],
        gradient_checkpointing=gradient_checkpointing(lora),
        eval_strategy="steps" if has_eval else "no",
        eval_steps=training["eval_steps"],
        include_num_input_tokens_seen="non_padding",
        # The filter reads every micro-batch's loss back to the host (a GPU sync) and hides a NaN
        # loss behind the running mean; a NaN in the logs says what happened.
        logging_nan_inf_filter=False,
        disable_tqdm=True,
        use_cpu=plan.device == "cpu",
        dataloader_pin_memory=plan.device == "cuda",
    )
    if plan.device == "cuda":
        # Collate the next batches in worker processes while the GPU computes this one.
        # Batches go to the GPU without blocking: a blocking copy waits for the GPU to finish
        # the step before, so the host could not queue the next step while it runs.
        kwargs.update(dataloader_num_workers=DATALOADER_WORKERS,
                      dataloader_persistent_workers=True,
                      accelerator_config={"non_blocking": True})
    if gradient_checkpointing(lora):
        kwargs["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    return kwargs


def lora_targets(lora: dict, model_type: str) -> tuple[list[str], list[str], str | None]:
    """(target_modules, target_parameters, note). GPT-OSS has no gate/up/down Linear layers:
    its experts are fused parameters, so those names map onto the expert weights, as Unsloth does."""
    modules = list(lora["target_modules"])
    parameters = list(lora.get("target_parameters") or [])
    if model_type != "gpt_oss" or parameters or not MLP_MODULES & set(modules):
        return modules, parameters, None
    modules = [m for m in modules if m not in MLP_MODULES]
    note = (f"GPT-OSS experts are fused: LoRA on {', '.join(sorted(MLP_MODULES))} goes to "
            f"{', '.join(GPT_OSS_EXPERT_PARAMETERS)}")
    return modules, list(GPT_OSS_EXPERT_PARAMETERS), note


def read_rows(folder: Path) -> list[dict]:
    path = Path(folder) / "dataset.jsonl"
    if not path.is_file():
        raise StepError(f"{path} is missing: run the chat_template step first")
    with open(path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    if not rows:
        raise StepError(f"{path} has no rows: nothing to train on; check the earlier steps' "
                        "counts (validation may have dropped every pair)")
    return rows


def split_rows(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded held-out split: ceil(fraction * n) rows for eval, at least one train row."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    count = min(len(rows) - 1, max(1, math.ceil(fraction * len(rows))))
    held = set(order[:count])
    return ([r for i, r in enumerate(rows) if i not in held],
            [r for i, r in enumerate(rows) if i in held])


# --- checkpoints --------------------------------------------------------------------------

def checkpoint_root(cache_dir: Path, key: str) -> Path:
    """Checkpoints live in the step's cache (kept across crashes), one folder per cache key."""
    return Path(cache_dir) / key[:16]


def checkpoint_step(path: Path) -> int | None:
    """The step of a complete checkpoint (trainer_state.json is written last), else None."""
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        return int(state["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def latest_checkpoint(root: Path) -> tuple[Path | None, list[Path]]:
    """(latest complete checkpoint, incomplete ones that a crash left behind)."""
    complete, broken = [], []
    for path in sorted(Path(root).glob("checkpoint-*")):
        if not path.is_dir():
            continue
        step = checkpoint_step(path)
        (broken if step is None else complete).append((step or 0, path))
    latest = max(complete, key=lambda item: item[0])[1] if complete else None
    return latest, [path for _, path in broken]


def prepare_checkpoints(root: Path, *, resume: bool, force: bool, log) -> Path | None:
    """Wipe or reuse the checkpoint folder; returns the checkpoint to resume from, if any."""
    if (force or not resume) and root.exists():
        log(f"starting fresh ({'--force' if force else 'training.resume is false'}): "
            f"removing checkpoints in {root}")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    latest, broken = latest_checkpoint(root)
    for path in broken:
        log(f"removing incomplete checkpoint {path.name} (a crash interrupted its save)")
        shutil.rmtree(path, ignore_errors=True)
    return latest
