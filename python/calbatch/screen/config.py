"""The cases file of ``calbatch screen``: YAML checked by pydantic, every error one line naming the
file, the line and key, and the allowed values.

```yaml
model: path/to/model.onnx          # default: the shipped model
electrodes:                        # files, globs (file.h5:/dataset allowed), or the word example
  - example
  - {path: "packs/*.npy", name: pack}   # name: a prefix for the files the glob finds
cds: [20, 30, {from: 35, to: 50, step: 2.5}]   # percent; a range includes both ends
fick: {enabled: true, cbd_diffusivity: 0.354, tolerance: 1.0e-4, ranks_per_case: 1}
keep: {final_volumes: false, series: false}
decision: conserve                 # argmax | conserve | expected
voxel_size: 0.4                    # um; default: the model's
batch_size: 1                      # cases sharing one network call
threads: 0                         # ONNX Runtime threads per rank; 0: its default
```

Relative paths are taken from the cases file's folder. Cases are electrodes x CDs, with stable ids
``<electrode>@cd<CD>``.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Strict, Tag, ValidationError

from ..errors import CalbatchError

MAX_CASES = 1_000_000
Number = Annotated[float, Strict()]  # 20 or 20.5; not "20", not true


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CdRange(_Strict):
    from_: Number = Field(alias="from")
    to: Number
    step: Annotated[Number, Field(gt=0)]


def _cd_kind(value: Any) -> str:
    return "range" if isinstance(value, dict) else "number"


CdItem = Annotated[Annotated[Number, Tag("number")] | Annotated[CdRange, Tag("range")], Discriminator(_cd_kind)]


class ElectrodeSpec(_Strict):
    path: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")] | None = None


def _electrode_kind(value: Any) -> str:
    return "file" if isinstance(value, dict) else "spec"


ElectrodeItem = Annotated[Annotated[Annotated[str, Field(min_length=1)], Tag("spec")] | Annotated[ElectrodeSpec, Tag("file")], Discriminator(_electrode_kind)]


class Fick(_Strict):
    enabled: Annotated[bool, Strict()] = True
    cbd_diffusivity: Annotated[Number, Field(ge=0)] = 0.354
    tolerance: Annotated[Number, Field(gt=0, lt=1)] = 1e-4
    ranks_per_case: Annotated[int, Strict(), Field(ge=1)] = 1


class Keep(_Strict):
    final_volumes: Annotated[bool, Strict()] = False
    series: Annotated[bool, Strict()] = False


class CasesFile(_Strict):
    model: Annotated[str, Field(min_length=1)] | None = None
    electrodes: Annotated[list[ElectrodeItem], Field(min_length=1)]
    cds: Annotated[list[CdItem], Field(min_length=1)]
    fick: Fick = Fick()
    keep: Keep = Keep()
    decision: Literal["argmax", "conserve", "expected"] = "conserve"
    voxel_size: Annotated[Number, Field(gt=0)] | None = None
    batch_size: Annotated[int, Strict(), Field(ge=1, le=1024)] = 1
    threads: Annotated[int, Strict(), Field(ge=0, le=1024)] = 0


# keys allowed in each mapping, by the path of that mapping (ints as the item marker)
_ALLOWED = {(): CasesFile, ("fick",): Fick, ("keep",): Keep, ("cds", int): CdRange, ("electrodes", int): ElectrodeSpec}


@dataclass(frozen=True)
class Electrode:
    name: str
    spec: str  # a volume spec for read_volume (file or file.h5:/dataset)
    line: int | None = None


@dataclass(frozen=True)
class Case:
    index: int
    id: str
    electrode: Electrode
    cd: float


@dataclass
class Screen:
    """A checked cases file: its settings, the electrodes and the cases (electrodes x CDs)."""
    source: Path
    model: Path
    model_given: bool
    config: CasesFile
    electrodes: list[Electrode]
    cds: list[float]
    cases: list[Case]

    def settings(self) -> dict:
        """What a resumed run must share with the first (the results depend on it)."""
        c = self.config
        return {"model": str(self.model), "decision": c.decision, "voxel_size": c.voxel_size,
                "fick": c.fick.model_dump(), "keep": c.keep.model_dump()}


# --- YAML with line numbers -----------------------------------------------------------------------

def _key_text(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _walk(node, loc):
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


def _key_node(root, loc):
    """The node of the key ``loc[-1]`` itself (for an unknown key), or None."""
    import yaml

    parent, kept = _walk(root, loc[:-1])
    if isinstance(parent, yaml.MappingNode):
        for k, _ in parent.value:
            if k.value == loc[-1]:
                return k
    return None


def _duplicate_key(node, loc=()):
    """(loc, key node) of the first key given twice in one mapping, anywhere; or None."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen = set()
        for k, v in node.value:
            if k.value in seen:
                return loc + (k.value,), k
            seen.add(k.value)
            found = _duplicate_key(v, loc + (k.value,))
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            found = _duplicate_key(v, loc + (i,))
            if found:
                return found
    return None


