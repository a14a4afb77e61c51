"""`${env:NAME}` references: resolved only when a step needs the value, never stored resolved."""

from __future__ import annotations

import os
import re

ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


def env_refs(value) -> list[str]:
    """Names of the environment variables a (nested) value refers to."""
    if isinstance(value, str):
        return ENV_REF.findall(value)
    if isinstance(value, dict):
        return [n for v in value.values() for n in env_refs(v)]
    if isinstance(value, list):
        return [n for v in value for n in env_refs(v)]
    return []


def resolve(value: str) -> str:
    """Replace each `${env:NAME}` by the variable's value; a missing one is a KeyError."""
    def sub(match):
        name = match.group(1)
        if name not in os.environ:
            raise KeyError(f"environment variable {name} is not set")
        return os.environ[name]
    return ENV_REF.sub(sub, value)


def read_env(name: str, purpose: str) -> str:
    """A secret from the environment, with an error that says which variable to set."""
    value = os.environ.get(name, "")
    if not value:
        raise RuntimeError(f"{purpose} needs the environment variable {name}; "
                           f"set it (export {name}=...) and run again")
    return value
