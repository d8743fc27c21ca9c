"""Running GEO-Bench evaluations: features -> heads -> metrics with bootstrap CIs -> results.json and a table.

Classification (DINOv3's protocol): logistic regression on the CLS token with C chosen on ``valid`` and a refit
on train+valid; kNN (k = 5, 20, cosine) fitted on train. m-bigearthnet is multi-label: one-vs-rest, F1 (micro,
threshold 0.5) and mAP. Segmentation: linear and DPT heads trained on the train split (learning rate chosen on
``valid`` when several are given), mIoU on test from an accumulated confusion matrix.

Each task runs on its own: a task whose files cannot be read, or whose data a protocol cannot use (an empty
split, a single training class), is recorded with a one-line reason naming the task, the file and what to do,
and the run goes on with the next one. results.json is rewritten after every task with ``status: running``, and
says ``complete`` only when every task ran every protocol.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone

import numpy as np

from geodino.errors import DatasetError, EnvironmentFault, GeodinoError, Interrupted, output_fault
from geodino.geobench.features import InputPrep, extract_features
from geodino.geobench.protocol import MODEL_CARD_MEANS, load_protocol
from geodino.geobench.reader import SPLITS, GeoBenchTask, benchmark_root, resolve_task_name
from geodino.geobench.report import aggregate_results, write_results
from geodino.heads import (DPTHead, LinearHead, LogRegProtocol, bootstrap_ci, c_grid, class_problem, dpt_layers,
                           evaluate_head, f1_counts, f1_from_counts, f1_micro, knn_predict, mean_average_precision,
                           miou, seeded, train_head)

__all__ = ["run_geobench", "Progress"]

log = logging.getLogger(__name__)

Progress = Callable[[str, str, int, "int | None"], None]
"""``progress(task, stage, done, total)``: stage is "features train", "logreg", "linear lr=0.001 seed 0", ...;
``total`` None while a stage's size is unknown."""


def _ci(metric, n, ev) -> list[float]:
    lo, hi = bootstrap_ci(metric, n, n_boot=ev["bootstrap"], level=ev["ci"])
    return [100 * lo, 100 * hi]


class _Task:
    """One task's run: its splits, the partition file each came from, and the problems met."""

    def __init__(self, task: GeoBenchTask, cfg: dict, partition: str, progress: Progress | None):
        self.task, self.cfg, self.partition = task, cfg, partition
        self.progress = progress
        self.names: dict[str, list[str]] = {}
        self.parts: dict[str, str] = {}
        self.files: dict[str, str] = {}
        self.problems: list[str] = []
        for split in SPLITS:
            # Nx partitions share default's valid/test unless they have their own
            part = partition if split == "train" or split in task.partitions.get(partition, {}) else "default"
            self.names[split] = task.split(split, part)
            self.parts[split] = part
            self.files[split] = str(task.partition_file(part))
            task.check_samples(self.names[split], part)

    def cb(self, stage: str):
        if self.progress is None:
            return None
        return lambda done, total: self.progress(self.task.name, stage, done, total)

    def not_applicable(self, protocol: str, reason: str, fix: str) -> dict:
        line = f"{self.task.name}: {protocol} is not applicable: {reason}; {fix}"
        if line not in self.problems:
            self.problems.append(line)
            log.info("%s", line)
        return {"status": "not applicable", "reason": line}

    def split_reason(self, split: str, what: str) -> str:
        return f"the {split} split of {self.files[split]} {what}"

    def empty(self, feats: dict, what: str) -> dict:
        """Not applicable (``what``: every protocol, every head): the test or else the train split is empty."""
        split = "test" if feats["test"] is None else "train"
        return self.not_applicable(what, self.split_reason(split, "is empty"),
                                   f"use a partition with samples in {split} (--partition default)")


