"""The demo: simulate two scenes of different seeds, train on one, detect on the other, and
score the targets against the simulator's truth with the shared matching rule.

The simulator is a test instrument: the figures printed here are not evidence about real
fields.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from outputs.evaluate import match_files
from pipeline.config import load_config
from pipeline.simulate import simulate
from pipeline.survey import detect, train

log = logging.getLogger(__name__)

TRAIN_SEED, TEST_SEED, SIZE = 11, 23, 256


def run_demo(out: Path, *, progress=None) -> dict:
    t0 = time.perf_counter()
    out = Path(out)
    cfg = load_config()
    scenes = out / "scenes"
    log.info("simulating a training scene (seed %d) and a survey scene (seed %d), %d px",
             TRAIN_SEED, TEST_SEED, SIZE)
    tr = simulate(scenes / "train", size=SIZE, seed=TRAIN_SEED)
    te = simulate(scenes / "survey", size=SIZE, seed=TEST_SEED)
    log.info("training on %s", tr.labels)
    report = train(tr.images, tr.labels, out / "model", cfg, dem=tr.dem)
    pol = report["polygon"]
    log.info("cross-validated polygon recall %.2f (polygons >= %g px %.2f), precision %.2f, "
             "threshold %.3f", pol["recall"], report["min_plot_px"], pol["recall_min_plot"],
             pol["precision"], report["threshold"])
    res = detect(te.images, out / "model", out, cfg, dem=te.dem, progress=progress)
    m = match_files(out / "targets.geojson", te.truth, pixel_m=10.0)
    m4 = match_files(out / "targets.geojson", te.truth, pixel_m=10.0, min_plot_m2=400.0)
    elapsed = time.perf_counter() - t0
    print(f"demo: {res.n_targets} targets on the survey scene (seed {TEST_SEED}); "
          f"plots found {m.found}/{m.plots} (recall {m.recall:.2f}; plots >= 4 px "
          f"{m4.found}/{m4.plots}, recall {m4.recall:.2f}); correct targets "
          f"{m.correct}/{m.targets} (precision {m.precision:.2f})")
    print(f"demo: files in {out}: {', '.join(p.name for p in res.files)}; model in "
          f"{out / 'model'}; scenes in {scenes}  ({elapsed:.0f} s)")
    print("demo: simulated scenes are a test instrument, not evidence about real fields")
    return {"targets": res.n_targets, "recall": m.recall, "precision": m.precision,
            "recall_4px": m4.recall, "seconds": elapsed}
