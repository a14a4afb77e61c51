"""Peak GPU memory of one training step, estimated from the model config before anything loads.

peak = weights (load dtype, or NF4 for what 4-bit loading quantizes)
     + adapters (trainable weights, their gradients and optimizer states)
     + activations (tokens per micro-batch x bytes per token under the gradient checkpointing in
       effect, eager attention scores, PEFT's expert delta weights)
     + workspace (the LM head's chunk of logits).

The per-token term counts the tensors one decoder layer keeps for backward; BACKWARD_COPIES and
the workspace were calibrated on the H200 benchmark (bench/results/training.md shows estimate
against measured peak). Pure Python: `recipe plan` imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1024 ** 3
NF4_BYTES = 0.516          # 4 bits + double-quantized absmax per 64 weights (bitsandbytes)
BACKWARD_COPIES = 2.0      # a layer's saved tensors plus their gradients while it backpropagates
EAGER_SCORE_COPIES = 2     # probabilities kept for backward, and their gradient [batch, heads, T, T]
LM_HEAD_TOKENS = 512       # tokens whose fp32 logits the fused loss holds at once
CONTEXT_GIB = 1.0          # CUDA context and allocator slack outside torch's allocations
OPTIMIZER_BYTES = {"adamw_8bit": 2, "paged_adamw_8bit": 2, "adamw_torch": 8,
                   "adamw_torch_fused": 8, "adafactor": 4, "sgd": 0}
REFERENCE_CARD_GIB = 15.0  # a "16 GB" card as it reports itself (T4: 15,360 MiB)
# use_gradient_checkpointing "auto" turns checkpointing off when the step without it takes at
# most this share of the card's usable memory: the rest is headroom for longer rows than planned
# and allocator fragmentation. Without it a step skips the recomputed forward (on the H200
# benchmark, a packed GPT-OSS step took about half the time).
AUTO_SHARE = 0.8


@dataclass
class Estimate:
    parts: dict[str, float]            # bytes
    tokens: int                        # per micro-batch
    trainable: int
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def gib(self, name: str | None = None) -> float:
        return (self.total if name is None else self.parts[name]) / GIB


def _shape(config: dict) -> dict:
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    return dict(H=hidden, L=config["num_hidden_layers"], heads=heads, hd=head_dim,
                kv=config.get("num_key_value_heads") or heads, V=config["vocab_size"],
                I=config["intermediate_size"], E=config.get("num_local_experts") or 0,
                k=config.get("num_experts_per_tok") or 0)


def parameter_groups(config: dict) -> dict[str, int]:
    """Parameter counts by how they load: linear (quantizable), experts, other (kept as is)."""
    s = _shape(config)
    q, kv = s["heads"] * s["hd"], s["kv"] * s["hd"]
    linear = s["L"] * (2 * s["H"] * q + 2 * s["H"] * kv)
    experts = s["L"] * s["E"] * 3 * s["H"] * s["I"] if s["E"] else 0
    if not s["E"]:
        linear += s["L"] * 3 * s["H"] * s["I"]
    tied = config.get("tie_word_embeddings", False)
    other = s["V"] * s["H"] * (1 if tied else 2) + s["L"] * (2 * s["H"] + s["E"] * s["H"])
    if config.get("attention_bias"):
        other += s["L"] * (2 * q + 2 * kv + s["H"] + s["E"] * 3 * s["I"])
    return {"linear": linear, "experts": experts, "other": other}


def lora_parameters(config: dict, lora: dict) -> int:
    """Trainable LoRA weights: r x (in + out) per adapted matrix, per expert for the experts."""
    from runner.train.train_common import lora_targets

    s, r = _shape(config), lora["r"]
    q, kv = s["heads"] * s["hd"], s["kv"] * s["hd"]
    sizes = {"q_proj": (s["H"], q), "k_proj": (s["H"], kv), "v_proj": (s["H"], kv),
             "o_proj": (q, s["H"]), "gate_proj": (s["H"], s["I"]), "up_proj": (s["H"], s["I"]),
             "down_proj": (s["I"], s["H"])}
    experts = {"mlp.experts.gate_up_proj": (s["H"], 2 * s["I"]),
               "mlp.experts.down_proj": (s["I"], s["H"])}
    modules, parameters, _ = lora_targets(lora, config.get("model_type", ""))
    per_layer = sum(r * sum(sizes[name]) for name in modules if name in sizes)
    per_layer += sum(r * s["E"] * sum(experts[name]) for name in parameters if name in experts)
    return s["L"] * per_layer


def estimate(config: dict, model: dict, lora: dict, training: dict, *, backend: str,
             tokens: int | None = None, longest_row: int | None = None) -> Estimate:
    """The estimate for a micro-batch of `tokens` (default: the worst case the recipe allows:
    per_device_train_batch_size rows of max_seq_length). longest_row: padded rows' width."""
    from runner.train.train_common import gradient_checkpointing, packed

    if lora.get("use_gradient_checkpointing") == "auto":   # undecided: plan for it on
        lora = {**lora, "use_gradient_checkpointing": checkpointing_on(backend)}
    s, groups = _shape(config), parameter_groups(config)
    batch, width = training["per_device_train_batch_size"], int(model["max_seq_length"])
    tokens = tokens or batch * width
    dtype = model.get("dtype") if model.get("dtype") not in (None, "auto") else "bfloat16"
    unit = 4 if dtype == "float32" else 2
    notes: list[str] = []
    weights = groups["other"] * unit
    if model.get("load_in_4bit"):
        weights += groups["linear"] * NF4_BYTES
        experts_4bit = backend == "unsloth"
        weights += groups["experts"] * (NF4_BYTES if experts_4bit else unit)
        if groups["experts"] and not experts_4bit:
            notes.append("4-bit loading in transformers quantizes nn.Linear only: the fused "
                         "GPT-OSS experts stay in 16 bits (Unsloth quantizes them)")
    else:
        weights += (groups["linear"] + groups["experts"]) * unit
    optimizer = OPTIMIZER_BYTES.get(training["optim"], 8)
    if model.get("full_finetuning"):
        trainable = sum(groups.values())
        adapters = trainable * (unit + optimizer)
    else:
        trainable = lora_parameters(config, lora)
        adapters = trainable * (4 + 4 + optimizer)   # PEFT keeps adapters in fp32
    activations = _activations(s, config, lora, training, backend, tokens, unit,
                               longest_row or width, gradient_checkpointing(lora), packed(training))
    parts = {"weights": weights, "adapters": adapters, "activations": activations,
             "workspace": LM_HEAD_TOKENS * s["V"] * 4}
    return Estimate(parts, tokens, trainable, notes)


