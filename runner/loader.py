"""Recipe file -> one merged recipe with the origin of every value.

Order: parse each file of the `extends` chain, deep-merge (mappings merge, lists and scalars
replace), apply `--set` overrides, check `${env:NAME}` references, render Jinja in strings.
Every problem is collected and reported together: a broken file stops at once (there is nothing
sound to check further), while `--set`, environment and template problems are kept on the result
(`Loaded.problems`) so that validation reports them along with the schema's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import Problem, RecipeError, quoted
from runner.secrets import ENV_REF
from runner.yamlsafe import Origin, dump, parse_yaml, render_path

SET_ORIGIN = Origin("--set", None, None)


@dataclass
class Loaded:
    path: Path                                   # the recipe file named on the command line
    data: dict
    origins: dict[tuple, Origin]
    files: list[Path] = field(default_factory=list)   # the extends chain, child first
    problems: list[Problem] = field(default_factory=list)  # found after parsing (--set, env, Jinja)

    def origin(self, path: tuple) -> Origin:
        """Where the value at `path` (or its nearest set ancestor) was written."""
        while path:
            if path in self.origins:
                return self.origins[path]
            path = path[:-1]
        return self.origins.get((), Origin(_display(self.path), 1, 1))

    def problem(self, path: tuple, message: str, hint: str = "") -> Problem:
        o = self.origin(path)
        return Problem(o.file, o.line, o.col, render_path(path), message, hint)


def load_recipe(path: str | Path, overrides: list[str] = (), raw_paths=frozenset(),
                keep_problems: bool = False) -> Loaded:
    """Load, merge, override, check env refs and render templates; RecipeError lists all problems.

    keep_problems: problems found after parsing stay on `Loaded.problems` instead of raising,
    for a caller that adds its own checks and reports everything at once.
    """
    path = Path(path)
    problems: list[Problem] = []
    data, origins, files = _load_chain(path, problems, stack=())
    loaded = Loaded(path, data if isinstance(data, dict) else {}, origins, files)
    if problems:
        raise RecipeError(problems)
    loaded.data.pop("extends", None)
    for item in overrides:
        loaded.problems += apply_override(loaded, item)
    loaded.problems += check_env_refs(loaded)
    loaded.problems += render_templates(loaded, raw_paths)
    if loaded.problems and not keep_problems:
        raise RecipeError(loaded.problems)
    return loaded


def _load_chain(path: Path, problems: list, stack: tuple) -> tuple[dict, dict, list]:
    label = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(label, None, None, "$", f"cannot read the recipe: {exc}"))
        return {}, {}, [path]
    data, origins, found = parse_yaml(text, label)
    problems += found
    if data is None:
        return {}, {}, [path]
    if not isinstance(data, dict):
        problems.append(Problem(label, 1, 1, "$", "a recipe must be a mapping of sections",
                                "start with `name: my-run` and `sources:`"))
        return {}, {}, [path]
    base_ref = data.get("extends")
    if not base_ref:
        return data, origins, [path]
    where = origins.get(("extends",), Origin(label, 1, 1))
    base_path = (path.parent / str(base_ref)).resolve()
    chain = stack + (path.resolve(),)
    if base_path in chain:
        cycle = " -> ".join(_display(p) for p in chain + (base_path,))
        problems.append(Problem(where.file, where.line, where.col, "$.extends",
                                f"extends cycle: {cycle}", "remove one of the extends links"))
        return data, origins, [path]
    if not base_path.is_file():
        problems.append(Problem(where.file, where.line, where.col, "$.extends",
                                f"base recipe not found: {base_ref} (looked for {base_path})",
                                "extends takes a path relative to this recipe file"))
        return data, origins, [path]
    base, base_origins, files = _load_chain(base_path, problems, chain)
    return deep_merge(base, data), merge_origins(base_origins, base, data, origins), [path] + files


SELECTORS = ("type", "strategy", "backend")


def deep_merge(base: dict, child: dict) -> dict:
    """Child over base: mappings merge key by key; lists and scalars replace whole.

    A mapping whose implementation selector (type, strategy, backend) changes is replaced:
    the base's settings belong to the implementation the child switched away from.
    """
    result = dict(base)
    for key, value in child.items():
        both_maps = isinstance(value, dict) and isinstance(base.get(key), dict)
        merge = both_maps and not _switches_selector(base[key], value)
        result[key] = deep_merge(base[key], value) if merge else value
    return result


def _switches_selector(base: dict, child: dict) -> bool:
    return any(k in child and k in base and child[k] != base[k] for k in SELECTORS)


def merge_origins(base_origins: dict, base: dict, child: dict, child_origins: dict) -> dict:
    """Base origins survive only where the child did not replace the value."""
    replaced = list(_replaced_paths(base, child))
    kept = {p: o for p, o in base_origins.items()
            if not any(p[:len(r)] == r for r in replaced)}
    kept.update(child_origins)
    return kept


def _replaced_paths(base: dict, child: dict, prefix=()):
    for key, value in child.items():
        below = base.get(key) if isinstance(base, dict) else None
        if isinstance(value, dict) and isinstance(below, dict) and not _switches_selector(below, value):
            yield from _replaced_paths(below, value, prefix + (key,))
        else:
            yield prefix + (key,)


def apply_override(loaded: Loaded, item: str) -> list[Problem]:
    """`--set a.b.0.c=VALUE`: VALUE is read as a YAML scalar (or flow list/mapping)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        return [Problem("--set", None, None, "$", f"{quoted(item)} is not KEY=VALUE",
                        "example: --set training.max_steps=10")]
    value, _, problems = parse_yaml(raw if raw.strip() else "''", "--set")
    parts = tuple(int(p) if p.isdigit() else p for p in key.strip().split("."))
    if problems:
        return [Problem("--set", None, None, render_path(parts), p.message, p.hint) for p in problems]
    target = loaded.data
    for depth, part in enumerate(parts[:-1]):
        nxt = target[part] if _has(target, part) else None
        if nxt is None and isinstance(target, dict):
            nxt = target[part] = {}
            loaded.origins[parts[:depth + 1]] = SET_ORIGIN  # a typo'd key is reported at --set
        if not isinstance(nxt, (dict, list)):
            return [Problem("--set", None, None, render_path(parts[:depth + 1]),
                            f"cannot set {key}: {render_path(parts[:depth + 1])} is not a mapping or list")]
        target = nxt
    last = parts[-1]
    if isinstance(target, list) and not (isinstance(last, int) and last < len(target)):
        return [Problem("--set", None, None, render_path(parts), f"index {last} is out of range")]
    target[last] = value
    for p in [p for p in loaded.origins if p[:len(parts)] == parts]:
        del loaded.origins[p]
    loaded.origins[parts] = SET_ORIGIN
    return []


