"""Render a resolved recipe as YAML with the origin of every value as a comment."""

from __future__ import annotations

import json

import yaml

from runner.yamlsafe import CoreDumper


def _scalar(value) -> str:
    # CoreDumper quotes "1e5" and "yes": read back as YAML 1.2, they would change type
    text = yaml.dump(value, Dumper=CoreDumper, default_flow_style=True, width=10**6, allow_unicode=True)
    return text.strip().removesuffix("...").strip()


def render(loaded) -> str:
    lines: list[str] = [f"# resolved from {', '.join(str(p) for p in loaded.files)}"]

    def origin(path) -> str:
        found = loaded.origins.get(path)
        return f"  # {found}" if found else "  # default"

    def walk(value, path, indent):
        pad = "  " * indent
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            head = f"{pad}{key}:" if isinstance(value, dict) else f"{pad}-"
            sub = path + (key,)
            if isinstance(child, (dict, list)) and child:
                lines.append(head + origin(sub))
                walk(child, sub, indent + 1)
            else:
                lines.append(f"{head} {_scalar(child)}{origin(sub)}")

    walk(loaded.data, (), 0)
    return "\n".join(lines) + "\n"


def chat_markers_note(loaded) -> str:
    """The chat markers left on "auto", as the chat_template step will read them off the template.

    Read only from a model that is already local (nothing is downloaded, built or converted), and
    only when the recipe uses the model's own template.
    """
    chat = loaded.data.get("chat_template")
    keys = ("instruction_part", "response_part", "end_token")
    if not chat or not any(chat.get(key) == "auto" for key in keys):
        return ""
    from runner.models import ready_folder

    model = loaded.data.get("model") or {}
    folder = ready_folder(model, loaded.path.parent)
    head = "# chat_template markers read off the model's template"
    if chat.get("template") != "tokenizer" or folder is None:
        why = ("the template is a file" if folder is not None else "the model is not local yet")
        return f"{head}: shown when chat_template runs ({why}; see chat_template/chat.json)\n"
    from runner.chat.chat_format import pinned_clock
    from runner.chat.template_markers import markers_of_folder
    from runner.errors import StepError

    try:
        markers = markers_of_folder(folder, {"strftime_now": pinned_clock(chat["current_date"]),
                                             "reasoning_effort": chat["reasoning_effort"]})
    except StepError as error:
        return f"{head}: cannot read them: {error}\n"
    if markers is None:
        return f"{head}: the model folder has no chat template\n"
    lines = [f"{head} ({markers.template_kind}, {folder}):"]
    lines += [f"#   {key}: {json.dumps(getattr(markers, key))}" for key in keys
              if chat.get(key) == "auto"]
    return "\n".join(lines) + "\n"
