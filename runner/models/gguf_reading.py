"""One parse of a GGUF file's metadata per load, however often transformers asks for it.

transformers' GGUF loader opens the file anew for the config, the weights, the tokenizer config
and the tokenizer: four passes of `gguf.GGUFReader`, which reads every metadata string (a
49k-token vocabulary and its merges) one by one, seconds each. The reader only reads (a
read-only memory map), so one reader per file serves all of them. Used by the GGUF -> safetensors
conversion (runner.models.gguf_file) and the exported file's reload check
(runner.infer.export_check).
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def one_parse_per_file():
    """Within the block, `gguf.GGUFReader(path)` returns the block's one reader of that path."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def shared_reader(path, mode="r"):
        if mode != "r":                  # a writer must see the file as it is now
            return original(path, mode)
        if str(path) not in readers:
            readers[str(path)] = original(path, mode)
        return readers[str(path)]

    gguf.GGUFReader = shared_reader
    try:
        yield
    finally:
        gguf.GGUFReader = original
