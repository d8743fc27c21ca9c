"""Per-task protocol configs: defaults < configs/geobench/<task>.yaml < budget < user overrides (``--set k=v``).

The YAML files are data, validated here once: unknown keys are refused with the list of valid ones. A budget
(``configs/geobench/budgets/<name>.yaml``) overrides the schedule of every task: ``full`` is the paper's protocol
(no overrides), ``quick`` a smaller schedule for CPUs (see that file).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import yaml

from geodino._yaml import read_mapping
from geodino.errors import ConfigError

__all__ = ["DEFAULTS", "BUDGETS", "default_config_dir", "load_budget", "load_protocol", "parse_overrides",
           "MODEL_CARD_MEANS"]

BUDGETS = ("full", "quick")

DEFAULTS: dict = {
    "input": {"bands": ["red", "green", "blue"], "stats": ["min", "max"], "normalization": "model",
              "size": "native", "date_index": 0},
    "classification": {"protocols": ["logreg", "knn"],
                       "logreg": {"c_min": 1e-6, "c_max": 1e5, "c_num": 45, "max_iter": 1000, "n_jobs": -1},
                       "knn": {"k": [5, 20]}},
    "segmentation": {"heads": ["linear", "dpt"], "input_size": 512, "lr": [1e-3], "weight_decay": 1e-4,
                     "iterations": 2000, "batch_size": 8, "warmup": 100, "ignore_index": None,
                     "exclude_classes": [], "dpt_features": 256, "dropout": 0.1},
    "evaluation": {"partition": "default", "seeds": [0], "bootstrap": 1000, "ci": 0.95,
                   "feature_batch_size": 32},
    "normalization_bounds": None,  # [lo, hi] of baselines, for GEO-Bench's normalised aggregate
    "model_card": {},
}

# Model-card means (DINOv3 paper, GEO-Bench, frozen backbone)
MODEL_CARD_MEANS = {
    "dinov3-vitl16-sat493m": {"classification": 79.6, "segmentation": 74.5},
    "dinov3-vit7b16-sat493m": {"classification": 81.1, "segmentation": 75.0},
}


def default_config_dir() -> Path | None:
    """configs/geobench of the source tree (the README installs in editable mode), or $GEODINO_GEOBENCH_CONFIGS."""
    env = os.environ.get("GEODINO_GEOBENCH_CONFIGS")
    if env:
        return Path(env)
    p = Path(__file__).resolve().parents[2] / "configs" / "geobench"
    return p if p.is_dir() else None


def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k in ("task", "kind", "model_card"):
            out[k] = v
            continue
        if k not in base:
            raise ConfigError(f"unknown protocol key {k!r} in {where}; valid: {', '.join(sorted(base))}")
        if isinstance(base[k], dict) and isinstance(v, dict):
            out[k] = _merge(base[k], v, f"{where}:{k}")
        else:
            out[k] = v
    return out


def parse_overrides(items: list[str] | None) -> dict:
    """``["segmentation.iterations=500", "input.size=224"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set takes KEY=VALUE (e.g. segmentation.iterations=500), got {item!r}")
        key, val = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(val)
    return out


def load_budget(budget: str = "full", config_dir: str | os.PathLike | None = None) -> tuple[dict, Path | None]:
    """The overrides of ``budget`` and the file they come from (``budgets/<budget>.yaml`` in ``config_dir``, else
    in the default config folder); ``full`` without a file is the protocol as configured."""
    if budget not in BUDGETS:
        raise ConfigError(f"--budget {budget!r}: choose {' or '.join(BUDGETS)}")
    for d in (Path(config_dir) if config_dir else None, default_config_dir()):
        if d is not None and (p := d / "budgets" / f"{budget}.yaml").is_file():
            return read_mapping(p), p
    if budget == "full":
        return {}, None
    raise ConfigError(f"budget {budget!r}: no budgets/{budget}.yaml in {config_dir or default_config_dir()}; pass "
                      "--config-dir with a folder holding it (the repository's configs/geobench)")


def load_protocol(task: str, config_dir: str | os.PathLike | None = None, overrides: dict | None = None,
                  budget: str = "full") -> dict:
    """The protocol of ``task``: defaults, its YAML (if any), the ``budget``'s overrides, then ``overrides``."""
    cfg = copy.deepcopy(DEFAULTS)
    d = Path(config_dir) if config_dir else default_config_dir()
    if d is not None:
        p = d / f"{task}.yaml"
        if p.is_file():
            cfg = _merge(cfg, read_mapping(p), str(p))
    over, where = load_budget(budget, config_dir)
    if over:
        cfg = _merge(cfg, over, str(where))
    if overrides:
        cfg = _merge(cfg, overrides, "--set")
    _validate(cfg, task)
    return cfg


def _validate(cfg: dict, task: str) -> None:
    size = cfg["input"]["size"]
    if size != "native" and (not isinstance(size, int) or size % 16):
        raise ConfigError(f"{task}: input.size must be native or a multiple of 16, got {size!r}")
    for p in cfg["classification"]["protocols"]:
        if p not in ("logreg", "knn"):
            raise ConfigError(f"{task}: unknown classification protocol {p!r} (logreg, knn)")
    for h in cfg["segmentation"]["heads"]:
        if h not in ("linear", "dpt"):
            raise ConfigError(f"{task}: unknown segmentation head {h!r} (linear, dpt)")
    if not isinstance(cfg["segmentation"]["lr"], list):
        cfg["segmentation"]["lr"] = [cfg["segmentation"]["lr"]]
    json.dumps(cfg)  # must stay plain data
