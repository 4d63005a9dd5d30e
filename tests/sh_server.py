"""A fake Sentinel Hub / CDSE service on 127.0.0.1 for tests (no internet).

It implements what sentinelhub-py 3.12 talks to:

* ``POST /oauth/token`` -- OAuth2 client-credentials (form body); 401 ``invalid_client`` for
  wrong credentials;
* ``POST /api/v1/catalog/1.0.0/search`` -- STAC search paginated with ``context.next``;
* ``POST /api/v1/process`` -- a TIFF for one response, a tar of ``<id>.tif`` files for several.

Process responses are synthetic but deterministic: for the S2 request the reflectance band ``i``
holds ``1000 + 100 * i + column_index`` where ``column_index`` is the global column of the pixel
(easting / resolution), so a test can check that tiles were mosaicked in place; SCL is 4; the
sun angles are 35.5 and 150.25 degrees. Pixels west of ``nodata_west_of`` (easting) are no data
(dataMask 0). The DEM request returns ``500 + row_index`` metres.
"""
from __future__ import annotations

import io
import json
import re
import tarfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import numpy as np
import tifffile

CLIENT_ID = "test-client"
CLIENT_SECRET = "test-secret"
TOKEN = "fake-access-token"
SUN_ZENITH = 35.5
SUN_AZIMUTH = 150.25


@dataclass
class FakeSentinelHub:
    """Start with ``start()``; ``base_url``/``token_url`` point to it; counters are public."""

    features: list[dict] = field(default_factory=list)
    page_size: int = 2
    fail_process_with: list[int] = field(default_factory=list)  # statuses to answer first
    fail_token_with: list[int] = field(default_factory=list)    # statuses to answer first
    damage_process: list[str] = field(default_factory=list)     # "cut" or "garbage" bodies first
    process_delay_s: float = 0.0                                # a slow service
    html_paths: set[str] = field(default_factory=set)           # answered with a web page
    retry_after_ms: int = 20
    nodata_west_of: float | None = None
    token_requests: int = 0
    catalog_requests: int = 0
    process_requests: list[dict] = field(default_factory=list)  # successful payloads
    process_attempts: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/oauth/token"

    def start(self) -> FakeSentinelHub:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with _LOCK:
                    fake._handle(self, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ------------------------------------------------------------------ endpoints

    def _handle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        if h.path.rstrip("/") in self.html_paths:     # a proxy's or maintenance page
            return _send_bytes(h, 200, b"<html><body>Service maintenance</body></html>",
                               "text/html")
        if h.path == "/oauth/token":
            return self._token(h, body)
        if h.path not in ("/api/v1/catalog/1.0.0/search", "/api/v1/process"):
            return _send(h, 404, {"error": "not found"})
        if h.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _send(h, 401, {"error": {"status": 401, "reason": "Unauthorized"}})
        if h.path == "/api/v1/catalog/1.0.0/search":
            return self._search(h, json.loads(body))
        return self._process(h, json.loads(body))

    def _token(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        self.token_requests += 1
        if self.fail_token_with:
            status = self.fail_token_with.pop(0)
            error = "too_many_requests" if status == 429 else "temporarily_unavailable"
            headers = {"Retry-After": "0"} if status == 429 else {}
            return _send(h, status, {"error": error, "error_description": "fake failure"},
                         headers=headers)
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return _send(h, 401, {"error": "invalid_client",
                                  "error_description": "Invalid client credentials"})
        return _send(h, 200, {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600})

    def _search(self, h: BaseHTTPRequestHandler, payload: dict) -> None:
        self.catalog_requests += 1
        start, end = (np.datetime64(t.replace("Z", "")) for t in payload["datetime"].split("/"))
        matches = [f for f in self.features
                   if start <= np.datetime64(f["properties"]["datetime"].replace("Z", "")) <= end]
        offset = int(payload.get("next") or 0)
        page = matches[offset:offset + self.page_size]
        nxt = offset + self.page_size
        context = {"limit": self.page_size, "returned": len(page)}
        if nxt < len(matches):
            context["next"] = nxt
        return _send(h, 200, {"type": "FeatureCollection", "features": page, "context": context})

    def _process(self, h: BaseHTTPRequestHandler, payload: dict) -> None:
        self.process_attempts += 1
        if self.process_delay_s:
            time.sleep(self.process_delay_s)
        if self.fail_process_with:
            status = self.fail_process_with.pop(0)
            headers = {"Retry-After": str(self.retry_after_ms)} if status == 429 else {}
            return _send(h, status, {"error": {"status": status, "reason": "fake failure"}},
                         headers=headers)
        self.process_requests.append(payload)
        out = payload["output"]
        width, height = out["width"], out["height"]
        west, south, east, north = payload["input"]["bounds"]["bbox"]
        res = (east - west) / width
        cols = int(round(west / res)) + np.arange(width)
        rows = int(round(-north / res)) + np.arange(height)
        eastings = west + (np.arange(width) + 0.5) * res
        nodata = (np.zeros(width, bool) if self.nodata_west_of is None
                  else eastings < self.nodata_west_of)
        script = payload["evalscript"]
        files: dict[str, np.ndarray] = {}
        if payload["input"]["data"][0]["type"] == "dem":
            dem = np.repeat((500.0 + rows % 1000)[:, None], width, axis=1).astype(np.float32)
            dem[:, nodata] = np.nan
            files["default"] = dem
        else:
            nbands = int(re.search(r'id: "default", bands: (\d+)', script).group(1))
            dn = np.zeros((height, width, nbands), np.uint16)
            for i in range(nbands - 1):
                dn[:, :, i] = 1000 + 100 * i + (cols % 1000)[None, :]
            dn[:, :, -1] = 4
            angles = np.empty((height, width, 2), np.float32)
            angles[..., 0], angles[..., 1] = SUN_ZENITH, SUN_AZIMUTH
            dn[:, nodata, :] = 0
            angles[:, nodata, :] = np.nan
            files["default"], files["angles"] = dn, angles
        responses = [r["identifier"] for r in out["responses"]]
        if len(responses) == 1:
            blob, ctype = _tiff(files[responses[0]]), "image/tiff"
        else:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for ident in responses:
                    part = _tiff(files[ident])
                    info = tarfile.TarInfo(f"{ident}.tif")
                    info.size = len(part)
                    tar.addfile(info, io.BytesIO(part))
            blob, ctype = buf.getvalue(), "application/x-tar"
        if self.damage_process:      # a body cut short, or not what it says it is
            blob = blob[:len(blob) // 3] if self.damage_process.pop(0) == "cut" else b"x" * 999
        return _send_bytes(h, 200, blob, ctype)


_LOCK = threading.Lock()


def _tiff(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, photometric="minisblack",
                     planarconfig="contig" if array.ndim == 3 else None)
    return buf.getvalue()


def _send(h: BaseHTTPRequestHandler, status: int, obj: object,
          headers: dict[str, str] | None = None) -> None:
    _send_bytes(h, status, json.dumps(obj).encode(), "application/json", headers)


def _send_bytes(h: BaseHTTPRequestHandler, status: int, blob: bytes, ctype: str,
                headers: dict[str, str] | None = None) -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(blob)))
    for key, value in (headers or {}).items():
        h.send_header(key, value)
    h.end_headers()
    h.wfile.write(blob)


def feature(fid: str, datetime: str, cloud: float) -> dict:
    """A minimal catalog feature as the Catalog API returns it with our ``fields``."""
    return {"type": "Feature", "stac_version": "1.0.0", "id": fid,
            "properties": {"datetime": datetime, "eo:cloud_cover": cloud}}
