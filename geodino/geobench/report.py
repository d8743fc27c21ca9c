"""What a GEO-Bench run writes: results.json (every metric, CI, status and wall time) and results.md (a table
beside the model card, the tasks that failed and why)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from geodino.heads import aggregate

__all__ = ["aggregate_results", "markdown_table", "write_results"]


def aggregate_results(results: dict) -> dict:
    """Means and IQMs of the primary metric over the tasks that produced one (failed tasks are left out and
    the counts say so)."""
    agg = {}
    scored = {t: r for t, r in results["tasks"].items() if r.get("primary")}
    for group, kinds in (("classification", ("classification", "multilabel")), ("segmentation", ("segmentation",))):
        scores = {t: [r["primary"]["value"]] for t, r in scored.items() if r["kind"] in kinds}
        if scores:
            agg[group] = aggregate(scores)
            bounds = {t: tuple(r["normalization_bounds"]) for t, r in scored.items()
                      if r["kind"] in kinds and r.get("normalization_bounds")}
            if bounds:
                agg[group + "_normalized"] = aggregate({t: v for t, v in scores.items() if t in bounds}, bounds)
    return agg


def write_results(results: dict, out_dir: str | os.PathLike) -> None:
    """results.json and results.md, each written to a temporary name and renamed (never half-written)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("results.json", json.dumps(results, indent=2, default=float)),
                       ("results.md", markdown_table(results))):
        tmp = out / f".{name}.tmp"
        try:
            tmp.write_text(text)
            os.replace(tmp, out / name)
        finally:  # a write stopped by a full disk or a signal leaves no temporary file
            tmp.unlink(missing_ok=True)


def markdown_table(results: dict) -> str:
    """Each metric beside the model card's value, then the status and wall time of every task."""
    lines = [f"# GEO-Bench: {results['model']}", ""]
    if results.get("random_weights"):
        lines += ["**Random weights: these numbers are meaningless (a pipeline check, not an evaluation).**", ""]
    if results.get("budget", "full") != "full":
        lines += [f"**Budget `{results['budget']}`: a smaller schedule than the paper's protocol; do not compare "
                  "these numbers with the model card (run `--budget full`).**", ""]
    if results.get("status") not in (None, "complete"):
        lines += [f"**Status: {results['status']}** (see Problems below).", ""]
    lines += [f"weights: `{results['weights']['source']}` (sha256 `{results['weights']['sha256']}`)", "",
              "| task | protocol | metric | geodino | 95 % CI | model card | Δ |", "|---|---|---|---|---|---|---|"]
    for name, t in results["tasks"].items():
        for proto, r in (t.get("results") or {}).items():
            if r.get("status") == "not applicable":
                lines.append(f"| {t['card_name']} | {proto} | n/a | n/a | | | |")
                continue
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
    first = next((t for t in results["tasks"].values() if t.get("input")), None)
    if first:
        lines += [f"input preparation: {json.dumps(first['input'])}; normalisation "
                  f"{json.dumps(first['normalization'])}", ""]
    lines += ["| task | status | wall time (s) | features (s) | heads (s) |", "|---|---|---|---|---|"]
    for name, t in results["tasks"].items():
        w = t.get("wall_s") or {}
        lines.append(f"| {name} | {t['status']} | {w.get('total', 0):.1f} | {w.get('features', 0):.1f} | "
                     f"{w.get('heads', 0):.1f} |")
    problems = [(name, p) for name, t in results["tasks"].items() for p in t.get("problems", [])]
    if problems:
        lines += ["", "## Problems", ""] + [f"- {p}" for _, p in problems]
    return "\n".join(lines) + "\n"
