"""One training run, whatever the backend: split, checkpoints and resume, mask check, train,
save the adapter, write metrics and summary.

The backend modules (train_hf, train_unsloth) only load the model and build the SFTTrainer;
everything a user sees in the run folder is produced here, the same way for both.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from runner.artifacts import write_json, write_jsonl
from runner.errors import StepError
from runner.manifest import package_versions
from runner.train.quiet_gc import quiet_gc
from runner.train.train_common import (
    Plan,
    checkpoint_root,
    checkpoint_step,
    cuda_available,
    decide_checkpointing,
    gradient_checkpointing,
    packed,
    plan_for,
    prepare_checkpoints,
    read_rows,
    sft_config_kwargs,
    split_rows,
    unsloth_installed,
)
from runner.train.train_metrics import (
    attach_recording,
    loss_summary,
    peak_memory,
    read_metrics,
    tensorboard_ready,
    trim_metrics,
)

VERIFY_BATCHES = 2


@dataclass
class Job:
    """Everything a backend needs to build its trainer."""
    ctx: object
    backend: str
    plan: Plan
    root: Path                       # checkpoint folder (survives crashes)
    train_rows: list[dict]
    eval_rows: list[dict]
    world: object = None             # distributed_worker.World when this is one rank of several

    @property
    def writes(self) -> bool:
        """Only rank 0 (each machine's local rank 0) writes into the step's folder."""
        return self.world is None or self.world.writes

    @property
    def placement(self) -> dict:
        """Unsloth's device_map on a rank: its own GPU (a full copy per GPU, as Unsloth documents)."""
        return {"device_map": {"": self.world.device}} if self.world else {}

    def load_base_model(self):
        from runner.models import load_model
        if self.world is not None:
            from runner.train.distributed_model import load_for_rank
            return load_for_rank(self)
        return load_model(self.model, device=self.plan.device, base_dir=self.recipe_dir)

    @property
    def training(self) -> dict:
        return self.ctx.settings

    @property
    def model(self) -> dict:
        return self.ctx.sections["model"]

    @property
    def lora(self) -> dict:
        """The recipe's lora section, with use_gradient_checkpointing "auto" decided (make_plan)."""
        lora = self.ctx.sections["lora"]
        if lora.get("use_gradient_checkpointing") != "auto":
            return lora
        return {**lora, "use_gradient_checkpointing": self.plan.checkpointing}

    @property
    def chat(self) -> dict:
        """The markers the chat_template step verified the mask with (chat_template/chat.json)."""
        from runner.chat.resolved import read_chat
        return read_chat(self.ctx.inputs["chat_template"], self.ctx.sections["chat_template"])

    @property
    def recipe_dir(self) -> Path:
        return self.ctx.recipe_dir

    @property
    def limit(self) -> int:
        return int(self.model["max_seq_length"])

    @property
    def packed(self) -> bool:
        return packed(self.training)

    def collator(self, tokenizer):
        """The packing collator (runner.train.packing), or None for TRL's padded batches."""
        from runner.train.packing import collator_for
        return collator_for(self.training, tokenizer)

    def sft_kwargs(self) -> dict:
        kwargs = sft_config_kwargs(self.training, self.model, self.lora, self.plan,
                                   output_dir=self.root, has_eval=bool(self.eval_rows))
        return {**kwargs, **self.world.sft_overrides()} if self.world else kwargs

    def text_datasets(self):
        from datasets import Dataset
        def text(rows):
            return Dataset.from_list([{"text": r["text"]} for r in rows]) if rows else None
        return text(self.train_rows), text(self.eval_rows)

    def datasets(self, tokenizer):
        """Pre-tokenized rows; labels keep only the assistant answers when asked."""
        from datasets import Dataset

        from runner.train.train_mask import encode_row

        def encode(rows, split):
            if not rows:
                return None
            items = [encode_row(row, tokenizer, self.chat, limit=self.limit,
                                responses_only=self.training["train_on_responses_only"])
                     for row in rows]
            empty = sum(all(label == -100 for label in item["labels"]) for item in items)
            if empty == len(items):
                raise StepError(
                    f"no {split} row has a trained token: chat_template.response_part "
                    f"{self.chat['response_part']!r} does not occur in the tokenized rows; set it "
                    "to the text that starts the assistant's answer in dataset.jsonl")
            if empty:
                self.plan.notes.append(f"{empty} {split} row(s) have no answer token left "
                                       "(cut at max_seq_length?) and are skipped")
            return Dataset.from_list(items)
        return encode(self.train_rows, "train"), encode(self.eval_rows, "eval")


def make_plan(ctx, backend: str, cpu_only: bool = False) -> Plan:
    import torch
    check_backend(backend)
    training, model = ctx.settings, ctx.sections["model"]
    device = "cuda" if cuda_available() and not cpu_only else "cpu"
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    plan = plan_for(training, model, device, bf16_supported=bf16)
    decide_checkpointing(plan, ctx.sections["lora"], training, model, ctx.recipe_dir, backend)
    return plan


def check_backend(backend: str) -> None:
    if backend == "unsloth":
        if not cuda_available():
            raise StepError("training.backend is unsloth but there is no CUDA GPU here: set "
                            "training.backend: hf (CPU) or auto")
        if not unsloth_installed():
            raise StepError("training.backend is unsloth but unsloth is not installed: "
                            "`pip install unsloth`, or set training.backend: hf")


def run_training(ctx, backend: str) -> dict:
    import torch

    from runner.train.distributed_layout import layout_of, refuse
    training = ctx.settings
    gpus = torch.cuda.device_count()
    layout = layout_of(training, gpus)
    refuse(training, layout, gpus)
    # A launching step leaves CUDA alone (the ranks own the GPUs): each rank makes its plan.
    plan = None if layout.launched else make_plan(ctx, backend)
    rows = read_rows(ctx.inputs["chat_template"])
    train_rows, eval_rows = split_rows(rows, training["eval_fraction"], training["seed"])
    write_jsonl(ctx.out_dir / "eval.jsonl", eval_rows)
    root = checkpoint_root(ctx.cache_dir, ctx.key)
    resume_from = prepare_checkpoints(root, resume=training["resume"], force=ctx.force,
                                      log=ctx.log)
    metrics_path = root / "metrics.jsonl"
    resumed_step = checkpoint_step(resume_from) if resume_from else None
    if resume_from is None:
        metrics_path.unlink(missing_ok=True)
    else:
        trim_metrics(metrics_path, resumed_step)
    if layout.launched:
        from runner.train.distributed import launch
        check_backend(backend)
        return launch(ctx, backend, layout)
    job = Job(ctx, backend, plan, root, train_rows, eval_rows)
    return train_job(job, resume_from, metrics_path)


def train_job(job: Job, resume_from: Path | None, metrics_path: Path) -> dict:
    ctx, plan = job.ctx, job.plan
    resumed_step = checkpoint_step(resume_from) if resume_from else None
    if ctx.quiet:
        import datasets
        datasets.disable_progress_bars()
    ctx.log(f"{job.backend} backend on {describe_device(plan.device)}: {len(job.train_rows)} "
            f"train rows, {len(job.eval_rows)} eval rows")
    trainer, tokenizer = _backend(job.backend).build_trainer(job)
    for note in plan.notes:
        ctx.log(f"note: {note}")
    mask = verify_batches(trainer, tokenizer, job)
    from runner.train import compiled_layers, contract, flat_adamw8bit, moe_experts
    optimizer = flat_adamw8bit.install(trainer)
    moe = moe_experts.install(trainer.model, job.training["moe_forward"])
    if moe["blocks"]:
        ctx.log(f"MoE blocks: {moe['moe_forward']} forward ({moe['blocks']} blocks"
                + (f"; {moe['why']}" if moe.get("why") else "") + ")")
    checks = contract.start(trainer, job)
    # after the start-of-run checks, which run the layers eagerly on their own shapes
    layers = compiled_layers.install(trainer.model, job.training["compile_layers"], moe=moe,
                                     checkpointing=gradient_checkpointing(job.lora), log=ctx.log)
    tensorboard = tensorboard_ready(job.training["report_to"]) and job.writes
    callback = attach_recording(trainer, job.ctx, metrics_path,
                                job.root / "tensorboard" if tensorboard else None)
    if resume_from is not None:
        ctx.log(f"resuming from {resume_from.name} (step {resumed_step})")
    with quiet_gc(trainer):
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    _save_outputs(trainer, tokenizer, job, metrics_path)
    distributed = job.world.summary(job.training, peak_memory()) if job.world else None
    if not job.writes:
        return {}
    summary = {**_summary(trainer, job, callback, mask, resumed_step), "distributed": distributed,
               "contract": checks, "router_aux_loss_coef": checks["router_aux_loss_coef"],
               "packed": job.packed, "moe": moe,
               "compile_layers": layers, "logging": callback.logging, "optimizer": optimizer}
    write_json(ctx.out_dir / "summary.json", summary)
    shutil.rmtree(job.root, ignore_errors=True)  # the adapter is saved: checkpoints are spent
    return step_metrics(summary)


def step_metrics(summary: dict) -> dict:
    """What the training step returns (its completion record's metrics), from summary.json."""
    return {k: summary[k] for k in ("backend", "steps", "first_loss", "final_loss", "eval_loss",
                                    "tokens_per_s", "steps_per_s", "resumed_from_step",
                                    "router_aux_loss_coef", "packed")}


def _backend(name: str):
    if name == "hf":
        from runner.train import train_hf
        return train_hf
    from runner.train import train_unsloth
    return train_unsloth


def describe_device(device: str) -> str:
    if device != "cuda":
        return "CPU"
    import torch
    return f"GPU {torch.cuda.get_device_name(0)}"


def verify_batches(trainer, tokenizer, job: Job) -> dict:
    """Check the trainer's own collated batches: trained tokens are exactly the answers."""
    if not job.training["train_on_responses_only"]:
        job.ctx.log("train_on_responses_only is false: every token is trained")
        return job.world.merged_mask({"checked": False}) if job.world else {"checked": False}
    from runner.train.train_mask import BatchChecker

    checker = BatchChecker(tokenizer, job.chat, job.train_rows, job.limit)
    loader = iter(trainer.get_train_dataloader())
    batches = 0
    for batch in loader:
        checker.check(batch)
        batches += 1
        if batches == VERIFY_BATCHES:
            break
    mask = {"checked": True, "batches": batches, "rows": checker.checked}
    if job.world is not None:
        mask = job.world.merged_mask(mask)
    where = f" on each of {mask['ranks']} ranks, every rank its own" if job.world else ""
    job.ctx.log(f"mask verified on {mask['rows']} rows of {batches} collated batch(es){where}: "
                "only assistant answers are trained")
    return mask


def _save_outputs(trainer, tokenizer, job: Job, metrics_path: Path) -> None:
    whole = job.world.full_state(trainer.model) if job.world else None   # FSDP2: a collective
    if not job.writes:
        return
    out = job.ctx.out_dir
    trainer.model.save_pretrained(str(out / "adapter"),
                                  **({"state_dict": whole} if whole is not None else {}))
    _sort_target_modules(out / "adapter" / "adapter_config.json")
    tokenizer.save_pretrained(str(out / "adapter"))
    shutil.copyfile(metrics_path, out / "metrics.jsonl")
    if (job.root / "tensorboard").is_dir():
        shutil.copytree(job.root / "tensorboard", out / "tensorboard")


def _sort_target_modules(config: Path) -> None:
    """PEFT keeps target_modules as a set and writes it in set order, which changes from process
    to process: sorted, the same adapter gives the same bytes (and content hash) every run."""
    import json

    if not config.is_file():
        return                                   # a full fine-tune saves no adapter config
    data = json.loads(config.read_text(encoding="utf-8"))
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
        config.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")


def _parameter_counts(model) -> dict:
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total,
            "trainable_pct": round(100 * trainable / max(total, 1), 4)}


def _summary(trainer, job: Job, callback, mask: dict, resumed_step: int | None) -> dict:
    from runner.models import resolve_model

    rows = read_metrics(job.ctx.out_dir / "metrics.jsonl")
    plan = job.plan
    return {
        "backend": job.backend, "device": describe_device(plan.device),
        "model": job.model["name"], "model_path": resolve_model(job.model, job.recipe_dir),
        "full_finetuning": bool(job.model["full_finetuning"]),
        **_parameter_counts(trainer.model),
        "train_rows": len(job.train_rows), "eval_rows": len(job.eval_rows),
        "steps": trainer.state.global_step,
        "resumed_from_step": resumed_step,
        **loss_summary(rows), **callback.throughput, **peak_memory(),
        "optim": plan.optim, "fp16": plan.fp16, "bf16": plan.bf16, "notes": plan.notes,
        "gradient_checkpointing": job.lora["use_gradient_checkpointing"],
        "mask": mask, "versions": package_versions(("torch", "transformers", "trl", "peft", "unsloth", "bitsandbytes")),
    }
