"""Scale benchmark: detect against the I/O and predict floors and a naive in-memory script.

    python bench/run_bench.py [--sizes 1024,2048,4096] [--work DIR] [--doc docs/benchmarks.md]

For each size N it prepares an N x N px, 6-date simulated Sentinel-2 scene, then runs, each in
its own subprocess (bench/measure.py) so that each peak memory is its own:
the I/O floor, the predict floor, detect end to end (threads, and local:2 at the smallest
size to check identical targets), and the naive in-memory script (optionally capped with
RLIMIT_AS). Results are cached in WORK/results.json (a rerun measures only what is missing;
--fresh to redo) and docs/benchmarks.md is written from them, with the machine described.

Scenes: sizes up to --sim-max are simulated directly (pipeline.simulate.simulate(out, size=N,
seed=..., n_dates=6)); larger sizes are mosaics of mirrored copies of the --sim-max scene
(the simulator's own cost grows faster than the pixels: ~2 min at 1024 px on a loaded
2-core machine), written block by block with the same bands, tags, scales and offsets.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable
SEED, TRAIN_SEED, TRAIN_SIZE, N_DATES = 5, 1, 512, 6
#: everything below this line of docs/benchmarks.md is hand-written and kept on rewrite
NOTES_MARK = "<!-- notes: kept when bench/run_bench.py rewrites this file -->"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- scenes
def simulate_scene(out: Path, size: int, seed: int) -> Path:
    if (out / "done").is_file():
        return out
    from pipeline.simulate import simulate
    shutil.rmtree(out, ignore_errors=True)
    log(f"simulating {size} px x {N_DATES} dates (seed {seed})")
    simulate(out, size=size, seed=seed, n_dates=N_DATES)
    (out / "done").write_text("ok")
    return out


def mosaic_scene(src_dir: Path, out: Path, size: int) -> Path:
    """An N px scene of mirrored copies of a smaller simulated scene (edges continuous)."""
    if (out / "done").is_file():
        return out
    import numpy as np
    import rasterio
    from rasterio.windows import Window
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log(f"mosaicking {size} px from {src_dir.name}")
    for path in sorted(src_dir.glob("S2_*.tif")):
        with rasterio.open(path) as src:
            n = src.height
            prof = src.profile.copy()
            prof.update(height=size, width=size, tiled=True, blockxsize=256, blockysize=256,
                        BIGTIFF="IF_SAFER")
            data = src.read()
            with rasterio.open(out / path.name, "w", **prof) as dst:
                dst.update_tags(**src.tags())
                for b in range(src.count):
                    dst.set_band_description(b + 1, src.descriptions[b])
                    dst.update_tags(b + 1, **src.tags(b + 1))
                dst.scales, dst.offsets = src.scales, src.offsets
                for ty in range(0, size, n):
                    for tx in range(0, size, n):
                        block = data
                        if (ty // n) % 2:
                            block = block[:, ::-1, :]
                        if (tx // n) % 2:
                            block = block[:, :, ::-1]
                        h, w = min(n, size - ty), min(n, size - tx)
                        dst.write(np.ascontiguousarray(block[:, :h, :w]),
                                  window=Window(tx, ty, w, h))
    (out / "done").write_text(f"mosaic of {src_dir.name}")
    return out


def scene_for(work: Path, size: int, sim_max: int) -> Path:
    if size <= sim_max:
        return simulate_scene(work / f"scene-{size}", size, SEED)
    base = simulate_scene(work / f"scene-{sim_max}", sim_max, SEED)
    return mosaic_scene(base, work / f"scene-{size}", size)


def model_for(work: Path) -> Path:
    """The bench model, trained again when the default config changed since (a model of an
    older feature set would be refused by detect)."""
    import hashlib

    from pipeline.config import load_config
    from pipeline.survey import train
    model = work / "model"
    cfg = load_config()
    key = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()
    stamp = model / "bench_config.sha256"
    if (model / "model.skops").is_file() and stamp.is_file() and stamp.read_text() == key:
        return model
    shutil.rmtree(model, ignore_errors=True)
    tr = simulate_scene(work / f"train-{TRAIN_SIZE}", TRAIN_SIZE, TRAIN_SEED)
    log(f"training the bench model on {tr}")
    train(sorted(tr.glob("S2_*.tif")), tr / "labels.geojson", model, cfg)
    stamp.write_text(key)
    return model


# ----------------------------------------------------------------------------- runs
def measure(kind: str, scene: Path, model: Path, out: Path | None = None, **opts) -> dict:
    argv = [PY, str(ROOT / "bench" / "measure.py"), kind, "--scene", str(scene),
            "--model", str(model)]
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
        argv += ["--out", str(out)]
    for k, v in opts.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    log(" ".join(argv[2:]))
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-1:] or [f"exit {r.returncode}"]
        log(f"{kind} failed: {tail[0]}")
        return {"kind": kind, "error": tail[0], "returncode": r.returncode,
                "process_seconds": wall}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["process_seconds"] = wall
    log(f"{kind}: {res.get('seconds') and round(res['seconds'], 1)} s, "
        f"peak {res['peak_rss_mb']} MB")
    return res


def same_outputs(a: Path, b: Path, targets: bool = True) -> dict:
    import numpy as np
    import rasterio
    with rasterio.open(a / "probability.tif") as x, rasterio.open(b / "probability.tif") as y:
        pa, pb = x.read(1), y.read(1)
    out = {"probability_identical": bool(pa.shape == pb.shape and
                                         np.array_equal(pa, pb, equal_nan=True))}
    if targets:
        out["targets_identical"] = ((a / "targets.geojson").read_bytes() ==
                                    (b / "targets.geojson").read_bytes())
    return out


def load_avg() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def bench_size(work: Path, size: int, model: Path, results: dict, a) -> None:
    key = str(size)
    res = results.setdefault(key, {})
    scene = scene_for(work, size, a.sim_max)
    runs = work / "runs" / key
    res["megapixels"] = size * size / 1e6
    res["scene"] = (scene / "done").read_text()
    todo = [k for k in a.kinds if k not in res]
    for kind in todo:
        load_before = load_avg()
        if kind == "io":
            r = measure("io", scene, model)
        elif kind == "predict":
            sample = 0 if size <= 1024 else a.predict_sample
            r = measure("predict", scene, model, predict_sample=sample)
        elif kind == "detect":
            r = measure("detect", scene, model, runs / "detect", scheduler="threads")
        else:
            opts = {"limit_gb": a.naive_limit_gb} if a.naive_limit_gb else {}
            r = measure("naive", scene, model, runs / "naive", **opts)
        r["load_before"] = load_before
        r["load_after"] = load_avg()
        res[kind] = r
        save(work, results)
    na, de = res.get("naive", {}), res.get("detect", {})
    if (na.get("seconds") and de.get("seconds") and "error" not in na
            and "probability_identical" not in na):
        na.update(same_outputs(runs / "detect", runs / "naive", targets=False))
        save(work, results)
    if size == min(a.sizes) and "local2" not in res and "detect" in a.kinds:
        r = measure("detect", scene, model, runs / "local2", scheduler="local:2")
        if "error" not in r:
            r.update(same_outputs(runs / "detect", runs / "local2"))
        res["local2"] = r
        save(work, results)


def save(work: Path, results: dict) -> None:
    tmp = work / ".results.json"
    tmp.write_text(json.dumps(results, indent=1, default=str))
    os.replace(tmp, work / "results.json")


# ----------------------------------------------------------------------------- doc
def machine() -> dict:
    import dask
    import numpy
    import rasterio
    import sklearn
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
    return {"nproc": os.cpu_count(), "ram_gb": round(ram, 1), "cpu": cpu,
            "python": platform.python_version(), "numpy": numpy.__version__,
            "dask": dask.__version__, "rasterio": rasterio.__version__,
            "gdal": rasterio.__gdal_version__, "scikit-learn": sklearn.__version__,
            "platform": platform.platform()}


def _f(v, nd=1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def write_doc(doc: Path, results: dict, m: dict, notes: str) -> None:
    sizes = sorted(int(k) for k in results if k.isdigit())
    n_feat = next((r["predict"].get("features") for r in results.values()
                   if isinstance(r, dict) and "predict" in r), "?")
    L = ["# Benchmarks", "",
         "Measured by `python bench/run_bench.py` on this machine (results are cached in "
         "WORK/results.json, so the table can gather several invocations; `--fresh` redoes "
         "all). Each measurement runs in its own process; peak memory "
         "is that process's VmHWM (the largest child's ru_maxrss for local:N). Throughput is "
         "input pixels (scene pixels, each with 6 dates x 13 bands) per second of wall time.",
         "",
         "## Machine", "",
         f"- {m['nproc']} CPUs ({m['cpu']}), {m['ram_gb']} GB RAM, {m['platform']}",
         f"- Python {m['python']}, numpy {m['numpy']}, dask {m['dask']}, rasterio "
         f"{m['rasterio']} (GDAL {m['gdal']}), scikit-learn {m['scikit-learn']}",
         "- The load average (1 min) before and after "
         "each measurement is in the last table; with a load above 2 on 2 cores every figure "
         "is slower than on an idle machine.", "",
         "## Scenes and model", "",
         f"- Simulated Sentinel-2 L2A, 12 bands + SCL, {N_DATES} dates, 10 m; seed {SEED}. "
         "Sizes above the largest simulated one are mirrored mosaics of it (see the bench "
         "docstring).",
         f"- Model: trained by the bench on a {TRAIN_SIZE} px scene of seed {TRAIN_SEED} with "
         f"the default config (HGB, {n_feat} features). The predict floor "
         "is the model's `predict_proba` with 2 OpenMP threads, as the issue defines it; "
         "detect predicts with an exact binned path instead (classifiers/predict.py), whose "
         "time on the same matrices, one thread, is the 'binned' column.", "",
         "## Results", "",
         "| size | Mpx | I/O floor s | predict floor s | binned predict s (1 thread) | detect s "
         "| detect kpx/s | detect / (I/O + predict) | naive s | detect peak MB | naive peak MB "
         "| targets |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in sizes:
        r = results[str(s)]
        io, pr, de, na = (r.get(k, {}) for k in ("io", "predict", "detect", "naive"))
        floor = (io.get("seconds") or 0) + (pr.get("seconds") or 0)
        ds = de.get("seconds")
        na_s = na.get("seconds") if "error" not in na else None
        L.append(f"| {s}² | {r['megapixels']:.2f} | {_f(io.get('seconds'), 2)} | "
                 f"{_f(pr.get('seconds'))} | {_f(pr.get('binned_seconds_1thread'))} | "
                 f"{_f(ds)} | "
                 f"{_f(1000 * r['megapixels'] / ds if ds else None, 1)} | "
                 f"{_f(ds / floor if ds and floor else None, 2)} | "
                 f"{_f(na_s) if na else 'not run'}{' (' + na['error'] + ')' if 'error' in na else ''} | "
                 f"{_f(de.get('peak_rss_mb'), 0)} | {_f(na.get('peak_rss_mb'), 0)} | "
                 f"{de.get('targets', '-')} |")
    L += ["", "### detect stage breakdown (seconds, summed over tiles and threads; "
          "patches and write include the scene-wide assembly)", "",
          "| size | read | mask | features | predict | patches | write | total (wall) |",
          "|---|---|---|---|---|---|---|---|"]
    for s in sizes:
        st = results[str(s)].get("detect", {}).get("stages")
        if st:
            L.append(f"| {s}² | " + " | ".join(_f(st.get(k)) for k in
                     ("read", "mask", "features", "predict", "patches", "write", "total"))
                     + " |")
    L += ["", "### Scaling (ratios between sizes)", ""]
    for a_, b_ in zip(sizes, sizes[1:]):
        L.append(f"- {b_}² / {a_}² (pixels x{(b_ / a_) ** 2:.1f}):")
        ra, rb = results[str(a_)].get("detect", {}), results[str(b_)].get("detect", {})
        if ra.get("seconds") and rb.get("seconds"):
            L.append(f"  - detect: wall x{rb['seconds'] / ra['seconds']:.2f}, peak memory "
                     f"x{rb['peak_rss_mb'] / ra['peak_rss_mb']:.2f}")
        else:
            L.append("  - detect: not measured at both sizes")
        na, nb = results[str(a_)].get("naive", {}), results[str(b_)].get("naive", {})
        if na.get("peak_rss_mb") and nb.get("peak_rss_mb"):
            died = f" (died of {nb['error']} at that peak)" if "error" in nb else ""
            L.append(f"  - naive: peak memory x{nb['peak_rss_mb'] / na['peak_rss_mb']:.2f}"
                     + died + (f", wall x{nb['seconds'] / na['seconds']:.2f}"
                               if na.get("seconds") and nb.get("seconds") else ""))
    L += ["", "### Identical outputs", ""]
    for s in sizes:
        r = results[str(s)]
        if "probability_identical" in r.get("naive", {}):
            L.append(f"- {s}²: naive script's probability.tif identical to detect's: "
                     f"{r['naive']['probability_identical']}")
        if "local2" in r:
            l2 = r["local2"]
            L.append(f"- {s}²: detect on a local 2-worker dask.distributed cluster "
                     f"(local:2): {_f(l2.get('seconds'))} s, peak {_f(l2.get('peak_rss_mb'), 0)}"
                     f" MB (largest process); targets.geojson identical: "
                     f"{l2.get('targets_identical')}, probability.tif identical: "
                     f"{l2.get('probability_identical')}")
    L += ["", "### Load average (1, 5, 15 min) around each measurement", "",
          "| size | io | predict | detect | naive |", "|---|---|---|---|---|"]
    for s in sizes:
        r = results[str(s)]
        L.append(f"| {s}² | " + " | ".join(
            f"{r[k].get('load_before', '-')} -> {r[k].get('load_after', '-')}" if k in r else "-"
            for k in ("io", "predict", "detect", "naive")) + " |")
    if not notes and doc.is_file() and NOTES_MARK in doc.read_text(encoding="utf-8"):
        notes = doc.read_text(encoding="utf-8").split(NOTES_MARK, 1)[1]   # kept on rewrite
    L += ["", NOTES_MARK, notes.strip()] if notes else []
    doc.write_text("\n".join(L) + "\n", encoding="utf-8")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1024,2048,4096")
    p.add_argument("--work", type=Path, default=Path(os.environ.get(
        "POPPYSCAN_BENCH_DIR", "/tmp/poppyscan-scale-bench")))
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--notes", type=Path, help="a Markdown file appended as notes (default: "
                   "keep the notes already in the doc)")
    p.add_argument("--sim-max", type=int, default=1024,
                   help="largest size simulated directly; larger ones are mosaics")
    p.add_argument("--predict-sample", type=int, default=8,
                   help="tiles the predict floor is timed on above 1024 px")
    p.add_argument("--naive-limit-gb", type=float, default=0.0,
                   help="RLIMIT_AS for the naive script (0: none)")
    p.add_argument("--kinds", default="io,predict,detect,naive",
                   help="measurements and their order (default io,predict,detect,naive)")
    p.add_argument("--fresh", action="store_true", help="forget cached results")
    p.add_argument("--doc-only", action="store_true", help="rewrite the doc from results")
    a = p.parse_args()
    a.sizes = sorted(int(s) for s in a.sizes.split(","))
    a.kinds = [k for k in a.kinds.split(",") if k]
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    rfile = work / "results.json"
    results = {} if a.fresh or not rfile.is_file() else json.loads(rfile.read_text())
    if not a.doc_only:
        model = model_for(work)
        for size in a.sizes:
            bench_size(work, size, model, results, a)
    notes = a.notes.read_text() if a.notes else ""
    write_doc(a.doc, {k: v for k, v in results.items() if int(k) in a.sizes}, machine(),
              notes)
    log(f"wrote {a.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
