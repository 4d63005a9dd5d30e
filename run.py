#!/usr/bin/env python3
"""poppyscan command line: parse, load config, call a pipeline function, map errors to exits.

Exit codes: 0 success; 2 user error (one line on stderr, nothing written); 130 Ctrl-C; 143
SIGTERM (detect resumes on a rerun after either); 141 stdout closed early (as by `| head`);
any other code is a bug (with its traceback).
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from outputs.atomic import check_can_create, first_missing
from outputs.targets import area_text
from pipeline.errors import NotImplementedYet, OutputBusy, PoppyscanError, StoppedMidRun

PROG = "poppyscan"
log = logging.getLogger(PROG)
FORMATS = ("geojson", "gpkg", "csv", "gpx", "kml")
CAMPAIGN = ("assign", "verify", "recheck", "history", "summary")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"{PROG}: error: {message} (see `python {self.prog} --help`)\n")
        raise SystemExit(2)


def _path(text: str) -> Path:
    """A path argument; an empty one (an unset shell variable) would mean the current
    folder, where detect would write its deliverables among the user's files."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset variable?)")
    return Path(text)


def _formats(text: str) -> tuple[str, ...]:
    items = tuple(s.strip().lower() for s in text.split(",") if s.strip())
    if not items:
        raise argparse.ArgumentTypeError(
            f"no format given ({text!r}); give one or more of {','.join(FORMATS)}")
    bad = [s for s in items if s not in FORMATS]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown format(s) {bad}; allowed: {','.join(FORMATS)}")
    return items


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="run.py", description="poppyscan: find opium-poppy plots in Sentinel-2 "
                "and drone imagery and export ranked target lists for ground teams.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", help="more detail (debug log)")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="log only errors, no progress bars; the command's result (a summary "
                   "or report table on stdout) is still printed")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("simulate", help="write a seeded synthetic scene (a test instrument, "
                       "not evidence about real fields)")
    s.add_argument("--out", type=_path, required=True, help="output folder, new or empty")
    s.add_argument("--sensor", choices=("sentinel2", "drone", "drone-rgb"), default="sentinel2",
                   help="Sentinel-2 L2A dates, a P4 Multispectral flight or an RGB flight "
                   "(default sentinel2)")
    s.add_argument("--size", type=int, default=256, help="scene side in pixels (default 256)")
    s.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default 0)")
    s.add_argument("--prevalence", type=float, default=0.01,
                   help="share of poppy area, 0-0.05; 0 gives a scene without poppy, and "
                   "a drone scene holds at least one plot otherwise (default 0.01)")

    s = sub.add_parser("inspect", help="print what poppyscan reads from images, as JSON")
    s.add_argument("--images", type=_path, nargs="+", required=True, metavar="PATH",
                   help="image files or folders of one scene (as for train)")
    s.add_argument("--sensor", help="sensor name (configs/sensors/) or sensor YAML file, for "
                   "files without band descriptions")
    s.add_argument("--aoi", type=_path, help="clip to this polygon file")

    s = sub.add_parser("fetch", help="download Sentinel-2 L2A scenes for an AOI and season "
                       "(Sentinel Hub or Copernicus Data Space)")
    s.add_argument("--aoi", type=_path, required=True, help="AOI polygon file")
    s.add_argument("--window", required=True, help="START/END, ISO dates")
    s.add_argument("--out", type=_path, required=True, help="folder for the scenes "
                   "(S2_YYYYMMDD.tif, dem.tif, fetch.json; download cache in .poppyscan/): "
                   "a new folder or an earlier fetch's; S2_*.tif or dem.tif that no fetch "
                   "wrote there are refused, never replaced")
    s.add_argument("--max-cloud", type=float, default=30.0, help="max cloud cover %% "
                   "(default 30)")
    s.add_argument("--resolution", type=float, default=10.0, help="metres (default 10)")
    s.add_argument("--dem", action="store_true", help="also fetch the Copernicus DEM 30 m")
    s.add_argument("--sh-base-url", help="service base URL (CDSE: "
                   "https://sh.dataspace.copernicus.eu)")
    s.add_argument("--sh-token-url", help="OAuth token URL")

    s = sub.add_parser("train", help="train a model from labelled polygons")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=_path, nargs="+", metavar="PATH",
                     help="image files or folders of one scene: a GeoTIFF per date, "
                     ".SAFE/.zip products, per-band folders, drone orthomosaics")
    src.add_argument("--manifest", type=_path, help="YAML list of scenes (images: files, "
                     "folders or patterns like 2023/S2_*.tif; labels; optional dem and "
                     "calendar), paths relative to the manifest")
    s.add_argument("--labels", type=_path, help="labelled polygons (class in property "
                   "'class', target class 'poppy')")
    s.add_argument("--model", type=_path, required=True,
                   help="model folder to write (a model there is replaced)")
    s.add_argument("--config", type=_path, help="survey config YAML (default by pixel size "
                   "and bands: below 2 m configs/survey-drone.yaml, or without a nir band "
                   "configs/survey-drone-rgb.yaml; else configs/survey-sentinel2.yaml); a "
                   "config of your own need hold only what it changes: the rest comes from "
                   "the shipped config for its sensor")
    s.add_argument("--dem", type=_path, help="DEM GeoTIFF (metres)")

    s = sub.add_parser("detect", help="find candidate poppy patches and write target lists")
    s.add_argument("--images", type=_path, nargs="+", required=True, metavar="PATH",
                   help="image files or folders of the survey scene (as for train)")
    s.add_argument("--model", type=_path, required=True, help="model folder written by train")
    s.add_argument("--out", type=_path, required=True, help="output folder (created; a rerun "
                   "of the same command resumes)")
    s.add_argument("--config", type=_path, help="survey config YAML (default: the one the "
                   "model was trained with); one without a sensor: key holds changes to "
                   "that one (e.g. only patches.min_mapping_unit_m2)")
    s.add_argument("--dem", type=_path, help="DEM GeoTIFF (metres, any CRS) for terrain "
                   "correction and target elevation/slope")
    s.add_argument("--aoi", type=_path, help="survey area polygons (GeoJSON, GeoPackage, "
                   "Shapefile; any CRS): detect inside them only")
    s.add_argument("--exclude", type=_path, help="polygons of known ornamental-poppy sites")
    s.add_argument("--formats", type=_formats, help="comma list of " + ",".join(FORMATS)
                   + " (default: the config's outputs.formats)")
    s.add_argument("--scheduler", help="where the tiles run: threads (default), processes, "
                   "local:N (a dask cluster of N worker processes here, N at most 4 per "
                   "CPU) or a running dask scheduler, tcp://HOST:PORT or HOST:PORT (plain tcp, no TLS; the scheduler "
                   "listens on 8786 by default, 8787 is its dashboard), which must answer "
                   "within 10 s")
    s.add_argument("--history", type=_path, help="earlier targets (campaign issue; reserved)")

    s = sub.add_parser("assign", help="assign targets to units and teams (not implemented yet)")
    s.add_argument("--targets", type=_path, required=True)
    s.add_argument("--units", type=_path, required=True)
    s.add_argument("--out", type=_path, required=True)
    s.add_argument("--teams", type=_path)
    s.add_argument("--sample", type=int)
    s = sub.add_parser("verify", help="take field verification results back in "
                       "(not implemented yet)")
    s.add_argument("--targets", type=_path, required=True)
    s.add_argument("--field", type=_path, required=True)
    s.add_argument("--out", type=_path, required=True)
    s = sub.add_parser("recheck", help="reprocess areas flagged by national monitoring "
                       "(not implemented yet)")
    s.add_argument("--flags", type=_path, required=True)
    s.add_argument("--images", type=_path, nargs="+", required=True, metavar="PATH")
    s.add_argument("--model", type=_path, required=True)
    s.add_argument("--out", type=_path, required=True)
    s.add_argument("--targets", type=_path)
    s = sub.add_parser("history", help="compare seasons, find repeat planting "
                       "(not implemented yet)")
    s.add_argument("--targets", type=_path, nargs="+", required=True)
    s.add_argument("--out", type=_path, required=True)
    s = sub.add_parser("summary", help="campaign summary per unit (not implemented yet)")
    s.add_argument("--verified", type=_path, required=True)
    s.add_argument("--units", type=_path, required=True)
    s.add_argument("--out", type=_path, required=True)

    for name in CAMPAIGN:
        sub.choices[name].description = (
            "Not implemented yet: reserved for a campaign issue. The options below are its "
            "contract; until it lands the command exits 2 whatever it is given.")

    s = sub.add_parser("demo", help="simulate two scenes, train on one, detect on the other")
    s.add_argument("--out", type=_path, default=Path("demo-out"),
                   help="output folder (default demo-out)")
    return p


