"""Train on one scene of the independent simulator (bench/indsim), detect on others, score.

The second test instrument: bench/indsim/indsim.py was written from the input contract and
docs/DOMAIN-style facts only, without reading pipeline/simulate.py, so its physics, landscape
and phenology are not ours. A setting that helps on our simulator and hurts here was tuned to
our simulator. Runs the real CLI (train, detect) and the shared matching rule (plots >= 400 m^2,
outputs/evaluate.py), and from each probability.tif the best recall at precision >= 0.7 over
thresholds (the ranking, independent of the threshold rule).

    python bench/cross_sim.py --train 101 --detect 102 103 104 105 106 [--config CFG]

Scenes are generated into --scenes (default /tmp/poppyscan-indsim) when missing (~20 s each).
Like every simulated figure, the results are not evidence about real fields.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.features import rasterize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scenes_cache import score_map
from classifiers.labels import read_polygons
from outputs.evaluate import match_files


def scene(root: Path, seed: int) -> Path:
    d = root / f"s{seed}"
    if not (d / "truth.geojson").is_file():
        subprocess.run([sys.executable, str(ROOT / "bench" / "indsim" / "indsim.py"),
                        "--out", str(d), "--seed", str(seed)], check=True,
                       stdout=subprocess.DEVNULL)
    return d


def images(d: Path) -> list[str]:
    return [str(p) for p in sorted(d.glob("L2A_*.tif"))]


def cli(*args: str) -> None:
    r = subprocess.run([sys.executable, "run.py", "-q", *args], cwd=ROOT, capture_output=True,
                       check=False,
                       text=True)
    if r.returncode:
        sys.exit(f"run.py {args[0]} failed: {r.stderr.strip().splitlines()[-1]}")


class _Truth:
    def __init__(self, prob: np.ndarray, transform, crs, truth: Path):
        plots, _ = read_polygons(truth, crs, what="truth file")
        self.plot_ids = np.zeros(prob.shape, "int32")
        for i, g in enumerate(plots):
            hit = rasterize([(g, 1)], out_shape=prob.shape, transform=transform,
                            all_touched=True).astype(bool)
            self.plot_ids[hit & (self.plot_ids == 0)] = i + 1
        self.plot_px = np.array([g.area / 100.0 for g in plots])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=101)
    ap.add_argument("--detect", type=int, nargs="+", default=[102, 103, 104, 105, 106])
    ap.add_argument("--config", type=Path, help="survey config (default: Sentinel-2 default)")
    ap.add_argument("--scenes", type=Path, default=Path("/tmp/poppyscan-indsim"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/poppyscan-cross-sim"))
    a = ap.parse_args()
    cfg = ["--config", str(a.config)] if a.config else []
    tag = a.config.stem if a.config else "default"
    model = a.work / tag / f"m{a.train}"
    tr = scene(a.scenes, a.train)
    if not (model / "model.json").is_file():
        cli("train", "--images", *images(tr), "--labels", str(tr / "labels.geojson"),
            "--dem", str(tr / "dem.tif"), "--model", str(model), *cfg)
    total = np.zeros(4, int)
    best_all = []
    for s in a.detect:
        d = scene(a.scenes, s)
        out = a.work / tag / f"o{a.train}_{s}"
        if not (out / "probability.tif").is_file():
            cli("detect", "--images", *images(d), "--dem", str(d / "dem.tif"), "--model",
                str(model), "--out", str(out), *cfg)
        m = match_files(out / "targets.geojson", d / "truth.geojson", pixel_m=10.0,
                        min_plot_m2=400.0)
        total += [m.plots, m.found, m.targets, m.correct]
        with rasterio.open(out / "probability.tif") as src:
            prob = src.read(1, masked=True).filled(np.nan).astype("float32")
            truth = _Truth(prob, src.transform, src.crs, d / "truth.geojson")
        curve = [score_map(prob, t, truth, mmu_px=2, min_plot_px=4)
                 for t in np.arange(0.5, 0.995, 0.005)]
        best = max([c["recall"] for c in curve if c["precision"] >= 0.7], default=0.0)
        best_all.append(best)
        print(f"{a.train}>{s}: recall {m.found}/{m.plots} = {m.recall:.2f}, precision "
              f"{m.correct}/{m.targets} = {m.precision:.2f}; best recall at precision >= 0.7: "
              f"{best:.2f}", flush=True)
    print(f"{tag}, train {a.train}: recall {total[1]}/{total[0]} = {total[1] / total[0]:.2f}, "
          f"precision {total[3]}/{total[2]} = {total[3] / max(total[2], 1):.2f}, "
          f"mean best recall at precision >= 0.7: {np.mean(best_all):.2f}")


if __name__ == "__main__":
    main()
