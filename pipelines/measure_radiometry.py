#!/usr/bin/env python
"""Choose the reflectance -> display-RGB mapping of the s2-l2a and landsat-c2-l2 presets by measurement.

For each real scene in ../shared/data (Sentinel-2 L2A and Landsat surface reflectance, plus the 8-bit aerial and
satellite RGB files for comparison) it computes the per-channel mean and std of the model input
``display = clip(gain * reflectance, 0, 1) ** gamma`` over valid pixels, for a grid of (gain, gamma), and scores
each candidate by how far the per-channel means lie from the SAT-493M means (in units of the SAT-493M std)
plus how far the per-channel stds lie from the SAT-493M stds (as |log ratio|), averaged over channels and the
reflectance scenes. The std term keeps the fit from flattening every scene towards the target mean (a
degenerate optimum when only means are scored); it cannot reach 0, because at 10-100 m a scene holds far less
texture than the 0.6 m Maxar crops the model saw. Gains start at 1 (reflectance 1 is white).

    python pipelines/measure_radiometry.py                 # table + the chosen mapping
    python pipelines/measure_radiometry.py --markdown docs/radiometry-table.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAT_MEAN = np.array([0.430, 0.411, 0.296])
SAT_STD = np.array([0.213, 0.156, 0.143])


def reflectance_scenes(data: Path) -> dict[str, np.ndarray]:
    """[3, N] valid-pixel reflectance (R, G, B) of each surface-reflectance scene."""
    import rasterio

    out = {}
    s2 = [data / f"s2l2a_29RKH_20200219_{b}.tif" for b in ("B04", "B03", "B02")]
    if all(p.is_file() for p in s2):
        # L2A DN -> reflectance: (DN + BOA_ADD_OFFSET) / 10000; a 2020 product (baseline < 04.00): offset 0
        x = np.stack([rasterio.open(p).read(1).astype(np.float64) for p in s2])
        out["Sentinel-2 L2A 29RKH 2020-02-19 (desert, 1098², 100 m)"] = x[:, (x > 0).all(0)] / 1e4
    ard = data / "landsat_ard_albers_3band_int16.tif"
    if ard.is_file():
        with rasterio.open(ard) as ds:
            x = ds.read([3, 2, 1]).astype(np.float64)  # bands 1..3 are blue, green, red (SR x 10000)
        out["Landsat SR (ARD, Wyoming farmland, 512², 30 m)"] = x[:, (x != -9999).all(0)] / 1e4
    return out


def display_scenes(data: Path) -> dict[str, np.ndarray]:
    """8-bit display-referred RGB scenes (for comparison: what 'uint8' feeds the model)."""
    import rasterio

    out = {}
    for name, label in (("naip_m_3607717_sw_18_1_20160620_subset.tif", "NAIP 2016 (Virginia, 1 m)"),
                        ("rasterio_cogeo.tif", "aerial RGB COG (0.6 m)"),
                        ("rasterio_RGB.byte.tif", "Landsat 7 RGB byte (300 m)")):
        p = data / name
        if p.is_file():
            with rasterio.open(p) as ds:
                x = ds.read([1, 2, 3]).astype(np.float64) / 255.0
                m = ds.read_masks(1) > 0
            out[label] = x[:, m]
    return out


def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=1), x.std(axis=1)


def score(moments: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """(mean |mean - SAT mean| / SAT std, mean |log(std / SAT std)|) over channels and scenes."""
    return (float(np.mean([np.abs(m - SAT_MEAN) / SAT_STD for m, _ in moments])),
            float(np.mean([np.abs(np.log(s / SAT_STD)) for _, s in moments])))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--markdown", default=None, help="write the tables here")
    args = p.parse_args()
    refl = reflectance_scenes(Path(args.data))
    if not refl:
        sys.exit(f"no reflectance scenes found in {args.data}")
    gains = np.arange(1.0, 4.01, 0.25)
    gammas = [1 / g for g in (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 2.4)]
    grid = []
    for gamma in gammas:
        for gain in gains:
            m_err, s_err = score([stats(np.clip(gain * x, 0, 1) ** gamma) for x in refl.values()])
            grid.append((m_err + s_err, m_err, s_err, float(gain), float(gamma)))
    grid.sort()
    best_score, _, _, best_gain, best_gamma = grid[0]
    lin = min((g for g in grid if g[4] == 1.0))
    lines = ["| gain | gamma | mean error | std error | score |", "|---|---|---|---|---|"]
    for sc, me, se, g, gm in grid[:8] + [lin]:
        lines.append(f"| {g:.2f} | 1/{1 / gm:.1f} | {me:.3f} | {se:.3f} | {sc:.3f} |")
    lines += ["", f"chosen: gain {best_gain:.2f}, gamma 1/{1 / best_gamma:.1f} (score {best_score:.3f}); "
              f"best linear: gain {lin[3]:.2f} (score {lin[0]:.3f})", ""]
    lines += ["| scene | mapping | mean R, G, B | std R, G, B | normalised mean (z) | normalised std |",
              "|---|---|---|---|---|---|"]

    def row(label, mapping, x):
        m, s = stats(x)
        z, zs = (m - SAT_MEAN) / SAT_STD, s / SAT_STD
        f = lambda v: ", ".join(f"{a:.3f}" for a in v)  # noqa: E731
        lines.append(f"| {label} | {mapping} | {f(m)} | {f(s)} | {f(z)} | {f(zs)} |")

    lines.append(f"| SAT-493M (target) | | {', '.join(f'{v:.3f}' for v in SAT_MEAN)} | "
                 f"{', '.join(f'{v:.3f}' for v in SAT_STD)} | 0, 0, 0 | 1, 1, 1 |")
    for label, x in refl.items():
        row(label, "reflectance as is (old s2-l2a)", np.clip(x, 0, 1))
        g = "" if best_gamma == 1.0 else f"^(1/{1 / best_gamma:.1f})"
        row(label, f"clip({best_gain:g}·ρ, 0, 1){g} (new)", np.clip(best_gain * x, 0, 1) ** best_gamma)
    for label, x in display_scenes(Path(args.data)).items():
        row(label, "DN / 255 (uint8)", x)
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
