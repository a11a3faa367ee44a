"""YAML settings files checked by pydantic, every error one line naming the file, the line and the key:
the YAML is read twice, as data for pydantic and as a node tree that keeps each key's line, and a
pydantic error's location is followed through that tree. Used by ``calbatch screen``'s cases file
(:mod:`calbatch.screen.config`) and ``calbatch optimize --config`` (:mod:`calbatch.optimize.config`).

A location (``loc``) is a pydantic error location: keys (str) and list items (int), e.g.
``("cds", 2, "step")``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import CalbatchError


def read_yaml(path: Path, what: str) -> tuple[Any, Any]:
    """(node tree, data) of the YAML file ``path`` (``what``: the file's role in the errors, such as
    "cases file"); the tree is None for an empty file."""
    import yaml

    if not path.is_file():
        raise CalbatchError(f"{path}: no such {what}" if not path.exists() else f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CalbatchError(f"{path}: not a UTF-8 text file (a YAML {what} is expected)") from None
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader), yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CalbatchError(f"{where}: not valid YAML ({problem})") from None


def key_text(loc) -> str:
    """A location as the user writes it: ``fick.tolerance``, ``cds[2].step``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def walk(node, loc):
    """Follow ``loc`` (a pydantic location) through the YAML node tree; returns (the deepest node
    reached, the loc parts that named real keys or items). Parts naming no key (union tags) are skipped."""
    import yaml

    kept = []
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for k, v in node.value:
                if k.value == part:
                    node = v
                    kept.append(part)
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            kept.append(part)
    return node, tuple(kept)


def key_node(root, loc):
    """The node of the key ``loc[-1]`` itself (for an unknown key), or None."""
    import yaml

    parent, kept = walk(root, loc[:-1])
    if isinstance(parent, yaml.MappingNode):
        for k, _ in parent.value:
            if k.value == loc[-1]:
                return k
    return None


def duplicate_key(node, loc=()):
    """(loc, key node) of the first key given twice in one mapping, anywhere; or None."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen = set()
        for k, v in node.value:
            if k.value in seen:
                return loc + (k.value,), k
            seen.add(k.value)
            found = duplicate_key(v, loc + (k.value,))
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            found = duplicate_key(v, loc + (i,))
            if found:
                return found
    return None


def where(path: Path, node) -> str:
    """``FILE, line N`` of a node (just ``FILE`` for None)."""
    return f"{path}, line {node.start_mark.line + 1}" if node is not None else str(path)


def reject_nonfinite(node, path: Path) -> None:
    """A one-line error for the first .inf or .nan anywhere in the tree."""
    import yaml

    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:float":
        value = yaml.safe_load(node.value)
        if isinstance(value, float) and not math.isfinite(value):
            raise CalbatchError(f"{where(path, node)}: {node.value}: must be a finite number")
    for child in (node.value if isinstance(node, yaml.SequenceNode) else
                  [v for pair in node.value for v in pair] if isinstance(node, yaml.MappingNode) else []):
        reject_nonfinite(child, path)


def check_tree(path: Path, root) -> None:
    """What pydantic cannot see in the data: a key given twice (YAML keeps the last) and .inf/.nan."""
    dup = duplicate_key(root)
    if dup:
        raise CalbatchError(f"{where(path, dup[1])}: {key_text(dup[0])}: key given twice")
    reject_nonfinite(root, path)


def error_message(err: dict) -> str:
    """A pydantic error (one of ``ValidationError.errors()``) as a short phrase for the user."""
    kind, msg, ctx = err["type"], err["msg"], err.get("ctx") or {}
    if kind == "missing":
        return "required key is missing"
    if kind in ("float_type", "float_parsing", "int_type", "int_parsing", "int_from_float"):
        return f"expected {'an integer' if kind.startswith('int') else 'a number'}, got {err['input']!r}"
    if kind == "bool_type":
        return f"expected true or false, got {err['input']!r}"
    if kind in ("string_type",):
        return f"expected a string, got {err['input']!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {err['input']!r}"
    if kind == "list_type":
        return f"expected a list, got {err['input']!r}"
    if kind == "too_short":
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        return f"{err['input']!r} may hold only letters, digits and _ . + -"
    if kind == "finite_number":
        return f"must be a finite number, got {err['input']!r}"
    for bound, word in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if kind.startswith(f"{'less' if bound[0] == 'l' else 'greater'}_than") and bound in ctx:
            return f"must be {word} {ctx[bound]}, got {err['input']!r}"
    if kind == "literal_error":
        return f"{err['input']!r} is not one of {ctx.get('expected', '')}"
    return msg[0].lower() + msg[1:] if msg else kind


def allowed_keys(models: dict, loc) -> str:
    """`` (allowed: a, b)``: the keys of the mapping at ``loc``, from ``models`` (the pydantic model of
    each mapping, by its location with ``int`` for any list item); "" where none is known."""
    shape = tuple(int if isinstance(p, int) else p for p in loc)
    model = models.get(shape)
    if model is None:
        return ""
    names = [f.alias or n for n, f in model.model_fields.items()]
    return f" (allowed: {', '.join(names)})"


def validation_error(path: Path, root, exc, models: dict) -> CalbatchError:
    """One pydantic ``ValidationError`` as one line at its file line: a misspelt key first (it explains
    the 'missing' one beside it), with the keys allowed there (``models``: see :func:`allowed_keys`)."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        node = key_node(root, loc)
        _, kept = walk(root, loc[:-1])
        return CalbatchError(f"{where(path, node)}: {key_text(kept + (loc[-1],))}: unknown key"
                             f"{allowed_keys(models, kept)}")
    node, kept = walk(root, loc)
    if err["type"] == "missing":
        _, kept = walk(root, loc[:-1])
        kept = kept + (loc[-1],)
    return CalbatchError(f"{where(path, node)}: {key_text(kept)}: {error_message(err)}")
