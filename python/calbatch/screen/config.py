"""The cases file of ``calbatch screen``: YAML checked by pydantic, every error one line naming the
file, the line and key, and the allowed values.

```yaml
model: path/to/model.onnx          # default: the shipped model
electrodes:                        # files, globs (file.h5:/dataset allowed), or the word example
  - example
  - {path: "packs/*.npy", name: pack}   # name: a prefix for the files the glob finds
cds: [20, 30, {from: 35, to: 50, step: 2.5}]   # percent; a range includes both ends
fick: {enabled: true, cbd_diffusivity: 0.3536, tolerance: 1.0e-4, ranks_per_case: 1}   # default D: 0.5^1.5
keep: {final_volumes: false, series: false}
decision: particles                # a decision rule (calbatch rollout --help lists them)
voxel_size: 0.4                    # um; default: the model's
batch_size: 1                      # cases sharing one network call
threads: 0                         # ONNX Runtime threads per rank; 0: its default
backend: cpu                       # where the network runs (calbatch.surrogate.backends)
allow_extrapolation: false         # run CDs further outside the model's trained range than its margin
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

from ..common.yamlconfig import check_tree, read_yaml, validation_error, walk, where
from ..electrode.volume import DEFAULT_CBD_DIFFUSIVITY
from ..errors import CalbatchError
from ..surrogate.backends import BACKENDS
from ..surrogate.rules import DEFAULT_RULE, RULES

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
    cbd_diffusivity: Annotated[Number, Field(ge=0)] = DEFAULT_CBD_DIFFUSIVITY
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
    decision: Literal[tuple(RULES)] = DEFAULT_RULE
    voxel_size: Annotated[Number, Field(gt=0)] | None = None
    batch_size: Annotated[int, Strict(), Field(ge=1, le=1024)] = 1
    threads: Annotated[int, Strict(), Field(ge=0, le=1024)] = 0
    backend: Literal[BACKENDS] = BACKENDS[0]
    allow_extrapolation: Annotated[bool, Strict()] = False


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
        """What a resumed run must share with the first (the results depend on it; how many ranks
        share a Fick solve does not, and the model is compared by content with the case list)."""
        c = self.config
        return {"decision": c.decision, "voxel_size": c.voxel_size,
                "fick": c.fick.model_dump(exclude={"ranks_per_case"}), "keep": c.keep.model_dump()}


# --- the file -----------------------------------------------------------------------------------

def parse(path: str | os.PathLike) -> tuple[CasesFile, Any]:
    """The cases file as a checked :class:`CasesFile` and its YAML node tree (for line numbers)."""
    path = Path(path)
    root, data = read_yaml(path, "cases file")
    if root is None:
        raise CalbatchError(f"{path}: the cases file is empty (it needs at least electrodes: and cds:)")
    if not isinstance(data, dict):
        raise CalbatchError(f"{where(path, root)}: expected a mapping of keys (electrodes:, cds:, ...), "
                            f"got a {type(data).__name__}")
    check_tree(path, root)
    for key in ("fick", "keep"):  # `fick: off`, `keep: on` as shorthand
        if isinstance(data.get(key), bool):
            data[key] = {"enabled": data[key]} if key == "fick" else {"final_volumes": data[key], "series": data[key]}
    try:
        return CasesFile.model_validate(data), root
    except ValidationError as exc:
        raise validation_error(path, root, exc, _ALLOWED) from None


# --- electrodes and CDs ---------------------------------------------------------------------------

def expand_cds(config: CasesFile, path: Path, root) -> list[float]:
    """The CD values, sorted, each once (rounded to 1e-6 %); every value must lie in (0, 90)."""
    values: list[float] = []
    for i, item in enumerate(config.cds):
        node, _ = walk(root, ("cds", i))
        if isinstance(item, CdRange):
            span = item.to - item.from_
            if span < 0:
                raise CalbatchError(f"{where(path, node)}: cds[{i}]: 'from' {item.from_:g} is above 'to' {item.to:g}")
            n = int(math.floor(span / item.step + 1e-9)) + 1
            if n > MAX_CASES:
                raise CalbatchError(f"{where(path, node)}: cds[{i}]: {n} values; at most {MAX_CASES} (a larger step)")
            new = [item.from_ + k * item.step for k in range(n)]
            if item.to - new[-1] > 1e-6:  # both ends, also when the step does not land on 'to'
                new.append(item.to)
        else:
            new = [item]
        for v in new:
            if not 0 < v < 90:
                raise CalbatchError(f"{where(path, node)}: cds[{i}]: CD {v:g} is outside the allowed (0, 90) percent")
        values.extend(round(v, 6) for v in new)
    return sorted(set(values))


def _resolve(spec: str, base: Path) -> tuple[str, str | None]:
    from ..electrode.volume import split_h5_path

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
        node, _ = walk(root, ("electrodes", i))
        line = node.start_mark.line + 1 if node is not None else None
        spec, name = (item.path, item.name) if isinstance(item, ElectrodeSpec) else (item, None)
        if spec == "example":
            out.append(Electrode(name or "example", example_volume_path(), line))
            continue
        file, inner = _resolve(spec, path.parent.resolve())
        if glob.has_magic(file):
            found = sorted(glob.glob(file))
            if not found:
                raise CalbatchError(f"{where(path, node)}: electrodes[{i}]: {spec!r} matches no file")
        elif os.path.isdir(file):
            raise CalbatchError(f"{where(path, node)}: electrodes[{i}]: {file} is a folder, not a volume file "
                                f"(name its files, e.g. {spec.rstrip('/')}/*.npy)")
        elif not os.path.isfile(file):
            raise CalbatchError(f"{where(path, node)}: electrodes[{i}]: {file}: no such file "
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
    from ..surrogate.predictor import shipped_model

    path = Path(path)
    config, root = parse(path)
    if model is not None:
        model_path, given = Path(model), True
    elif config.model is not None:
        model_path, given = Path(_resolve(config.model, path.parent)[0]), True
    else:
        model_path, given = shipped_model(f"`model:` in {path} or --model"), False
    if given and not model_path.is_file():
        node = None if model is not None else walk(root, ("model",))[0]
        raise CalbatchError(f"{where(path, node) if model is None else '--model'}: {model_path}: no such model file")
    cds = expand_cds(config, path, root)
    electrodes = expand_electrodes(config, path, root)
    if len(cds) * len(electrodes) > MAX_CASES:
        raise CalbatchError(f"{path}: {len(electrodes)} electrodes x {len(cds)} CDs is more than {MAX_CASES} cases")
    cases = [Case(k, case_id(e.name, cd), e, cd) for k, (e, cd) in enumerate((e, cd) for e in electrodes for cd in cds)]
    return Screen(path, model_path.resolve(), given, config, electrodes, cds, cases)
