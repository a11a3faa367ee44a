"""``calbatch tune``: an Optuna search over the main knobs of ``calbatch train``.

Each trial is a real, short training run (:func:`calbatch.model.train.train`, a few epochs on capped
windows) into ``OUT/trials/NNNN``, scored by one fixed validation loss so that trials with
different horizons or loss weights compare fairly: the kind's training loss (cross-entropy plus
``SCORE_VOL_WEIGHT`` x the phase-volume term for calbatch's model, MSE on the codes for the
paper's) unrolled ``score_horizon`` steps on the same seeded validation windows for every trial.
Validation series are drawn from the training side of the split; test series are never read.

The study lives in ``OUT/study.db`` (Optuna's SQLite storage), so ``--resume`` continues it up to
``trials`` in all (a trial cut off by a kill is marked failed and rerun as a new trial). After
every trial ``OUT/study.json`` (every trial) and ``OUT/best.json`` (the best configuration and the
``calbatch train`` options that reproduce it) are rewritten.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from ..errors import CalbatchError
from ..surrogate.budget import fit_series_files
from ..surrogate.contract import Kind
from .dataset import attach_budget, parse_split, scan, split
from .options import TrainOptions, TuneOptions, train_flag

STUDY_NAME = "calbatch-tune"
SCORE_VOL_WEIGHT = 0.1  # the phase-volume term's weight in the score: the training default, fixed


def suggest(trial, kind: str) -> tuple[dict, dict]:
    """One trial's network hyper-parameters and training options (the search space; the names
    are those of :class:`TrainOptions` and the networks' options)."""
    train_kw = {"lr": trial.suggest_float("lr", 3e-4, 3e-3, log=True)}
    if Kind.of(kind) is Kind.PAPER:
        config = {"filters": trial.suggest_categorical("filters", [8, 16, 32]),
                  "dense": trial.suggest_categorical("dense", [50, 150, 300])}
        return config, {**train_kw, "horizon": 1, "noise": 0.0, "vol_weight": 0.0}
    config = {"channels": trial.suggest_categorical("channels", [16, 24, 32]),
              "layers_coarse": trial.suggest_int("layers_coarse", 2, 6)}
    train_kw.update({"horizon": trial.suggest_int("horizon", 1, 3),
                     "noise": trial.suggest_float("noise", 0.0, 0.03),
                     "vol_weight": trial.suggest_float("vol_weight", 0.0, 0.3)})
    return config, train_kw


def validation_score(model, kind: str, val_infos, horizon: int, crop, batch_size: int, seed: int,
                     max_windows: int | None) -> float:
    """The mean loss (see the module) of ``model`` on the seeded validation windows."""
    import tensorflow as tf

    from .objective import unrolled_loss, validation_loss

    unroll = unrolled_loss(model, kind, SCORE_VOL_WEIGHT)
    step = tf.function(lambda x, cond, targets: unroll(x, cond, targets, False), reduce_retracing=True)
    return validation_loss(step, val_infos, horizon, crop, batch_size, seed, max_windows)


def _results(study, settings: dict, series: list[str]) -> tuple[dict, dict | None]:
    """(study.json, best.json) contents."""
    import optuna

    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
               "run": t.user_attrs.get("run"), "train_best_val": t.user_attrs.get("train_best_val"),
               "epochs": t.user_attrs.get("epochs"), "seconds": t.user_attrs.get("seconds")} for t in study.trials]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = None
    if done:
        b = min(done, key=lambda t: t.value)
        options = [x for k, v in b.params.items() for x in (train_flag(k), f"{v:.6g}" if isinstance(v, float) else str(v))]
        if Kind.of(settings["kind"]) is not Kind.CALBATCH:  # the default kind needs no flag
            options = [train_flag("kind"), settings["kind"], *options]
        best = {"number": b.number, "value": b.value, "params": b.params, "config": b.user_attrs.get("config"),
                "run": b.user_attrs.get("run"), "train_options": options,
                "command": " ".join(["calbatch", "train", *series, "--out", "RUN", *options])}
    study_json = {"study": STUDY_NAME, "storage": settings["storage"], "settings": settings,
                  "trials_complete": len(done), "best": best, "trials": trials}
    return study_json, best


