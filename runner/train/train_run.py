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
from runner.train.train_common import (
    Plan,
    checkpoint_root,
    checkpoint_step,
    cuda_available,
    plan_for,
    prepare_checkpoints,
    read_rows,
    sft_config_kwargs,
    split_rows,
    unsloth_installed,
)
from runner.train.train_metrics import (
    loss_summary,
    metrics_callback,
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

    @property
    def training(self) -> dict:
        return self.ctx.settings

    @property
    def model(self) -> dict:
        return self.ctx.sections["model"]

    @property
    def lora(self) -> dict:
        return self.ctx.sections["lora"]

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

    def sft_kwargs(self) -> dict:
        return sft_config_kwargs(self.training, self.model, self.lora, self.plan,
                                 output_dir=self.root, has_eval=bool(self.eval_rows))

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


def make_plan(training: dict, model: dict, backend: str) -> Plan:
    import torch
    if backend == "unsloth":
        if not cuda_available():
            raise StepError("training.backend is unsloth but there is no CUDA GPU here: set "
                            "training.backend: hf (CPU) or auto")
        if not unsloth_installed():
            raise StepError("training.backend is unsloth but unsloth is not installed: "
                            "`pip install unsloth`, or set training.backend: hf")
    device = "cuda" if cuda_available() else "cpu"
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    return plan_for(training, model, device, bf16_supported=bf16)


def run_training(ctx, backend: str) -> dict:
    training = ctx.settings
    plan = make_plan(training, ctx.sections["model"], backend)
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
    job = Job(ctx, backend, plan, root, train_rows, eval_rows)
    if ctx.quiet:
        import datasets
        datasets.disable_progress_bars()
    ctx.log(f"{backend} backend on {describe_device(plan.device)}: {len(train_rows)} train "
            f"rows, {len(eval_rows)} eval rows")
    trainer, tokenizer = _backend(backend).build_trainer(job)
    for note in plan.notes:
        ctx.log(f"note: {note}")
    mask = verify_batches(trainer, tokenizer, job)
    callback = _attach_callbacks(trainer, job, metrics_path)
    if resume_from is not None:
        ctx.log(f"resuming from {resume_from.name} (step {resumed_step})")
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    _save_outputs(trainer, tokenizer, job, metrics_path)
    summary = _summary(trainer, job, callback, mask, resumed_step)
    write_json(ctx.out_dir / "summary.json", summary)
    shutil.rmtree(root, ignore_errors=True)  # the adapter is saved: checkpoints are spent
    return {k: summary[k] for k in ("backend", "steps", "first_loss", "final_loss", "eval_loss",
                                    "tokens_per_s", "steps_per_s", "resumed_from_step")}


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
        return {"checked": False}
    from runner.train.train_mask import BatchChecker

    checker = BatchChecker(tokenizer, job.chat, job.train_rows, job.limit)
    loader = iter(trainer.get_train_dataloader())
    batches = 0
    for batch in loader:
        checker.check(batch)
        batches += 1
        if batches == VERIFY_BATCHES:
            break
    job.ctx.log(f"mask verified on {checker.checked} rows of {batches} collated batch(es): "
                "only assistant answers are trained")
    return {"checked": True, "batches": batches, "rows": checker.checked}


def _attach_callbacks(trainer, job: Job, metrics_path: Path):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    tb_dir = job.root / "tensorboard" if tensorboard_ready(job.training["report_to"]) else None
    callback = metrics_callback(metrics_path, job.ctx, tb_dir)
    trainer.add_callback(callback)
    return callback


def _save_outputs(trainer, tokenizer, job: Job, metrics_path: Path) -> None:
    out = job.ctx.out_dir
    trainer.model.save_pretrained(str(out / "adapter"))
    tokenizer.save_pretrained(str(out / "adapter"))
    shutil.copyfile(metrics_path, out / "metrics.jsonl")
    if (job.root / "tensorboard").is_dir():
        shutil.copytree(job.root / "tensorboard", out / "tensorboard")


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
        "mask": mask, "versions": package_versions(("torch", "transformers", "trl", "peft", "unsloth", "bitsandbytes")),
    }
