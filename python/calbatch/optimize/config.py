"""The YAML file of ``calbatch optimize --config``: the electrode, the model, the target and the search
settings (the command's flags win over it), checked by pydantic, every error one line naming the
file, the line and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from ..common.yamlconfig import check_tree, read_yaml, validation_error, walk, where
from ..electrode.volume import DEFAULT_CBD_DIFFUSIVITY
from ..errors import CalbatchError
from .search import Target

CONFIG_EXAMPLE = """\
electrode: example          # a volume (.npy, .tif, file.h5:/dataset), a pack file (.h5), or example
model: model.onnx           # default: the shipped model
target: {porosity: 0.30}    # or {tau: 2.0}, or {minimize: tau, max_porosity: 0.32}
cd_range: [20, 50]          # percent; default: the model's trained range
grid: 5                     # CDs scanned before the refinement
xtol: 0.1                   # CD tolerance of the refinement (percent)
cbd_diffusivity: 0.3536     # Fick solves (tau targets); default 0.5^1.5
threads: 2                  # ONNX Runtime threads; default: its choice
"""

Number = Annotated[float, Strict()]  # 0.3 or 2; not "0.3", not true


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetSpec(_Strict):
    porosity: Annotated[Number, Field(gt=0, lt=1)] | None = None
    tau: Annotated[Number, Field(gt=0)] | None = None
    minimize: Literal["tau"] | None = None
    max_porosity: Annotated[Number, Field(gt=0, lt=1)] | None = None


class OptimizeFile(_Strict):
    electrode: Annotated[str, Field(min_length=1)] | None = None
    model: Annotated[str, Field(min_length=1)] | None = None
    target: TargetSpec
    cd_range: Annotated[list[Number], Field(min_length=2, max_length=2)] | None = None
    grid: Annotated[int, Strict(), Field(ge=2, le=1000)] = 5
    xtol: Annotated[Number, Field(gt=0)] = 0.1
    cbd_diffusivity: Annotated[Number, Field(ge=0)] = DEFAULT_CBD_DIFFUSIVITY
    threads: Annotated[int, Strict(), Field(ge=1, le=1024)] | None = None


# the model of each mapping, for the keys allowed there (calbatch.common.yamlconfig.allowed_keys)
_ALLOWED = {(): OptimizeFile, ("target",): TargetSpec}


def load_config(path: Path) -> dict:
    """An optimize YAML file (:data:`CONFIG_EXAMPLE`) as a dict of keyword values; a relative
    ``electrode`` or ``model`` is taken from the file's folder."""
    path = Path(path)
    root, data = read_yaml(path, "config file")
    if not isinstance(data, dict):
        raise CalbatchError(f"{path}: expected a mapping of keys (target:, electrode:, ...)")
    check_tree(path, root)
    try:
        cfg = OptimizeFile.model_validate(data)
    except ValidationError as exc:
        raise validation_error(path, root, exc, _ALLOWED) from None
    t = cfg.target
    given = [k for k, v in (("porosity", t.porosity), ("tau", t.tau), ("minimize", t.minimize)) if v is not None]
    node, _ = walk(root, ("target",))
    if len(given) != 1 or (t.minimize is None) != (t.max_porosity is None):
        raise CalbatchError(f"{where(path, node)}: target: give exactly one of porosity: X, tau: X or "
                            "minimize: tau with max_porosity: X")
    target = Target("min_tau", t.max_porosity) if t.minimize else Target(given[0], getattr(t, given[0]))
    out = cfg.model_dump(exclude={"target"})
    for key in ("electrode", "model"):
        value = out[key]
        if value and value != "example" and not Path(value.split(".h5:")[0]).is_absolute():
            out[key] = str(path.parent / value)
    return {**out, "target": target}