def _where(path: Path, node) -> str:
    return f"{path}, line {node.start_mark.line + 1}" if node is not None else str(path)


def _allowed_keys(loc) -> str:
    shape = tuple(int if isinstance(p, int) else p for p in loc)
    model = _ALLOWED.get(shape)
    if model is None:
        return ""
    names = [f.alias or n for n, f in model.model_fields.items()]
    return f" (allowed: {', '.join(names)})"


def _message(err: dict) -> str:
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


def _error(path: Path, root, err: dict) -> CalbatchError:
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        node = _key_node(root, loc)
        _, kept = _walk(root, loc[:-1])
        return CalbatchError(f"{_where(path, node)}: {_key_text(kept + (loc[-1],))}: unknown key{_allowed_keys(kept)}")
    node, kept = _walk(root, loc)
    if err["type"] == "missing":
        _, kept = _walk(root, loc[:-1])
        kept = kept + (loc[-1],)
    return CalbatchError(f"{_where(path, node)}: {_key_text(kept)}: {_message(err)}")


def _reject_nonfinite(node, path: Path) -> None:
    import yaml

    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:float":
        value = yaml.safe_load(node.value)
        if isinstance(value, float) and not math.isfinite(value):
            raise CalbatchError(f"{_where(path, node)}: {node.value}: must be a finite number")
    for child in (node.value if isinstance(node, yaml.SequenceNode) else
                  [v for pair in node.value for v in pair] if isinstance(node, yaml.MappingNode) else []):
        _reject_nonfinite(child, path)