def _layer_elements(s: dict) -> int:
    """Elements one decoder layer keeps per token for its backward pass."""
    q, kv = s["heads"] * s["hd"], s["kv"] * s["hd"]
    attention = 2 * s["H"] + 2 * q + 4 * kv + q
    if s["E"]:
        return attention + 2 * s["H"] + 2 * s["E"] + s["k"] * (2 * s["H"] + 3 * s["I"])
    return attention + 2 * s["H"] + 3 * s["I"]


def _activations(s, config, lora, training, backend, tokens, unit, width, checkpointing,
                 packed_rows) -> float:
    layer = _layer_elements(s) * unit * tokens
    offloaded = backend == "unsloth" and lora.get("use_gradient_checkpointing") == "unsloth"
    if not checkpointing:
        total = s["L"] * layer + (BACKWARD_COPIES - 1) * layer
    else:
        inputs = 0 if offloaded else s["L"] * s["H"] * unit * tokens
        total = inputs + BACKWARD_COPIES * layer
    eager = (backend == "hf" and config.get("model_type") == "gpt_oss" and not packed_rows)
    if eager:
        rows = max(1, tokens // width)
        total += EAGER_SCORE_COPIES * rows * s["heads"] * width * (width + 1) * unit
    if backend == "hf" and s["E"] and lora_uses_experts(lora, config):
        # PEFT's ParamWrapper adds B @ A to the whole expert weight, one layer at a time.
        total += s["E"] * 3 * s["H"] * s["I"] * unit
    return total


def lora_uses_experts(lora: dict, config: dict) -> bool:
    from runner.train.train_common import lora_targets
    return bool(lora_targets(lora, config.get("model_type", ""))[1])


def model_config(model_settings: dict, base_dir) -> dict | None:
    """config.json of the model if it can be read without loading, building or fetching it."""
    from runner.models import ready_folder

    folder = ready_folder(model_settings, base_dir)
    if folder is not None and (Path(folder) / "config.json").is_file():
        return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    from runner.tiny_model import PRESETS
    name = str(model_settings.get("name", "")).lower()
    for preset in ("gpt-oss-120b", "gpt-oss-20b"):
        if preset in name:
            return {"model_type": "gpt_oss", "attention_bias": True,
                    **PRESETS["gpt_oss"][preset]}
    return None


def card_memory(training: dict) -> tuple[float, str] | None:
    """(GiB, what) of the GPU to plan for: training.gpu_memory_gib, else the first card that
    nvidia-smi reports here, else None."""
    if training.get("gpu_memory_gib"):
        return float(training["gpu_memory_gib"]), "training.gpu_memory_gib"
    import shutil
    import subprocess
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.splitlines()
        name, mib = out[0].rsplit(",", 1)
        return float(mib) / 1024, name.strip()
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def checkpointing_on(backend: str):
    """What "on" means per backend: Unsloth's offloaded checkpointing, or transformers'."""
    return "unsloth" if backend == "unsloth" else True


def checkpointing_for(config: dict | None, model: dict, lora: dict, training: dict, *,
                      backend: str, card_gib: float | None) -> tuple[object, str | None]:
    """(the use_gradient_checkpointing in effect, why) for lora's setting; only "auto" is
    decided here: off when the step fits without it (AUTO_SHARE of the card), else on."""
    asked = lora.get("use_gradient_checkpointing")
    if asked != "auto":
        return asked, None
    on = checkpointing_on(backend)
    if card_gib is None or config is None:
        what = "no GPU to plan for" if card_gib is None else "the model config is not here yet"
        return on, f"gradient checkpointing auto: on ({on}), {what}"
    without = estimate(config, model, {**lora, "use_gradient_checkpointing": False}, training,
                       backend=backend).gib()
    usable = card_gib - CONTEXT_GIB
    if without <= AUTO_SHARE * usable:
        return False, (f"gradient checkpointing auto: off, the step needs about {without:.1f} GiB "
                       f"without it, within {AUTO_SHARE:.0%} of the {usable:.1f} GiB usable")
    return on, (f"gradient checkpointing auto: on ({on}), without it the step would need about "
                f"{without:.1f} GiB, over {AUTO_SHARE:.0%} of the {usable:.1f} GiB usable")


def planned_backend(training: dict, card) -> str:
    import importlib.util
    if training.get("backend", "auto") != "auto":
        return training["backend"]
    return "unsloth" if card and importlib.util.find_spec("unsloth") else "hf"


def describe(est: Estimate, backend: str, lora: dict, training: dict) -> str:
    checkpointing = lora.get("use_gradient_checkpointing")
    kind = "packed" if training.get("packing") or training.get("padding_free") else "padded"
    return (f"memory plan ({backend} backend): peak about {est.gib():.1f} GiB per step = weights "
            f"{est.gib('weights'):.1f} + adapters {est.gib('adapters'):.2f} ({est.trainable / 1e6:.1f} M "
            f"trainable, with gradients and {training['optim']} states) + activations "
            f"{est.gib('activations'):.2f} ({est.tokens:,} {kind} tokens per micro-batch, "
            f"gradient checkpointing {checkpointing}) + LM-head workspace {est.gib('workspace'):.2f}")


def fits(est: Estimate, card_gib: float) -> bool:
    return est.gib() <= card_gib - CONTEXT_GIB


def reference_card_line(est: Estimate) -> str:
    """What the hand-run notebook's "16 GB GPU" claim takes for this recipe."""
    usable = REFERENCE_CARD_GIB - CONTEXT_GIB
    fixed = est.gib() - est.gib("activations")
    if fixed >= usable:
        return (f"a 16 GB GPU ({usable:.0f} GiB usable): does not fit, weights and adapters "
                f"alone take {fixed:.1f} GiB; it needs 4-bit weights with the experts quantized "
                "(model.load_in_4bit with the unsloth backend), a smaller r or fewer targets")
    per_token = est.parts["activations"] / max(est.tokens, 1)
    most = int((usable - fixed) * GIB / per_token) if per_token else est.tokens
    verdict = "fits" if fits(est, REFERENCE_CARD_GIB) else "does not fit"
    return (f"a 16 GB GPU ({usable:.0f} GiB usable): {verdict}; it holds up to about {most:,} "
            f"tokens per micro-batch with these weights and adapters")


def plan(model: dict, lora: dict, training: dict, base_dir) -> tuple[list[str], str | None]:
    """(lines for `recipe plan`, a problem when the estimate exceeds the card planned for)."""
    config = model_config(model, base_dir)
    if config is None:
        return [f"memory plan: skipped, the config of {model.get('name')!r} is not here yet "
                "(it is read once the model is downloaded, converted or built)"], None
    card = card_memory(training)
    backend = planned_backend(training, card)
    checkpointing, why = checkpointing_for(config, model, lora, training, backend=backend,
                                           card_gib=card[0] if card else None)
    lora = {**lora, "use_gradient_checkpointing": checkpointing}
    est = estimate(config, model, lora, training, backend=backend)
    lines = [describe(est, backend, lora, training)] + [f"  note: {n}" for n in est.notes]
    lines += [f"  {why}"] if why else []
    lines.append(f"  {reference_card_line(est)}")
    if card is None:
        lines.append("  no CUDA GPU here (nvidia-smi): set training.gpu_memory_gib to plan for one")
        return lines, None
    gib, what = card
    verdict = "fits" if fits(est, gib) else "does NOT fit"
    lines.append(f"  {what} ({gib:.1f} GiB, {gib - CONTEXT_GIB:.1f} usable): {verdict}")
    if fits(est, gib):
        return lines, None
    return lines, (f"the estimated peak of {est.gib():.1f} GiB per training step exceeds the "
                   f"{gib - CONTEXT_GIB:.1f} GiB usable on {what} ({gib:.1f} GiB)")