def _has(container, part) -> bool:
    if isinstance(container, dict):
        return part in container
    return isinstance(container, list) and isinstance(part, int) and part < len(container)


def walk_strings(data, path=()):
    if isinstance(data, str):
        yield path, data
    elif isinstance(data, dict):
        for k, v in data.items():
            yield from walk_strings(v, path + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from walk_strings(v, path + (i,))


def check_env_refs(loaded: Loaded) -> list[Problem]:
    import os
    problems = []
    for path, text in walk_strings(loaded.data):
        for name in ENV_REF.findall(text):
            if name not in os.environ:
                problems.append(loaded.problem(path, f"environment variable {name} is not set",
                                               f"export {name}=... before running, or remove "
                                               "the ${env:" + name + "} reference"))
    return problems


def render_templates(loaded: Loaded, raw_paths) -> list[Problem]:
    """Render `{{ ... }}` in string values with the recipe's top-level values as variables."""
    from jinja2 import StrictUndefined, TemplateError
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    context = {k: v for k, v in loaded.data.items()}
    problems = []
    for path, text in list(walk_strings(loaded.data)):
        if ("{{" not in text and "{%" not in text) or _is_raw(path, raw_paths):
            continue
        try:
            rendered = env.from_string(text).render(context)
        except TemplateError as exc:
            problems.append(loaded.problem(path, f"template error: {exc}",
                                           "templates may use the recipe's top-level values, "
                                           "e.g. {{ name }}; attributes starting with _ are blocked"))
            continue
        _assign(loaded.data, path, rendered)
    return problems


def _is_raw(path: tuple, raw_paths) -> bool:
    generic = tuple("*" if isinstance(p, int) else p for p in path)
    return generic in raw_paths


def _assign(data, path, value):
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def _display(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def dump_yaml(data) -> str:
    return dump(data, width=100)
