"""Sandboxed Jinja templates for recipe-supplied text (instructions, teacher prompts)."""

from __future__ import annotations

from runner.errors import StepError


def compile_template(source: str, setting: str, sample: dict):
    """A sandboxed Jinja template (no attribute tricks, undefined names are errors), rendered
    once with `sample` so a mistake fails before any document is read."""
    from jinja2 import StrictUndefined, TemplateError
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                               keep_trailing_newline=True)
    try:
        template = env.from_string(source)
        template.render(**sample)
    except TemplateError as exc:
        line = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        raise StepError(f"{setting}: {exc.message or exc}{line}; the template may use "
                        f"{', '.join(sample)}") from None
    return template


def render(template, setting: str, where: str, **variables) -> str:
    """Render, turning a template error on real data into a StepError that says where."""
    from jinja2 import TemplateError

    try:
        return template.render(**variables)
    except TemplateError as exc:
        raise StepError(f"{setting}: {exc} ({where})") from None
