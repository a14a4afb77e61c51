"""Load a base or tuned model for inference, render a chat prompt, generate, score held-out rows.

Shared by the evaluation step, the export checks and the server. Heavy imports stay inside
functions so importing this module is cheap.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from runner.errors import StepError
from runner.infer.answer_format import HARMONY, AnswerFormat, PlainAnswer
from runner.infer.harmony_parse import HarmonyParse

_DATE_LINE = re.compile(r"Current date: \d{4}-\d{2}-\d{2}")


def pick_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_tokenizer_from(folder: Path, model_settings: dict | None = None, base_dir=None):
    """The tokenizer saved beside an adapter or model, else the base model's."""
    from transformers import AutoTokenizer

    if (Path(folder) / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    elif model_settings is not None:
        from runner.models import load_tokenizer
        tokenizer = load_tokenizer(model_settings, base_dir)
    else:
        raise StepError(f"{folder} holds no tokenizer (tokenizer_config.json): save the "
                        "tokenizer next to the model or adapter")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tuned(model_settings: dict, adapter_dir: Path, *, device: str, dtype=None,
               base_dir=None, load_in_4bit: bool | None = None):
    """The base model of the recipe with the trained adapter attached (a PeftModel).

    A training output that holds a full model (full fine-tuning) is loaded as it is.
    """
    from runner.models import load_model

    settings = dict(model_settings)
    if load_in_4bit is not None:
        settings["load_in_4bit"] = load_in_4bit
    if settings.get("load_in_4bit") and device == "cpu":
        settings["load_in_4bit"] = False  # 4-bit needs CUDA; full weights on CPU give the same answers
    adapter_dir = Path(adapter_dir)
    if not is_adapter_dir(adapter_dir):
        if (adapter_dir / "config.json").is_file():
            return load_model({**settings, "name": str(adapter_dir.resolve())}, device=device,
                              dtype=dtype)
        raise StepError(f"{adapter_dir} holds neither a PEFT adapter (adapter_config.json) nor "
                        "a model (config.json): re-run the training step")
    from peft import PeftModel

    base = load_model(settings, device=device, dtype=dtype, base_dir=base_dir)
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)


def load_path(path: Path, *, device: str, dtype=None):
    """A model folder (config.json) or an adapter folder (adapter_config.json names its base)."""
    from runner.models import load_model

    path = Path(path).resolve()
    settings = {"name": str(path), "dtype": "auto", "attn_implementation": "auto",
                "load_in_4bit": False}
    if not is_adapter_dir(path):
        if not (path / "config.json").is_file():
            raise StepError(f"{path} is not a model folder (no config.json or adapter_config.json)")
        config = json.loads((path / "config.json").read_text())
        if dtype is None and "quantization_config" in config:
            # A quantized checkpoint computes in the dtype it was saved with, even on a CPU.
            dtype = config.get("dtype") or config.get("torch_dtype") or "bfloat16"
        return load_model(settings, device=device, dtype=dtype), load_tokenizer_from(path)
    base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise StepError(f"{path}/adapter_config.json does not name its base model "
                        "(base_model_name_or_path): serve the merged model instead")
    model = load_tuned({**settings, "name": base}, path, device=device, dtype=dtype)
    return model, load_tokenizer_from(path, {**settings, "name": base})


