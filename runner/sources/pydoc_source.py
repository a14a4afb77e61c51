"""`type: pydoc`: docstrings of installed Python modules as markdown documents.

One document per module: `# module`, then `## name()` per documented function and
`## class Name` per class, with `### Name.method()` under it. Docstrings are reST: they go
through the reST converter (roles to inline code, doctests and `::` blocks to fenced code, their
own headings below the member's). The offline source that always exists, so a recipe can run
end to end without a network or python3.11-doc.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path

from runner.artifacts import hash_file
from runner.errors import StepError
from runner.sources.documents import SourceResult, document_id, make_document

# A default value's repr may name its memory address (`<function copy2 at 0x7f...>`), which
# changes every process: dropped, so two runs write the same documents.
MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+(?=>)")


def run_pydoc(ctx, entry: dict, index: int) -> SourceResult:
    documents = []
    for name in entry["modules"]:
        module = _import(name, index)
        documents.append(make_document(
            "pydoc", doc_id=document_id("pydoc", name), title=name,
            markdown=module_markdown(module), path=getattr(module, "__file__", None),
            metadata={"module": name, "python": sys.version.split()[0],
                      "version": str(getattr(module, "__version__", "") or "")}))
    ctx.log(f"sources[{index}] (pydoc): {len(documents)} modules")
    return SourceResult(documents, [], {"modules": len(documents)})


def fingerprint_modules(entry: dict) -> list:
    """Python version and the hash of each module's file: an upgrade re-runs the step."""
    found = [sys.version]
    for name in entry["modules"]:
        origin = _module_origin(name)
        found.append([name, hash_file(Path(origin)) if origin and Path(origin).is_file() else origin])
    return found


def _module_origin(name: str) -> str | None:
    """A module's file without importing it or its parents (planning must not import torch)."""
    from importlib.machinery import PathFinder

    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
        for depth in range(2, len(parts) + 1):
            if spec is None or not spec.submodule_search_locations:
                return None
            spec = PathFinder.find_spec(".".join(parts[:depth]), spec.submodule_search_locations)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec else None


def _import(name: str, index: int):
    try:
        return importlib.import_module(name)
    except Exception as exc:  # a module may fail at import with anything, not only ImportError
        raise StepError(f"sources[{index}] (pydoc): cannot import module '{name}' "
                        f"({type(exc).__name__}: {exc}); install it in this environment or "
                        "remove it from `modules`") from None


def module_markdown(module) -> str:
    name = module.__name__
    parts = [f"# {name}", _markdown(inspect.getdoc(module) or "", 2)]
    for member_name, member in _public_members(module):
        if inspect.isclass(member):
            parts += _class_sections(member_name, member)
        elif callable(member):
            doc = _own_doc(member)
            if doc:
                parts += [f"## {member_name}()", _signature_line(member_name, member),
                          _markdown(doc, 3)]
    return "\n\n".join(p for p in parts if p).strip() + "\n"


def _markdown(docstring: str, top_level: int) -> str:
    from runner.sources.rst_markdown import rst_to_markdown
    return rst_to_markdown(docstring, top_level).strip() if docstring.strip() else ""


def _public_members(module):
    exported = getattr(module, "__all__", None)
    if exported is not None:
        return [(n, getattr(module, n)) for n in exported if hasattr(module, n)]
    # Without __all__: what the module defines itself, in definition order (not re-exports).
    return [(n, v) for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
            and (inspect.isclass(v) or inspect.isroutine(v))]


def _class_sections(name: str, cls) -> list[str]:
    methods = []
    for attr, value in vars(cls).items():
        if attr.startswith("_") and attr != "__init__":
            continue
        function = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
        doc = _own_doc(function) if inspect.isroutine(function) or isinstance(value, property) else ""
        if doc:
            methods += [f"### {name}.{attr}()" if not isinstance(value, property)
                        else f"### {name}.{attr}", _signature_line(attr, function),
                        _markdown(doc, 4)]
    doc = _own_doc(cls)
    if not doc and not methods:
        return []
    return [f"## class {name}", _signature_line(name, cls), _markdown(doc, 3), *methods]


def _own_doc(obj) -> str:
    # Its own docstring only: inherited ones would repeat the base class in every subclass.
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def _signature_line(name: str, obj) -> str:
    try:
        return f"`{name}{MEMORY_ADDRESS.sub('', str(inspect.signature(obj)))}`"
    except (TypeError, ValueError):
        return ""