class _Once(logging.Filter):
    """Each message once per run: a stage that runs per tile or per training copy (a skipped
    index, a scaling note) would otherwise repeat the same line."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg in self.seen:
            return False
        self.seen.add(msg)
        return True


class _Held(logging.StreamHandler):
    """stderr, held for the first ``HOLD_S`` seconds of a command (a timer), until its first
    progress bar or until it prints its result: a user error met in that time, while checking
    the inputs or in the first tiles (a damaged block), is then the only line on stderr, as
    the CLI contract asks, and the held lines are dropped with it. Not held with -v."""

    HOLD_S = 30.0

    def __init__(self, hold: bool = True) -> None:
        super().__init__(sys.stderr)
        self.held: list[logging.LogRecord] | None = [] if hold else None
        self.timer: threading.Timer | None = None
        if hold:
            self.timer = threading.Timer(self.HOLD_S, self.show_held)
            self.timer.daemon = True
            self.timer.start()

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is None:
            super().emit(record)
        else:
            self.held.append(record)

    def show_held(self) -> None:             # (not ``release``: a Handler's lock method)
        self.acquire()
        try:
            held, self.held = self.held, None
            for r in held or ():
                super().emit(r)
        finally:
            self.release()
        self._stop_timer()

    def drop_held(self) -> None:
        self.acquire()
        try:
            self.held = None
        finally:
            self.release()
        self._stop_timer()

    def _stop_timer(self) -> None:
        if self.timer is not None and self.timer is not threading.current_thread():
            self.timer.cancel()


_HANDLER: _Held | None = None


def _setup_logging(verbose: bool, quiet: bool) -> None:
    global _HANDLER
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    if _HANDLER is not None:                        # an earlier run in this process
        _HANDLER.show_held()
    handler = _HANDLER = _Held(hold=not verbose)   # -v: every line as it comes
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    handler.addFilter(_Once())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if not verbose else logging.DEBUG)
    # their debug lines hold the OAuth client secret and tokens (fetch -v printed them)
    for name in ("oauthlib", "requests_oauthlib"):
        logging.getLogger(name).setLevel(logging.INFO)
    for name in (PROG, "pipeline", "indices", "classifiers", "outputs"):
        logging.getLogger(name).setLevel(level)
    # library warnings (numpy, shapely, rasterio) are for developers: shown with -v only, so a
    # user error stays one line
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose else logging.ERROR)


def _progress(quiet: bool):
    """A factory of per-stage progress callbacks (rich bars on a terminal, else silent)."""
    if quiet or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    # on stderr, the terminal the test above saw: on stdout (rich's default) a redirected
    # result (> summary.txt, | tee) got an empty line per bar and the terminal no bar
    console = Console(stderr=True)

    def factory(stage: str, total: int):
        _show_held_log()                   # a progress bar: show what was said before it
        prog = Progress("[bold]{task.description}", BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), transient=True, console=console)
        prog.start()
        task = prog.add_task(stage, total=total)

        def tick(n: int) -> None:
            prog.advance(task, n)
            if prog.tasks[0].completed >= total:
                prog.stop()
        return tick
    return factory


def _check_files(a, *options: str) -> None:
    """The input files named by ``options`` exist and are files, before they are read (a
    typo in train's --dem was a traceback after the images were hashed)."""
    for opt in options:
        given = getattr(a, opt, None)
        if not isinstance(given, Path):
            continue
        if not given.exists():
            broken = " (a link to a missing file)" if given.is_symlink() else ""
            raise PoppyscanError(f"--{opt} {given}: no such file{broken}; check the path")
        if given.is_dir():
            raise PoppyscanError(f"--{opt} {given}: is a folder; give the file itself")


def _config(path: Path | None, **overrides):
    from pipeline.config import load_config, with_overrides
    cfg = load_config(path)
    return with_overrides(cfg, **overrides) if overrides else cfg


def cmd_simulate(a) -> int:
    from pipeline.simulate import simulate
    _fresh_out(a.out)
    res = simulate(a.out, sensor=a.sensor, size=a.size, seed=a.seed, prevalence=a.prevalence)
    _say(f"simulated {a.sensor} scene, {len(res.images)} image(s), {len(res.dates)} date(s): "
          f"{a.out}  (synthetic: not evidence about real fields)")
    return 0


def cmd_inspect(a) -> int:
    from pipeline.inspect import inspect_images
    _check_files(a, "aoi")
    _say(json.dumps(inspect_images(a.images, sensor=a.sensor, aoi=a.aoi), indent=2))
    return 0


def cmd_fetch(a) -> int:
    from pipeline.fetch import fetch
    _check_files(a, "aoi")
    doc = fetch(a.aoi, a.window, a.out, max_cloud=a.max_cloud, resolution=a.resolution,
                dem=a.dem, base_url=a.sh_base_url, token_url=a.sh_token_url)
    written, skipped = doc.get("written", []), doc.get("skipped", [])
    if written:
        _say(f"fetched {len(written)} date(s) into {a.out}")
    else:                          # exit 0, but say why there is nothing to survey
        why = (f"{len(skipped)} found but skipped ({skipped[0]['reason']}"
               + (", ..." if len(skipped) > 1 else "") + ")" if skipped else
               "no acquisition in the window over the AOI")
        _say(f"fetched 0 dates into {a.out}: {why}; see {a.out / 'fetch.json'}")
    return 0


def cmd_train(a) -> int:
    from pipeline.survey import default_config, read_manifest, train, train_manifest
    # the arguments first: nothing is read before they are known to fit together
    if a.manifest and (a.labels or a.dem):
        raise PoppyscanError(f"{'--labels' if a.labels else '--dem'} goes with --images; a "
                             "manifest names each scene's own labels and dem")
    if not a.manifest and not a.labels:
        raise PoppyscanError("--images needs --labels (a polygon file with 'class')")
    _check_files(a, "config")
    cfg = _config(a.config) if a.config else None
    _check_files(a, "manifest", "labels", "dem")
    if cfg is None:
        first = read_manifest(a.manifest)[0] if a.manifest else None
        cfg = (default_config(first.images, dem=first.dem) if first else
               default_config(a.images, dem=a.dem))
    if a.manifest:
        report = train_manifest(a.manifest, a.model, cfg)
    else:
        report = train(a.images, a.labels, a.model, cfg, dem=a.dem)
    from classifiers.validation import text_table
    _say(text_table(report))
    _say(f"model written to {a.model}")
    return 0


def cmd_detect(a, quiet: bool) -> int:
    from pipeline.survey import detect
    if a.history:
        raise NotImplementedYet("--history is not implemented yet (campaign issue)")
    from pipeline.config import load_config, with_overrides
    from pipeline.survey import default_config, detect_config
    _check_files(a, "config")
    cfg = load_config(a.config, say_base=False) if a.config else None
    _check_files(a, "dem", "aoi", "exclude")
    cfg = detect_config(cfg, a.model) if cfg else default_config(a.images, a.model, a.dem)
    cfg = with_overrides(cfg, **{"run.scheduler": a.scheduler})
    res = detect(a.images, a.model, a.out, cfg, dem=a.dem, aoi=a.aoi, exclude=a.exclude,
                 formats=a.formats, progress=_progress(quiet))
    _print_detect(res)
    return 0


def _print_detect(res) -> None:
    c = res.report["counts"]
    if res.n_targets == 0:
        why = ("nothing was seen: every pixel is clouded, shadowed or without data on every "
               "date" if c["candidate_share"] is None else
               "no pixel reached the model's threshold" if c["patches"] == 0 else
               f"{c['patches']} patch(es) found, {c['excluded_patches']} on excluded sites, "
               f"{c['below_mmu']} "
               "below the minimum mapping unit")
        _say(f"no targets: {why}. Blind areas (no clear flowering observation): "
              f"{c['blind_areas']} polygon(s), {area_text(c['blind_area_m2'])} m^2 - an empty "
              "list there is not 'no poppy'.")
    else:
        share = c["candidate_share"]
        _say(f"{res.n_targets} target(s); the model flags "
              f"{'n/a' if share is None else f'{100 * share:.1f}%'} of the area seen; blind "
              f"areas: {c['blind_areas']} polygon(s), {area_text(c['blind_area_m2'])} m^2")
    _say(f"outputs in {res.out}: " + ", ".join(p.name for p in res.files))


def cmd_demo(a, quiet: bool) -> int:
    from pipeline.demo import run_demo
    check_can_create(a.out, "--out")               # a rerun into its own folder is fine
    _show_held_log()          # the demo narrates its steps as they happen
    run_demo(a.out, progress=_progress(quiet))
    return 0


def _fresh_out(out: Path) -> None:
    """A scene is written whole: into a new or empty folder, never beside another scene (its
    dates and labels would mix with the new ones)."""
    check_can_create(out, "--out")
    if out.is_dir() and any(out.iterdir()):
        raise PoppyscanError(f"{out}: folder is not empty; give a new or empty --out (a "
                             "scene written beside another would mix their dates and labels)")


#: the option naming the folder a command writes; a folder the run created is removed again
#: when the run ends in a user error (fetch keeps its download cache for the rerun)
OUTPUT_OPTION = {"simulate": "out", "detect": "out", "demo": "out", "train": "model"}


def _dispatch(args) -> int:
    if args.command in CAMPAIGN:
        raise NotImplementedYet(f"'{args.command}' is not implemented yet (campaign "
                                "issue); see `python run.py --help`")
    if getattr(args, "images", None):   # patterns the shell left alone ('S2_*.tif' quoted)
        from pipeline.ingest import expand_patterns
        args.images = expand_patterns(args.images)
    if args.command == "detect":
        return cmd_detect(args, args.quiet)
    if args.command == "demo":
        return cmd_demo(args, args.quiet)
    return {"simulate": cmd_simulate, "inspect": cmd_inspect, "fetch": cmd_fetch,
            "train": cmd_train}[args.command](args)


def _as_user_error(exc: Exception, args) -> PoppyscanError | None:
    if isinstance(exc, PoppyscanError):
        return exc
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" writing {exc.filename}" if exc.filename else ""
        return PoppyscanError(f"no space left on the disk{where}; free some space or write "
                              "the outputs elsewhere")
    if isinstance(exc, (PermissionError, FileNotFoundError)) and exc.filename:
        # an input the user cannot read (or that went away during the run), an output
        # folder they cannot write in
        what = ("permission denied; give a file or folder you can read (or write, for an "
                "output)" if isinstance(exc, PermissionError) else
                "no such file (removed during the run?); check the path and rerun")
        return PoppyscanError(f"{exc.filename}: {what}")
    # pixels are read lazily: a damaged file fails inside a dask compute, as a rasterio error
    # (GDAL names the file without its folder: the --images files give it back)
    from pipeline.readers._raster import read_failure
    given = getattr(args, "images", None) or []
    files = [f for p in given for f in (sorted(p.iterdir()) if p.is_dir() else [p])]
    return read_failure(exc, files)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    # the first word that is no option is the command (the global options take no value)
    command = next((a for a in given if not a.startswith("-")), None)
    if command in CAMPAIGN and not {"-h", "--help"} & set(given):
        # before its (reserved) options are parsed: 'assign' alone said which were missing
        sys.stderr.write(f"{PROG}: error: '{command}' is not implemented yet (campaign "
                         "issue); see `python run.py --help`\n")
        return 2
    args = parser.parse_args(argv)
    if not args.command:
        sys.stderr.write(f"{PROG}: error: give a command (simulate, inspect, fetch, train, "
                         "detect, demo); see `python run.py --help`\n")
        return 2
    _setup_logging(args.verbose, args.quiet)
    out = getattr(args, OUTPUT_OPTION.get(args.command, ""), None)
    created = out is not None and not out.exists()
    new_top = first_missing(out) if created else None   # nest/ of --out nest/a/b
    # the run state a run started in an existing folder (removed again on a user error)
    state = None if out is None or created or args.command != "detect" else out / ".poppyscan"
    state_created = state is not None and not state.exists()
    # SIGTERM (kill, timeout, a batch scheduler) unwinds like Ctrl-C, so that the cleanup a
    # command does on an interrupt runs (fetch's staging folder was left behind)
    previous = (signal.signal(signal.SIGTERM, _terminate)
                if threading.current_thread() is threading.main_thread() else None)
    try:
        return _dispatch(args)
    except BrokenPipeError:
        # stdout closed early (`run.py inspect ... | head -1`): stop quietly, as `yes | head`
        # does; stdout goes to /dev/null so the exit's own flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (PoppyscanError, OSError) as exc:
        err = _as_user_error(exc, args)
        if err is None:
            _remove_new(created, out, new_top)
            _show_held_log()
            raise
        # a run stopped mid-way keeps its finished tiles, in .poppyscan only, as after
        # Ctrl-C; so does a detect whose disk filled up (tiles done, the deliverables not)
        full = (args.command == "detect" and isinstance(exc, OSError)
                and exc.errno == errno.ENOSPC)
        # (another detect's run state, into the same folder, is not this run's to remove)
        keep = isinstance(err, (StoppedMidRun, OutputBusy)) or full
        if full:
            shutil.rmtree(out / ".poppyscan" / "staging", ignore_errors=True)
            err = PoppyscanError(f"{err}; the finished tiles are kept: rerun the same command "
                                 "to resume")
        if created and out.is_dir() and not keep:
            shutil.rmtree(new_top, ignore_errors=True)   # no half-written output folder
        elif state_created and state.is_dir() and not keep:
            shutil.rmtree(state, ignore_errors=True)
        if _HANDLER is not None:      # the error is the line to read: the held ones go
            _HANDLER.drop_held()
        msg = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        sys.stderr.write(f"{PROG}: error: {msg}\n")
        return 2
    except KeyboardInterrupt as exc:
        _show_held_log()
        what = "stopped (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
        if args.command in _NOT_RESUMED and created and out.is_dir():
            # half a scene looks like a whole one, and the rerun refused the folder
            shutil.rmtree(new_top, ignore_errors=True)
            sys.stderr.write(f"{PROG}: {what}; {out} removed: rerun the same command\n")
        elif args.command in _RESUMED:
            sys.stderr.write(f"{PROG}: {what}; rerun the same command to resume\n")
        else:   # (train writes its model at the very end: nothing of it was written)
            sys.stderr.write(f"{PROG}: {what}; rerun the same command\n")
        return 143 if isinstance(exc, _Terminated) else 130
    except Exception:
        # a fault of poppyscan's own (the traceback follows, for a bug report): no folder it
        # made is left behind, half-made (a hidden run state only, or a partial scene)
        _remove_new(created, out, new_top)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _show_held_log()


def _remove_new(created: bool, out: Path | None, new_top: Path | None) -> None:
    """Remove the output folder this run created (with the folders of its path it made)."""
    if created and out is not None and out.is_dir() and new_top is not None:
        shutil.rmtree(new_top, ignore_errors=True)


#: commands whose interrupted output is not resumed (simulate writes a scene from scratch)
_NOT_RESUMED = {"simulate"}
#: commands whose rerun takes up where an interrupted run stopped (detect's finished tiles,
#: fetch's downloads); the others start again
_RESUMED = {"detect", "fetch"}


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is (a KeyboardInterrupt, so every cleanup an
    interrupt runs, runs)."""


def _terminate(signum, frame) -> None:
    raise _Terminated()


def _show_held_log() -> None:
    if _HANDLER is not None:
        _HANDLER.show_held()


def _say(*parts: object) -> None:
    """A command's result on stdout, after the notes held on stderr (they came first)."""
    _show_held_log()
    print(*parts)


if __name__ == "__main__":
    sys.exit(main())