def parse(path: str | os.PathLike) -> tuple[CasesFile, Any]:
    """The cases file as a checked :class:`CasesFile` and its YAML node tree (for line numbers)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CalbatchError(f"{path}: no such cases file" if not path.exists() else f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CalbatchError(f"{path}: not a UTF-8 text file (a YAML cases file is expected)") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CalbatchError(f"{where}: not valid YAML ({problem})") from None
    if root is None:
        raise CalbatchError(f"{path}: the cases file is empty (it needs at least electrodes: and cds:)")
    if not isinstance(data, dict):
        raise CalbatchError(f"{_where(path, root)}: expected a mapping of keys (electrodes:, cds:, ...), "
                            f"got a {type(data).__name__}")
    dup = _duplicate_key(root)
    if dup:
        raise CalbatchError(f"{_where(path, dup[1])}: {_key_text(dup[0])}: key given twice")
    _reject_nonfinite(root, path)
    for key in ("fick", "keep"):  # `fick: off`, `keep: on` as shorthand
        if isinstance(data.get(key), bool):
            data[key] = {"enabled": data[key]} if key == "fick" else {"final_volumes": data[key], "series": data[key]}
    try:
        return CasesFile.model_validate(data), root
    except ValidationError as exc:
        errors = exc.errors()  # a misspelt key first: it explains the 'missing' one beside it
        raise _error(path, root, next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])) from None


# --- electrodes and CDs ---------------------------------------------------------------------------

def expand_cds(config: CasesFile, path: Path, root) -> list[float]:
    """The CD values, sorted, each once (rounded to 1e-6 %); every value must lie in (0, 90)."""
    values: list[float] = []
    for i, item in enumerate(config.cds):
        node, _ = _walk(root, ("cds", i))
        if isinstance(item, CdRange):
            span = item.to - item.from_
            if span < 0:
                raise CalbatchError(f"{_where(path, node)}: cds[{i}]: 'from' {item.from_:g} is above 'to' {item.to:g}")
            n = int(math.floor(span / item.step + 1e-9)) + 1
            if n > MAX_CASES:
                raise CalbatchError(f"{_where(path, node)}: cds[{i}]: {n} values; at most {MAX_CASES} (a larger step)")
            new = [item.from_ + k * item.step for k in range(n)]
        else:
            new = [item]
        for v in new:
            if not 0 < v < 90:
                raise CalbatchError(f"{_where(path, node)}: cds[{i}]: CD {v:g} is outside the allowed (0, 90) percent")
        values.extend(round(v, 6) for v in new)
    return sorted(set(values))


def _resolve(spec: str, base: Path) -> tuple[str, str | None]:
    from ..volume import split_h5_path

    file, inner = split_h5_path(spec)
    file = os.path.expanduser(file)
    if not os.path.isabs(file):
        file = str(base / file)
    return file, inner


def expand_electrodes(config: CasesFile, path: Path, root) -> list[Electrode]:
    """The electrode files (globs expanded, sorted), each with a unique name."""
    from ..data import example_volume_path

    out: list[Electrode] = []
    for i, item in enumerate(config.electrodes):
        node, _ = _walk(root, ("electrodes", i))
        line = node.start_mark.line + 1 if node is not None else None
        spec, name = (item.path, item.name) if isinstance(item, ElectrodeSpec) else (item, None)
        if spec == "example":
            out.append(Electrode(name or "example", example_volume_path(), line))
            continue
        file, inner = _resolve(spec, path.parent.resolve())
        if glob.has_magic(file):
            found = sorted(glob.glob(file))
            if not found:
                raise CalbatchError(f"{_where(path, node)}: electrodes[{i}]: {spec!r} matches no file")
        elif not os.path.isfile(file):
            raise CalbatchError(f"{_where(path, node)}: electrodes[{i}]: {file}: no such file "
                                "(a volume file, a glob, or the word example)")
        else:
            found = [file]
        for f in found:
            stem = Path(f).stem if inner is None else f"{Path(f).stem}{inner.replace('/', '_')}"
            label = stem if name is None else (name if len(found) == 1 else f"{name}_{stem}")
            out.append(Electrode(label, f if inner is None else f"{f}:{inner}", line))
    seen: dict[str, Electrode] = {}
    for e in out:
        if e.name in seen:
            raise CalbatchError(f"{path}, line {e.line}: electrode name {e.name!r} is used twice ({seen[e.name].spec} "
                                f"and {e.spec}); give each a distinct name: ({{path: ..., name: ...}})")
        seen[e.name] = e
    return out


def case_id(electrode: str, cd: float) -> str:
    return f"{electrode}@cd{cd:g}"


def load(path: str | os.PathLike, model: str | os.PathLike | None = None) -> Screen:
    """Read and check a cases file; ``model`` (the command line's --model) overrides its model."""
    from .predictor import shipped_model

    path = Path(path)
    config, root = parse(path)
    if model is not None:
        model_path, given = Path(model), True
    elif config.model is not None:
        model_path, given = Path(_resolve(config.model, path.parent)[0]), True
    else:
        model_path, given = shipped_model(f"`model:` in {path} or --model"), False
    if given and not model_path.is_file():
        node = None if model is not None else _walk(root, ("model",))[0]
        raise CalbatchError(f"{_where(path, node) if model is None else '--model'}: {model_path}: no such model file")
    cds = expand_cds(config, path, root)
    electrodes = expand_electrodes(config, path, root)
    if len(cds) * len(electrodes) > MAX_CASES:
        raise CalbatchError(f"{path}: {len(electrodes)} electrodes x {len(cds)} CDs is more than {MAX_CASES} cases")
    cases = [Case(k, case_id(e.name, cd), e, cd) for k, (e, cd) in enumerate((e, cd) for e in electrodes for cd in cds)]
    return Screen(path, model_path.resolve(), given, config, electrodes, cds, cases)