def render_prompt(tokenizer, prompt: str, *, effort: str | None = "medium", system_prompt: str = "",
                  messages: list[dict] | None = None, chat_template: str | None = None,
                  current_date: str | None = None) -> str:
    """The chat template with the generation prompt (harmony: ends in `<|start|>assistant`).

    effort None: the template takes no reasoning effort (any non-harmony template)."""
    if messages is None:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
        messages.append({"role": "user", "content": prompt})
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise StepError("the tokenizer has no chat template: set chat_template.template to a "
                        "Jinja file, or use a model whose tokenizer ships one")
    options = {} if effort is None else {"reasoning_effort": effort}
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         chat_template=chat_template, **options)
    if current_date:  # the template writes today's date; pin it so answers are reproducible
        text = _DATE_LINE.sub(f"Current date: {current_date}", text, count=1)
    return text


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    do_sample: bool = True
    seed: int = 3407

    @classmethod
    def from_section(cls, section: dict) -> GenerationSettings:
        keys = ("max_new_tokens", "temperature", "top_p", "do_sample", "seed")
        return cls(**{k: section[k] for k in keys if k in section})

    def generate_kwargs(self, tokenizer, stop_ids: list[int] | None = None) -> dict:
        """stop_ids: token ids that end the answer (default: harmony's stop tokens)."""
        stop = HARMONY.stop_ids(tokenizer) if stop_ids is None else stop_ids
        sample = self.do_sample and self.temperature > 0  # temperature 0 means greedy
        kwargs = dict(max_new_tokens=self.max_new_tokens, do_sample=sample,
                      eos_token_id=stop or tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
        if sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass
class Generation:
    text: str           # decoded new tokens, special tokens kept
    parsed: HarmonyParse | PlainAnswer
    new_tokens: int
    seconds: float
    ended: bool = True  # a stop token ended it; False: cut off at max_new_tokens

    def as_dict(self) -> dict:
        return {**self.parsed.as_dict(), "raw": self.text, "ended": self.ended,
                "new_tokens": self.new_tokens,
                "seconds": round(self.seconds, 3),
                "tokens_per_s": round(self.new_tokens / self.seconds, 2) if self.seconds else None}


def generate(model, tokenizer, prompt_text: str, settings: GenerationSettings,
             streamer=None, answer_format: AnswerFormat = HARMONY) -> Generation:
    """Generate from an already rendered prompt; seeded so a sampled answer is reproducible.

    answer_format: how the template ends and lays out an answer (AnswerFormat.from_chat)."""
    import torch
    from transformers import set_seed

    answer_format = answer_format.with_model_stops(tokenizer, model)
    stop_ids, stop_strings = answer_format.stop_ids(tokenizer), answer_format.stop_strings(tokenizer)
    kwargs = settings.generate_kwargs(tokenizer, stop_ids)
    if stop_strings:  # end markers longer than one token: transformers matches them on text
        kwargs.update(stop_strings=stop_strings, tokenizer=tokenizer)
    inputs = tokenizer(prompt_text, return_tensors="pt", add_special_tokens=False)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    set_seed(settings.seed)
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(**inputs, **kwargs, streamer=streamer)
    seconds = time.perf_counter() - started
    new = output[0, inputs["input_ids"].shape[1]:]
    text = tokenizer.decode(new, skip_special_tokens=False)
    by_id = bool(new.numel()) and int(new[-1]) in stop_ids
    ended = by_id or any(s in text for s in stop_strings)
    # A plain answer is what came before its stop token (whose text may differ from its name).
    answer = text if answer_format.harmony or not by_id else tokenizer.decode(
        new[:-1], skip_special_tokens=False)
    return Generation(text, answer_format.parse(answer, ended), int(new.shape[0]), seconds, ended)


def response_spans(text: str, response_part: str, instruction_part: str) -> list[tuple[int, int]]:
    """Character spans the trainer learns from: after each response marker, up to the next turn."""
    spans, start = [], text.find(response_part)
    while start != -1:
        begin = start + len(response_part)
        end = text.find(instruction_part, begin) if instruction_part else -1
        spans.append((begin, len(text) if end == -1 else end))
        start = text.find(response_part, begin)
    return spans


def _labels(tokenizer, text: str, spans: list[tuple[int, int]] | None, max_length: int):
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False, truncation=True,
                        max_length=max_length, return_offsets_mapping=spans is not None)
    labels = encoded["input_ids"].clone()
    if spans is not None:
        starts = encoded.pop("offset_mapping")[0, :, 0].tolist()
        for index, char in enumerate(starts):
            if not any(begin <= char < end for begin, end in spans):
                labels[0, index] = -100
    return encoded, labels


def held_out_loss(model, tokenizer, texts: list[str], *, max_length: int,
                  response_part: str | None = None, instruction_part: str = "",
                  progress=None) -> dict:
    """Token-weighted mean loss (and perplexity) over texts; with response_part, only the
    answer tokens count, as in training with train_on_responses_only."""
    import torch

    total, tokens = 0.0, 0
    rows = progress(texts, total=len(texts), desc="held-out loss", unit="row") if progress else texts
    for text in rows:
        spans = response_spans(text, response_part, instruction_part) if response_part else None
        encoded, labels = _labels(tokenizer, text, spans, max_length)
        counted = int((labels[0, 1:] != -100).sum())
        if counted == 0:
            continue
        with torch.inference_mode():
            out = model(**{k: v.to(model.device) for k, v in encoded.items()},
                        labels=labels.to(model.device))
        total += float(out.loss) * counted
        tokens += counted
    if tokens == 0:
        return {"loss": None, "perplexity": None, "tokens": 0, "rows": len(texts)}
    loss = total / tokens
    return {"loss": round(loss, 5), "perplexity": round(math.exp(min(loss, 50.0)), 4),
            "tokens": tokens, "rows": len(texts)}