def tune(series, out: Path, options: TuneOptions | None = None, resume: bool = False,
         progress: bool | None = None) -> dict:
    """Run (or with ``resume`` continue) the study in ``out`` up to ``options.trials`` trials
    (default :class:`TuneOptions`); returns the content of ``out/study.json``."""
    import optuna
    from tqdm import tqdm

    from ..electrode.series import atomic_text
    from .train import load_trained, train

    o = options or TuneOptions()
    out = Path(out)
    db = out / "study.db"
    if db.exists() and not resume:
        raise CalbatchError(f"{out}: holds a tuning study; pass --resume to continue it or choose another --out")
    if resume and not db.exists():
        raise CalbatchError(f"{out}: no study to resume (no study.db)")
    if not resume and (out / "trials").is_dir() and any((out / "trials").iterdir()):
        raise CalbatchError(f"{out}/trials: holds the runs of an earlier study; choose another --out")
    series = sorted(str(p) for p in series)
    test_split = parse_split(o.test_split) if o.test_split else None
    parts = split(scan(series), test_split, o.val_fraction, o.seed)
    if not parts["val"]:
        raise CalbatchError("dataset: the split leaves no validation series to score trials by "
                            "(give more series or a --val-fraction above 0)")
    if parts["train"]:  # the planned tops every trial's run conditions on (fitted on the training series)
        attach_budget(parts["val"], fit_series_files([s.path for s in parts["train"]], parts["train"][0].voxel_size))
    if Kind.of(o.kind).fixed_grid:
        o = replace(o, crop=None)  # fixed-grid model: whole frames
    settings = {"kind": o.kind, "epochs": o.epochs, "max_windows": o.max_windows, "max_val_windows": o.max_val_windows,
                "crop": list(o.crop) if o.crop else None, "batch_size": o.batch_size, "score_horizon": o.score_horizon,
                "test_split": test_split, "val_fraction": o.val_fraction, "seed": o.seed, "series": series,
                "validation_series": [s.path for s in parts["val"]],
                "score": f"loss over {o.score_horizon} unrolled steps, vol weight {SCORE_VOL_WEIGHT:g}",
                "storage": str(db)}
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db.resolve()}"
    if resume:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
        saved = study.user_attrs.get("settings", {})
        changed = [k for k in settings if k != "storage" and json.dumps(saved.get(k)) != json.dumps(settings[k])]
        if changed:
            k = changed[0]
            raise CalbatchError(f"--resume: {k} is {settings[k]!r} now but {saved.get(k)!r} in the study {db}; "
                                "trials must be scored alike")
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # cut off by a kill
    else:
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="minimize")
        study.set_user_attr("settings", settings)
    study.sampler = optuna.samplers.TPESampler(seed=o.seed + len(study.trials))

    def objective(trial) -> float:
        config, train_kw = suggest(trial, o.kind)
        run = out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run", str(run))
        trial.set_user_attr("config", config)
        t0 = time.perf_counter()
        r = train(series, run, TrainOptions(kind=o.kind, network=config, test_split=o.test_split,
                                            val_fraction=o.val_fraction, batch_size=o.batch_size, crop=o.crop,
                                            seed=o.seed, epochs=o.epochs, patience=o.epochs, max_windows=o.max_windows,
                                            max_val_windows=o.max_val_windows, **train_kw), progress=progress)
        model, _ = load_trained(run, "best")
        score = validation_score(model, o.kind, parts["val"], o.score_horizon, o.crop, o.batch_size, o.seed,
                                 o.max_val_windows)
        trial.set_user_attr("train_best_val", r["best_val"])
        trial.set_user_attr("epochs", r["epoch"])
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        return score

    def save() -> dict:
        study_json, best = _results(study, settings, series)
        atomic_text(out / "study.json", json.dumps(study_json, indent=1))
        if best is not None:
            atomic_text(out / "best.json", json.dumps(best, indent=1))
        return study_json

    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=o.trials, initial=min(done, o.trials), desc="tune", unit="trial", file=sys.stderr, disable=not show) as bar:
        for _ in range(max(o.trials - done, 0)):  # a failed trial uses up its place; --resume adds more
            study.optimize(objective, n_trials=1)
            bar.update(1)
            result = save()
            if result["best"]:
                bar.set_postfix(best=f"{result['best']['value']:.4f}")
    return save()
