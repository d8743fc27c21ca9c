"""Running GEO-Bench evaluations: features -> heads -> metrics with bootstrap CIs -> results.json and a table.

Classification (DINOv3's protocol): logistic regression on the CLS token with C chosen on ``valid`` and a refit
on train+valid; kNN (k = 5, 20, cosine) fitted on train. m-bigearthnet is multi-label: one-vs-rest, F1 (micro,
threshold 0.5) and mAP. Segmentation: linear and DPT heads trained on the train split (learning rate chosen on
``valid`` when several are given), mIoU on test from an accumulated confusion matrix.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from geodino.geobench.features import InputPrep, best_device, extract_features
from geodino.geobench.protocol import MODEL_CARD_MEANS, load_protocol
from geodino.geobench.reader import GeoBenchTask, benchmark_root, resolve_task_name
from geodino.heads import (DPTHead, LinearHead, LogRegProtocol, aggregate, bootstrap_ci, c_grid, dpt_layers,
                           evaluate_head, f1_micro, knn_predict, mean_average_precision, miou, train_head)

__all__ = ["run_geobench", "markdown_table"]

log = logging.getLogger(__name__)


def _prep(cfg: dict, size=None) -> InputPrep:
    i = cfg["input"]
    return InputPrep(tuple(i["bands"]), tuple(i["stats"]), i["normalization"], size or i["size"], i["date_index"])


def _ci(metric, n, ev) -> list[float]:
    lo, hi = bootstrap_ci(metric, n, n_boot=ev["bootstrap"], level=ev["ci"])
    return [100 * lo, 100 * hi]


def _classification(task: GeoBenchTask, cfg: dict, feats: dict) -> dict:
    ev = cfg["evaluation"]
    tr, va, te = feats["train"], feats["valid"], feats["test"]
    xtr, xva, xte = tr.cls, va.cls, te.cls
    ytr, yva, yte = tr.labels, va.labels, te.labels
    multilabel = task.kind == "multilabel"
    out = {}
    if "logreg" in cfg["classification"]["protocols"]:
        lr = cfg["classification"]["logreg"]
        proto = LogRegProtocol(c_grid(lr["c_min"], lr["c_max"], lr["c_num"]), lr["max_iter"], multilabel)
        res = proto.fit_predict(xtr, ytr, xva, yva, xte)
        out["logreg"] = _scores(res["pred"], yte, multilabel, ev)
        out["logreg"].update({"C": res["C"], "valid_score": 100 * res["valid"]})
    if "knn" in cfg["classification"]["protocols"]:
        for k in cfg["classification"]["knn"]["k"]:
            pred = knn_predict(xtr, ytr, xte, k, task.n_classes, multilabel)
            out[f"knn{k}"] = _scores(pred, yte, multilabel, ev)
    return out


def _scores(pred, y, multilabel: bool, ev: dict) -> dict:
    n = len(y)
    if multilabel:
        f1 = f1_micro(y, pred)
        return {"metric": "f1_micro", "value": 100 * f1, "ci": _ci(lambda i: f1_micro(y[i], pred[i]), n, ev),
                "mAP": 100 * mean_average_precision(y, pred)}
    correct = (np.asarray(pred) == np.asarray(y)).astype(float)
    return {"metric": "accuracy", "value": 100 * correct.mean(), "ci": _ci(lambda i: correct[i].mean(), n, ev)}


def _segmentation(task: GeoBenchTask, cfg: dict, feats: dict, device, seeds: list[int]) -> dict:
    sc, ev = cfg["segmentation"], cfg["evaluation"]
    tr, va, te = feats["train"], feats["valid"], feats["test"]
    n_classes = task.n_classes
    ignore = sc["ignore_index"]
    exclude = sc["exclude_classes"]
    out = {}
    for head_name in sc["heads"]:
        per_seed, cms = [], []
        chosen_lr = []
        for seed in seeds:
            best = None
            for lr in sc["lr"]:
                head = _make_head(head_name, tr.patches.shape[2], n_classes, sc)
                train_head(head, tr.patches, tr.masks, iterations=sc["iterations"], batch_size=sc["batch_size"],
                           lr=lr, weight_decay=sc["weight_decay"], warmup=sc["warmup"],
                           ignore_index=-100 if ignore is None else ignore, seed=seed, device=device)
                if len(sc["lr"]) > 1:
                    cm_va, _ = evaluate_head(head, va.patches, va.masks, n_classes, ignore_index=ignore, device=device)
                    score = miou(cm_va, exclude)
                else:
                    score = 0.0
                if best is None or score > best[0]:
                    best = (score, lr, head)
            _, lr, head = best
            chosen_lr.append(lr)
            cm, per_sample = evaluate_head(head, te.patches, te.masks, n_classes, ignore_index=ignore, device=device)
            per_seed.append(100 * miou(cm, exclude))
            cms.append(per_sample)
        stack = np.stack(cms[0])
        ci = _ci(lambda i: miou(stack[i].sum(0), exclude), len(stack), ev)
        out[head_name] = {"metric": "mIoU", "value": float(np.mean(per_seed)), "seeds": per_seed,
                          "std": float(np.std(per_seed)), "ci": ci, "ci_seed": seeds[0], "lr": chosen_lr,
                          "excluded_classes": exclude, "ignore_index": ignore}
    return out


def _make_head(name: str, dim: int, n_classes: int, sc: dict):
    if name == "linear":
        return LinearHead(dim, n_classes, sc["dropout"])
    return DPTHead(dim, n_classes, features=sc["dpt_features"], dropout=sc["dropout"])


def _primary(task_kind: str, res: dict) -> tuple[str, float] | None:
    order = ["logreg", "knn20", "knn5"] if task_kind != "segmentation" else ["dpt", "linear"]
    for k in order:
        if k in res:
            return k, res[k]["value"]
    return None


def run_geobench(tasks: list[str], model_name: str, weights: str | None, *, benchmark_dir=None,
                 config_dir=None, overrides: dict | None = None, cache_dir: str | os.PathLike = "geobench-cache",
                 out_dir: str | os.PathLike = "geobench-results", device: str | None = None, seeds=None,
                 partition: str | None = None, arch: dict | None = None, command: str | None = None,
                 progress: Callable[[str, str, int, int], None] | None = None) -> dict:
    """Evaluate ``model_name`` with ``weights`` on ``tasks``; writes results.json and results.md to ``out_dir``."""
    import torch

    from geodino import __version__
    from geodino.models import load_backbone

    root = benchmark_root(benchmark_dir)
    dev = torch.device(device) if device and device != "auto" else best_device()
    model = load_backbone(model_name, weights, device="cpu", **(arch or {}))
    winfo = model.weights_info
    results: dict = {"geodino_version": __version__, "model": model_name, "arch_overrides": arch or {},
                     "weights": winfo.to_dict(), "random_weights": bool(winfo.random), "benchmark_dir": str(root),
                     "device": str(dev), "command": command or shlex.join(sys.argv),
                     "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "tasks": {}}
    infos = [resolve_task_name(t) for t in tasks]
    for info in infos:
        cfg = load_protocol(info.name, config_dir, overrides)
        ev = cfg["evaluation"]
        part = partition or ev["partition"]
        task_seeds = list(seeds) if seeds is not None else list(ev["seeds"])
        task = GeoBenchTask(root, info.name)
        seg = task.kind == "segmentation"
        prep = _prep(cfg, cfg["segmentation"]["input_size"] if seg else None)
        layers = dpt_layers(model.arch.depth) if seg else None
        feats = {}
        for split in ("train", "valid", "test"):
            split_part = part if split == "train" else "default"  # Nx partitions share default valid/test
            if split != "train" and split in task.partitions.get(part, {}):
                split_part = part
            cb = (lambda d, n, s=split, t=info.name: progress(t, s, d, n)) if progress else None
            feats[split] = extract_features(task, split, model, prep, partition=split_part, layers=layers,
                                            cache_dir=cache_dir, batch_size=ev["feature_batch_size"], device=dev,
                                            progress=cb)
        res = _segmentation(task, cfg, feats, dev, task_seeds) if seg else _classification(task, cfg, feats)
        card = cfg.get("model_card", {}).get(model_name)
        prim = _primary(task.kind, res)
        results["tasks"][info.name] = {
            "kind": task.kind, "card_name": info.card_name, "partition": part, "seeds": task_seeds,
            "input": prep.to_dict(),
            "normalization": {"mean": feats["train"].attrs["mean"], "std": feats["train"].attrs["std"]},
            "layers": layers, "sizes": {s: len(f) for s, f in feats.items()}, "results": res,
            "primary": {"protocol": prim[0], "value": prim[1]} if prim else None, "model_card": card,
            "normalization_bounds": cfg.get("normalization_bounds"),
        }
        log.info("%s: %s", info.name, {k: round(v["value"], 2) for k, v in res.items()})
    results["aggregate"] = _aggregate(results)
    results["model_card_means"] = MODEL_CARD_MEANS.get(model_name)
    results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "results.md").write_text(markdown_table(results))
    return results


def _aggregate(results: dict) -> dict:
    agg = {}
    for group, kinds in (("classification", ("classification", "multilabel")), ("segmentation", ("segmentation",))):
        scores = {t: [r["primary"]["value"]] for t, r in results["tasks"].items()
                  if r["kind"] in kinds and r["primary"]}
        if scores:
            agg[group] = aggregate(scores)
            bounds = {t: tuple(r["normalization_bounds"]) for t, r in results["tasks"].items()
                      if r["kind"] in kinds and r.get("normalization_bounds")}
            if bounds:
                agg[group + "_normalized"] = aggregate({t: v for t, v in scores.items() if t in bounds}, bounds)
    return agg


def markdown_table(results: dict) -> str:
    """Each metric beside the model card's value."""
    lines = [f"# GEO-Bench: {results['model']}", ""]
    if results.get("random_weights"):
        lines += ["**Random weights: these numbers are meaningless (a pipeline check, not an evaluation).**", ""]
    lines += [f"weights: `{results['weights']['source']}` (sha256 `{results['weights']['sha256']}`)", "",
              "| task | protocol | metric | geodino | 95 % CI | model card | Δ |", "|---|---|---|---|---|---|---|"]
    for name, t in results["tasks"].items():
        for proto, r in t["results"].items():
            is_primary = t["primary"] and t["primary"]["protocol"] == proto
            card = t["model_card"] if is_primary and t["model_card"] is not None else None
            delta = f"{r['value'] - card:+.1f}" if card is not None else ""
            extra = f" (mAP {r['mAP']:.1f})" if "mAP" in r else ""
            lines.append(f"| {t['card_name']} | {proto} | {r['metric']}{extra} | {r['value']:.1f} | "
                         f"{r['ci'][0]:.1f}–{r['ci'][1]:.1f} | {'' if card is None else f'{card:.1f}'} | {delta} |")
    lines.append("")
    means = results.get("model_card_means") or {}
    for group, a in results.get("aggregate", {}).items():
        card = means.get(group)
        lines.append(f"- {group}: mean {a['mean']:.1f}, IQM {a['iqm']:.1f} over {a['tasks']} task(s)"
                     + (f"; model card mean {card:.1f} (all 6 tasks)" if card is not None else ""))
    lines.append("")
    first = next(iter(results["tasks"].values()), None)
    if first:
        lines.append(f"input preparation: {json.dumps(first['input'])}; normalisation {json.dumps(first['normalization'])}")
    return "\n".join(lines) + "\n"