def _classification(run: _Task, feats: dict) -> dict:
    task, cfg = run.task, run.cfg
    ev, cc = cfg["evaluation"], cfg["classification"]
    tr, va, te = feats["train"], feats["valid"], feats["test"]
    multilabel = task.kind == "multilabel"
    if te is None or tr is None:
        return {p: run.empty(feats, "every protocol") for p in cc["protocols"]}
    out: dict = {}
    ytr, yte = tr.labels, te.labels
    if not multilabel:
        for split, y in (("train", ytr), ("test", yte), ("valid", va.labels if va is not None else None)):
            if y is not None and len(y) and (y.min() < 0 or y.max() >= task.n_classes):
                raise DatasetError(f"{task.name}: labels of the {split} split ({run.files[split]}) reach "
                                   f"{int(y.max())}, but {task.specs_path} declares {task.n_classes} classes; "
                                   "download the task again")
    if "logreg" in cc["protocols"]:
        lr = cc["logreg"]
        problem = class_problem(ytr, multilabel)
        if problem:
            out["logreg"] = run.not_applicable("logistic regression", run.split_reason("train", problem),
                                               "use a partition whose train split holds at least 2 classes (kNN ran)")
        elif va is None:
            out["logreg"] = run.not_applicable("logistic regression", run.split_reason("valid", "is empty"),
                                               "C cannot be chosen without it; use a partition with a valid split "
                                               "(kNN ran)")
        else:
            proto = LogRegProtocol(c_grid(lr["c_min"], lr["c_max"], lr["c_num"]), lr["max_iter"], multilabel,
                                   lr["n_jobs"])
            cb = run.cb(f"logreg ({lr['c_num']} C)") or (lambda done, total: None)
            cb(0, None)
            res = proto.fit_predict(tr.cls, ytr, va.cls, va.labels, te.cls)
            cb(1, 1)
            out["logreg"] = _scores(res["pred"], yte, multilabel, ev)
            out["logreg"].update({"C": res["C"], "valid_score": 100 * res["valid"]})
    if "knn" in cc["protocols"]:
        for k in cc["knn"]["k"]:
            pred = knn_predict(tr.cls, ytr, te.cls, k, task.n_classes, multilabel)
            out[f"knn{k}"] = _scores(pred, yte, multilabel, ev)
    return out


def _scores(pred, y, multilabel: bool, ev: dict) -> dict:
    n = len(y)
    if multilabel:
        counts = f1_counts(y, pred)  # bootstrap on per-sample counts: heads/metrics.py says why
        return {"metric": "f1_micro", "value": 100 * f1_micro(y, pred),
                "ci": _ci(lambda i: f1_from_counts(counts[i]), n, ev), "mAP": 100 * mean_average_precision(y, pred)}
    from sklearn.metrics import accuracy_score

    correct = (np.asarray(pred) == np.asarray(y)).astype(float)
    return {"metric": "accuracy", "value": 100 * float(accuracy_score(y, pred)),
            "ci": _ci(lambda i: correct[i].mean(), n, ev)}


def _segmentation(run: _Task, feats: dict, device, seeds: list[int]) -> dict:
    task, cfg = run.task, run.cfg
    sc, ev = cfg["segmentation"], cfg["evaluation"]
    tr, va, te = feats["train"], feats["valid"], feats["test"]
    n_classes = task.n_classes
    ignore = sc["ignore_index"]
    exclude = sc["exclude_classes"]
    out: dict = {}
    for head_name in sc["heads"]:
        if tr is None or te is None:
            out[head_name] = run.empty(feats, "every head")
            continue
        if len(sc["lr"]) > 1 and va is None:
            out[head_name] = run.not_applicable(
                f"the {head_name} head", run.split_reason("valid", "is empty"),
                f"the learning rate cannot be chosen; pass one: --set segmentation.lr={sc['lr'][0]}")
            continue
        per_seed, cms, chosen_lr = [], [], []
        for seed in seeds:
            best = None
            for lr in sc["lr"]:
                with seeded(seed, device):  # the initial weights too: --seeds decide the whole head
                    dim = tr.patches.shape[2]
                    head = (LinearHead(dim, n_classes, sc["dropout"]) if head_name == "linear" else
                            DPTHead(dim, n_classes, features=sc["dpt_features"], dropout=sc["dropout"]))
                train_head(head, tr.patches, tr.masks, iterations=sc["iterations"], batch_size=sc["batch_size"],
                           lr=lr, weight_decay=sc["weight_decay"], warmup=sc["warmup"],
                           ignore_index=-100 if ignore is None else ignore, seed=seed, device=device,
                           progress=run.cb(f"{head_name} lr={lr:g} seed {seed}"))
                if len(sc["lr"]) > 1:
                    cm_va, _ = evaluate_head(head, va.patches, va.masks, n_classes, ignore_index=ignore, device=device,
                                             progress=run.cb(f"{head_name} lr={lr:g} seed {seed} valid"))
                    score = miou(cm_va, exclude)
                else:
                    score = 0.0
                if best is None or score > best[0]:
                    best = (score, lr, head)
            _, lr, head = best
            chosen_lr.append(lr)
            cm, per_sample = evaluate_head(head, te.patches, te.masks, n_classes, ignore_index=ignore, device=device,
                                           progress=run.cb(f"{head_name} seed {seed} test"))
            per_seed.append(100 * miou(cm, exclude))
            cms.append(per_sample)
        stack = np.stack(cms[0])
        ci = _ci(lambda i: miou(stack[i].sum(0), exclude), len(stack), ev)
        out[head_name] = {"metric": "mIoU", "value": float(np.mean(per_seed)), "seeds": per_seed,
                          "std": float(np.std(per_seed)), "ci": ci, "ci_seed": seeds[0], "lr": chosen_lr,
                          "excluded_classes": exclude, "ignore_index": ignore}
    return out


