"""The decision rules: a frame model's class scores -> the next frame's phase codes. Every rule
(:func:`decide`) ends with the voxelizer's void rule (slices above the highest solid voxel are void,
every other non-solid voxel pore), so void is only ever above the electrode:

- ``argmax``: the most probable class per voxel;
- ``conserve``: the AM and CBD voxel counts of the previous frame are kept, given to the voxels most
  probably AM (then CBD) -- per-step erosion cannot remove material;
- ``expected``: as ``conserve`` with the counts the model expects (the sum of its probabilities);
- ``budget``: the AM and CBD counts and the top of every frame that the model's phase budget
  (:mod:`calbatch.surrogate.budget`, fitted on its training series) plans from frame 0 and the schedule;
- ``particles`` (the default): the budget's counts and top, but the previous frame's particles (AM
  and CBD connected components) are moved whole, each by the shift along z that the network's
  probabilities favour, rather than re-decided voxel by voxel (:func:`move_particles`).
Ties are broken by voxel index, so the result is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _core
from ..electrode.volume import AM, CBD, CLASS_CODES, CODE_TO_CLASS, PORE, VOID
from ..errors import CalbatchError

PARTICLE_SHIFTS = sorted(range(-6, 7), key=lambda s: (abs(s), s))  # slices a particle may move a step
PARTICLE_NETWORK_WEIGHT = 1e-3  # the network's say over the moved particles' voxels
PARTICLE_SPLIT_EROSION = 4  # voxels of erosion that part touching AM spheres (chosen on validation)


@dataclass(frozen=True)
class Rule:
    """A decision rule: its ``name``; ``planned``: whether it takes the phase budget's counts and
    top (else the first void is the press plus the model's wall overlap); ``core``: how the C++ core
    decides a batch (None: the rule runs per case in numpy); ``lifts``: whether the frame is lifted
    to the planned top after (:func:`reach_planned_top`); ``help``: one line for the CLI."""

    name: str
    planned: bool
    core: _core.Decision | None
    lifts: bool
    help: str


RULES = {r.name: r for r in (
    Rule("particles", True, None, True, "particles moved whole as the network favours, to the AM/CBD counts and "
         "top the model's phase budget plans (the default)"),
    Rule("budget", True, _core.Decision.counts, True, "the planned counts and top, voxel by voxel"),
    Rule("conserve", False, _core.Decision.conserve, False, "the previous frame's counts kept"),
    Rule("expected", False, _core.Decision.counts, False, "the counts the model expects"),
    Rule("argmax", False, _core.Decision.argmax, False, "the most probable class per voxel"),
)}
DEFAULT_RULE = "particles"
NEAREST = Rule("nearest", False, _core.Decision.nearest, False, "the nearest code of a regressed output (paper models)")


def rule_named(name: str, parameter: str = "rule") -> Rule:
    """The rule called ``name``, or a one-line error naming ``parameter``."""
    if name not in RULES:
        raise CalbatchError(f"{parameter}: unknown rule {name!r} (one of {', '.join(RULES)})")
    return RULES[name]


def rules_help() -> str:
    """The rules, one clause each, for a CLI help text."""
    return "; ".join(f"{r.name}: {r.help}" for r in RULES.values())


def nearest_codes(out: np.ndarray) -> np.ndarray:
    """A regressed output's frame (paper models): the nearest class code per voxel, then the void rule."""
    return void_rule(CLASS_CODES[np.argmin(np.abs(out[..., None] - CLASS_CODES), axis=-1)])


def void_rule(codes: np.ndarray) -> np.ndarray:
    """The voxelizer's definition: above the highest slice holding a solid voxel void, elsewhere
    every non-solid voxel pore."""
    solid = (codes == AM) | (codes == CBD)
    rows = np.flatnonzero(solid.any(axis=(1, 2)))
    top = rows[-1] if rows.size else -1
    out = np.where(solid, codes, PORE).astype(np.uint8)
    out[top + 1:] = VOID
    return out


def expected_counts(below: np.ndarray) -> tuple[int, int]:
    """The AM and CBD voxel counts the model expects from class scores (n, 4) float32: the sums
    (float64) of p = score / max(((s0 + s1) + s2) + s3, 1e-30), in float32 as the core does it, rounded."""
    with np.errstate(all="ignore"):  # overflow, 0/0, inf/inf: IEEE results, as in the core
        total = np.maximum(((below[:, 0] + below[:, 1]) + below[:, 2]) + below[:, 3], np.float32(1e-30))
        sums = float((below[:, 2] / total).sum(dtype=np.float64)), float((below[:, 1] / total).sum(dtype=np.float64))
    return int(round(sums[0])), int(round(sums[1]))  # a sum that is not finite: ValueError or OverflowError


def decide(scores: np.ndarray, previous: np.ndarray, rule: str = "conserve", first_void: int | None = None,
           counts: tuple[int, int] | None = None) -> np.ndarray:
    """Codes (nz, ny, nx) from class scores (nz, ny, nx, 4) by ``rule`` (see the module); slices
    from ``first_void`` up (above the press) are void whatever the scores; ``counts``: the (AM, CBD)
    voxel counts of the ``budget`` rule (:func:`calbatch.surrogate.budget.plan`). The C++ core does the
    work (``_core.decide``), bit for bit as the numpy reference ``calbatch.electrode._reference.decide``."""
    r = rule_named(rule)
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    if scores.ndim != 4 or scores.shape[-1] != 4:
        raise CalbatchError(f"class scores: expected shape (nz, ny, nx, 4), got {scores.shape}")
    nz = scores.shape[0]
    fv = nz if first_void is None else int(min(max(first_void, 0), nz))
    if r.planned:
        if counts is None:
            raise CalbatchError(f"decision rule {rule}: no (AM, CBD) counts given")
        counts = int(counts[0]), int(counts[1])
    elif r.core is _core.Decision.conserve:
        counts = int(np.count_nonzero(previous == AM)), int(np.count_nonzero(previous == CBD))
    elif r.core is _core.Decision.counts:
        counts = expected_counts(scores[:fv].reshape(-1, 4))
    else:
        counts = None
    out = move_particles(scores, previous, fv, counts) if r.core is None else _core.decide(scores, fv, counts)
    return reach_planned_top(scores, out, fv, counts) if r.lifts else out


def probabilities(scores: np.ndarray) -> np.ndarray:
    return scores / np.maximum(scores.sum(axis=-1, keepdims=True), np.float32(1e-30))


def decide_near(codes: np.ndarray, probs: np.ndarray, first_void: int, counts, weight: float = 1e-3) -> np.ndarray:
    """The frame nearest ``codes`` with the planned (AM, CBD) ``counts``: the codes' one-hot plus
    ``weight`` x the network's probabilities ``probs`` (small: they only break the ties, where moved
    particles overlapped or left room)."""
    near = probs * np.float32(weight)
    near.reshape(-1, 4)[np.arange(codes.size), CODE_TO_CLASS[codes.ravel()]] += np.float32(1.0)
    return _core.decide(np.ascontiguousarray(near, dtype=np.float32), first_void, counts)


def particle_labels(mask: np.ndarray, erosion: int = 0) -> tuple[np.ndarray, int]:
    """Particle labels (1..n, gaps allowed) of ``mask`` and n: its connected components; with
    ``erosion``, the components of the mask eroded that many voxels (so touching spheres part at
    their necks), each voxel joining the nearest; a component too thin to survive the erosion stays
    one particle."""
    from scipy import ndimage

    whole, n_whole = ndimage.label(mask)
    if not erosion:
        return whole, n_whole
    cores, n = ndimage.label(ndimage.binary_erosion(mask, iterations=erosion))
    if n == 0:
        return whole, n_whole
    nearest = ndimage.distance_transform_edt(cores == 0, return_distances=False, return_indices=True)
    labels = np.where(mask, cores[tuple(nearest)], 0)
    has_core = np.zeros(n_whole + 1, dtype=bool)
    has_core[whole[cores > 0]] = True
    thin = mask & ~has_core[whole]
    labels[thin] = n + whole[thin]
    return labels, n + n_whole


def move_particles(scores: np.ndarray, previous: np.ndarray, first_void: int, counts) -> np.ndarray:
    """The ``particles`` rule: every AM and CBD particle of ``previous`` (a connected component;
    touching AM spheres parted by :func:`particle_labels`) moves whole along z, by the shift in
    :data:`PARTICLE_SHIFTS` under which its voxels are most probably its phase in the network's
    scores (the smallest such shift); AM wins where moved particles overlap, as in the voxelizer;
    then the planned counts (:func:`decide_near`). Re-deciding every voxel each step lets CBD spread
    over the AM surfaces (AM-CBD contact area 60 % above the DEM's after a free rollout, measured);
    particles that keep their shape do not."""
    nz, ny, nx = previous.shape
    probs = probabilities(scores)
    moved = np.where(previous == VOID, VOID, PORE).astype(np.uint8)
    shifts = np.asarray(PARTICLE_SHIFTS)
    reach = int(np.abs(shifts).max())
    for code, channel in ((CBD, 1), (AM, 2)):
        labels, n = particle_labels(previous == code, PARTICLE_SPLIT_EROSION if code == AM else 0)
        if n == 0:
            continue
        flat = np.flatnonzero(labels)  # voxel indices, z-major
        ids = labels.ravel()[flat] - 1
        # the channel padded with its end slices along z: a shifted index never leaves the array
        padded = np.pad(probs[..., channel], ((reach, reach), (0, 0), (0, 0)), mode="edge").ravel()
        base = flat + reach * ny * nx
        fit = np.stack([np.bincount(ids, weights=padded[base + s * ny * nx], minlength=n) for s in shifts])
        paste_shifted(moved, labels, shifts[np.argmax(fit, axis=0)], code, first_void)
    return decide_near(moved, probs, first_void, counts, PARTICLE_NETWORK_WEIGHT)


def paste_shifted(out: np.ndarray, labels: np.ndarray, shift: np.ndarray, code: int, first_void: int) -> None:
    """Write ``code`` into ``out`` where each particle of ``labels`` (1..n) lands after moving
    ``shift[label - 1]`` slices along z, kept between the collector and the slice below ``first_void``."""
    plane = out.shape[1] * out.shape[2]
    flat = np.flatnonzero(labels)
    zz = flat // plane + shift[labels.ravel()[flat] - 1]
    out.ravel()[np.clip(zz, 0, max(first_void, 1) - 1) * plane + flat % plane] = code


def solid_top(frame: np.ndarray) -> int:
    """Slices up to the highest one holding solid (0 for none)."""
    rows = np.flatnonzero(((frame == AM) | (frame == CBD)).any(axis=(1, 2)))
    return int(rows[-1] + 1) if rows.size else 0


def lift_particles(frame: np.ndarray, top: int, first_void: int) -> np.ndarray:
    """``frame`` stretched along z from ``top`` slices to ``first_void`` (collector fixed) the way a
    granular electrode springs back: every AM and CBD particle (a connected component) is moved up
    whole, by the stretch of its centroid, and the gaps open in the pore between them; AM wins
    where moved particles overlap (as in the voxelizer). Void above the electrode stays void."""
    from scipy import ndimage

    out = np.where(frame == VOID, VOID, PORE).astype(np.uint8)
    factor = first_void / top
    for code in (CBD, AM):
        labels, n = ndimage.label(frame == code)
        if n == 0:
            continue
        z = np.nonzero(labels)[0]
        ids = labels[labels > 0]
        centroid = np.bincount(ids, weights=z, minlength=n + 1)[1:] / np.bincount(ids, minlength=n + 1)[1:]
        paste_shifted(out, labels, np.rint((centroid + 0.5) * factor - 0.5 - centroid).astype(np.int64), code,
                      min(first_void, frame.shape[0]))
    return out


def reach_planned_top(scores: np.ndarray, decided: np.ndarray, first_void: int, counts) -> np.ndarray:
    """The ``budget`` rule's second pass: a frame whose material stops below the planned top
    (``first_void``) has its particles lifted up to it (:func:`lift_particles`) and is decided again
    with the planned counts, the network's probabilities breaking the ties (so the counts hold
    where lifted particles overlapped). Each step moves the material by a fraction of a voxel that
    the hard decision rounds away, which leaves the spring-back a few slices short by the end of
    the release; stretching the scores instead would stretch the particles themselves."""
    top = solid_top(decided)
    if not 0 < top < first_void:
        return decided
    return decide_near(lift_particles(decided, top, first_void), probabilities(scores), first_void, counts)
