"""Training backends (hf, unsloth) and what they share: settings, mask check, metrics, resume."""
