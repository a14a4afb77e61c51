"""recipe: a declarative YAML recipe runner for LLM fine-tuning."""

__version__ = "0.1.0"