def _primary(task_kind: str, res: dict) -> tuple[str, float] | None:
    order = ["logreg", "knn20", "knn5"] if task_kind != "segmentation" else ["dpt", "linear"]
    return next(((k, res[k]["value"]) for k in order if "value" in res.get(k, {})), None)


def _run_task(root, info, cfg: dict, engine, model_name: str, *, partition, seeds, cache_dir, dev, progress,
              wall: dict) -> dict:
    ev = cfg["evaluation"]
    part = partition or ev["partition"]
    task_seeds = list(seeds) if seeds is not None else list(ev["seeds"])
    task = GeoBenchTask(root, info.name)
    run = _Task(task, cfg, part, progress)
    seg = task.kind == "segmentation"
    i = cfg["input"]
    prep = InputPrep(tuple(i["bands"]), tuple(i["stats"]), i["normalization"],
                     (cfg["segmentation"]["input_size"] if seg else None) or i["size"], i["date_index"])
    task.check_bands(prep.bands)
    layers = dpt_layers(engine.model.arch.depth) if seg else None
    t0 = time.perf_counter()
    feats = {split: extract_features(task, split, engine, prep, partition=run.parts[split], layers=layers,
                                     cache_dir=cache_dir, batch_size=ev["feature_batch_size"],
                                     progress=run.cb(f"features {split}")) if run.names[split] else None
             for split in SPLITS}
    wall["features"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = _segmentation(run, feats, dev, task_seeds) if seg else _classification(run, feats)
    wall["heads"] = time.perf_counter() - t0
    prim = _primary(task.kind, res)
    any_feats = next((f for f in feats.values() if f is not None), None)
    return {
        "status": "ok" if not run.problems else ("partial" if prim else "failed"), "problems": run.problems,
        "kind": task.kind, "card_name": info.card_name, "partition": part, "partition_files": run.files,
        "seeds": task_seeds, "input": prep.to_dict(),
        "normalization": {"mean": any_feats.attrs["mean"], "std": any_feats.attrs["std"]} if any_feats else None,
        "layers": layers, "sizes": {s: len(n) for s, n in run.names.items()}, "results": res,
        "primary": {"protocol": prim[0], "value": prim[1]} if prim else None,
        "model_card": cfg.get("model_card", {}).get(model_name),
        "normalization_bounds": cfg.get("normalization_bounds"),
    }


def run_geobench(tasks: list[str], model_name: str, weights: str | None, *, benchmark_dir=None,
                 config_dir=None, overrides: dict | None = None, budget: str = "full",
                 cache_dir: str | os.PathLike = "geobench-cache", out_dir: str | os.PathLike = "geobench-results",
                 device: str | None = None, seeds=None, partition: str | None = None, arch: dict | None = None,
                 command: str | None = None, progress: Progress | None = None,
                 on_task: Callable[[str, dict], None] | None = None, raise_errors: bool = False,
                 precision: str = "auto") -> dict:
    """Evaluate ``model_name`` with ``weights`` on ``tasks``; writes results.json and results.md to ``out_dir``.

    A task that fails is recorded (``status: failed`` and a one-line ``problems`` entry) and the others still
    run; ``raise_errors`` raises instead (for debugging). ``on_task(name, record)`` is called after each task.
    The returned dict's ``status`` is ``complete`` only if every task ran every protocol.
    """

    from geodino import __version__
    from geodino._provenance import library_call, origin
    from geodino.engine import EngineSpec, get_engine
    from geodino.engine.engine import resolve_device
    from geodino.models import get_config

    root = benchmark_root(benchmark_dir)
    infos = [resolve_task_name(t) for t in tasks]
    cfgs = {info.name: load_protocol(info.name, config_dir, overrides, budget) for info in infos}
    dev = resolve_device(device or "auto")
    # features come from the embed engine: one precision policy, one batching, one input contract
    spec = EngineSpec(model_name, str(weights if weights is not None else get_config(model_name).hf_repo),
                      str(dev), precision, tuple(sorted((arch or {}).items())))
    engine = get_engine(spec)
    winfo = engine.weights_info
    results: dict = {"geodino_version": __version__, "model": model_name, "arch_overrides": arch or {},
                     "weights": winfo.to_dict(), "random_weights": bool(winfo.random), "benchmark_dir": str(root),
                     "budget": budget, "device": str(dev), "numerics": engine.numerics(),
                     **origin(command if command is not None else library_call(
                         "geodino.geobench.run_geobench", tasks=tasks, model_name=model_name, weights=weights,
                         benchmark_dir=benchmark_dir, config_dir=config_dir, overrides=overrides, budget=budget,
                         cache_dir=cache_dir, out_dir=out_dir, device=device, seeds=seeds, partition=partition,
                         arch=arch, precision=precision)),
                     "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "status": "running",
                     "tasks": {}, "failed": []}
    for info in infos:
        wall: dict = {}
        t0 = time.perf_counter()
        try:
            rec = _run_task(root, info, cfgs[info.name], engine, model_name, partition=partition, seeds=seeds,
                            cache_dir=cache_dir, dev=dev, progress=progress, wall=wall)
        except (Interrupted, EnvironmentFault):  # the run stops: finished tasks are in results.json
            raise
        except GeodinoError as e:
            if raise_errors:
                raise
            rec = {"status": "failed", "problems": [" ".join(str(e).split())], "error": type(e).__name__}
        except Exception as e:
            fault = output_fault(e, [out_dir, cache_dir], "finished tasks and cached features are kept")
            if fault is not None:  # disk full, permission, unreachable: the machine, not the task
                raise fault from e
            if raise_errors:
                raise
            log.debug("%s failed", info.name, exc_info=True)
            first = str(e).splitlines()[0] if str(e) else ""
            rec = {"status": "failed", "error": "internal",
                   "problems": [f"{info.name}: internal error: {type(e).__name__}: {first} (rerun with --debug "
                                "for the traceback)"]}
        rec.setdefault("kind", info.kind)
        rec.setdefault("card_name", info.card_name)
        rec.setdefault("primary", None)
        wall["total"] = time.perf_counter() - t0
        rec["wall_s"] = {k: round(v, 3) for k, v in wall.items()}
        results["tasks"][info.name] = rec
        if rec["status"] != "ok":
            results["failed"].append(info.name)
        log.info("%s: %s in %.1f s", info.name, rec["status"], wall["total"])
        if on_task:
            on_task(info.name, rec)
        results["aggregate"] = aggregate_results(results)
        write_results(results, out_dir)  # status "running": never mistaken for a finished run
    results["aggregate"] = aggregate_results(results)
    results["model_card_means"] = MODEL_CARD_MEANS.get(model_name)
    results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results["status"] = "complete" if not results["failed"] else "incomplete"
    write_results(results, out_dir)
    return results
