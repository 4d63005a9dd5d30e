"""Peak memory of `run.py fetch` for one date, against the tests' fake service (no internet).

    python bench/fetch_memory.py [SIDE_KM ...]      (default 30 50 70)

For each square AOI side (km, at 10 m), runs fetch in its own process and prints one JSON line:
{"side_km", "grid_mpx", "requests", "seconds", "peak_rss_mb", "bytes_per_px"}. The fake
service (tests/sh_server.py) runs in this process, so the child's peak is fetch's own. The
figures go to docs/benchmarks.md and docs/fetch.md (Limits).
"""
from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from sh_server import CLIENT_ID, CLIENT_SECRET, FakeSentinelHub, feature  # noqa: E402

LON, LAT = 64.35, 31.6


def aoi_file(folder: Path, side_km: float) -> Path:
    dx = side_km * 1000 / (111_320 * math.cos(math.radians(LAT)))
    dy = side_km * 1000 / 110_900
    ring = [[LON, LAT], [LON + dx, LAT], [LON + dx, LAT + dy], [LON, LAT + dy], [LON, LAT]]
    path = folder / "aoi.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {},
                                "geometry": {"type": "Polygon", "coordinates": [ring]}}))
    return path


def measure(side_km: float) -> dict:
    server = FakeSentinelHub(features=[feature("S2A_X_20240513", "2024-05-13T06:10:22Z",
                                               5.0)]).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            env = dict(os.environ, OAUTHLIB_INSECURE_TRANSPORT="1", SH_CLIENT_ID=CLIENT_ID,
                       SH_CLIENT_SECRET=CLIENT_SECRET, XDG_CONFIG_HOME=str(folder / "cfg"))
            env.pop("SH_PROFILE", None)
            cmd = [sys.executable, str(ROOT / "run.py"), "-q", "fetch",
                   "--aoi", str(aoi_file(folder, side_km)), "--out", str(folder / "out"),
                   "--window", "2024-05-13/2024-05-13", "--sh-base-url", server.base_url,
                   "--sh-token-url", server.token_url]
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - t0
            peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            if peak_kb <= before:
                raise SystemExit("a larger child ran before: give the sides in growing order")
            grid = json.loads((folder / "out" / "fetch.json").read_text())["grid"]
    finally:
        server.stop()
    px = grid["width"] * grid["height"]
    return {"side_km": side_km, "grid_mpx": round(px / 1e6, 1),
            "requests": len(server.process_requests), "seconds": round(seconds, 1),
            "peak_rss_mb": round(peak_kb / 1024), "bytes_per_px": round(peak_kb * 1024 / px)}


def main(argv: list[str]) -> None:
    for side in sorted(float(a) for a in argv) or (30.0, 50.0, 70.0):
        print(json.dumps(measure(side)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
