"""Where a recipe's model comes from (one module per kind of source) and loading it with transformers.

`model.name` is one of: a hub id (`unsloth/gpt-oss-20b`), a local model folder, a `.gguf` file,
`package:IMPORT_NAME/path/in/package` (a model shipped inside an installed Python distribution),
or `tiny` (the project's random-init factory). Every kind resolves to what transformers loads:
a local folder (GGUF files are converted once into the model cache) or a hub id.
"""

from runner.models.loading import (
    attention_for,
    load_config,
    load_model,
    load_tokenizer,
    quantization_for,
    resolve_dtype,
    stop_token_ids,
)
from runner.models.sources import (
    cache_root,
    describe_source,
    is_local,
    offline_problem,
    ready_folder,
    resolve_model,
    source_for,
)
from runner.models.tiny import tiny_model_dir, tiny_settings

__all__ = ["attention_for", "cache_root", "describe_source", "is_local", "load_config",
           "load_model", "load_tokenizer", "offline_problem", "quantization_for", "ready_folder", "resolve_dtype",
           "resolve_model", "source_for", "stop_token_ids", "tiny_model_dir", "tiny_settings"]
