"""Does watching slow the stream? A demo-model ``mindvideo stream`` with the live web view, with and without viewers.

Each run starts the real CLI as a subprocess (the built-in demo model, torch on 1 CPU thread, ``--frames 4 --steps 2``
by default, sinks: a streamed ``.mp4`` and, except in the ``no-web`` condition, ``web:127.0.0.1:0``), waits for its
``ready:`` line, then plays the scanner over TCP: ``--trs`` random raw TRs (seeded) at a fixed cadence. Conditions:

- ``no-web``: no web sink (the file sink only);
- ``web-0``: the web sink, nobody watching;
- ``web-3``: the web sink with 3 viewers attached for the whole stream: headless Chromium pages (``--dump-dom``,
  each page long-polling and loading every clip as a browser on the page does) when a ``chromium`` binary is found,
  else (or with ``--viewers http``) 3 HTTP clients polling as the page does (the state long poll, then the new clips'
  PNGs). At the end each viewer's counters (clips, dropped, bad TRs) are checked against the stream's summary.

The conditions run interleaved (``--reps`` rounds of no-web, web-0, web-3) so a drift in the machine's load hits
all of them; every run waits ``--settle`` seconds between ``ready:`` (and, for web-3, all viewers connected) and
the first TR. Reported per condition, from the stream's ``--stats-json``: the per-TR latency (arrival of the TR
completing a window → frames written by every sink) as p50 / p90 / p99 / max over all its runs and each run's p50
(the spread between runs of one condition is the noise); the generation time per clip; the latency outside
generation (latency − generation: queueing and every sink's ``write``, where a slow sink would show); clips and
drops. Writes
``benchmarks/results/web_view-demo.json`` (device, commit, command, date).

    python benchmarks/web_view.py
    python benchmarks/web_view.py --trs 30 --reps 1 --viewers http
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.benchmarks.provenance import provenance
from mindvideo.demo import default_assets
from mindvideo.engine.sources import encode_frame

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CLI = "import sys; from mindvideo.cli import main; sys.exit(main())"
CONDITIONS = ("no-web", "web-0", "web-3")
VIEWERS = 3


# --------------------------------------------------------------------------------------------------- viewers


class HttpViewer(threading.Thread):
    """Polls as the page does: the long poll on /state, then the PNG of every new clip (at most 5 per answer)."""

    def __init__(self, url: str, name: str):
        super().__init__(daemon=True)
        self.url, self.name, self.final, self.pngs, self.error = url, name, None, 0, None

    def run(self) -> None:
        after = events = 0
        try:
            while True:
                query = f"state?after={after}&events={events}&viewer={self.name}&wait=1"
                with urllib.request.urlopen(self.url + query, timeout=30) as response:
                    state = json.loads(response.read())
                fresh = [c["seq"] for c in state["clips"] if c["seq"] > after][-5:]
                for seq in fresh:
                    with urllib.request.urlopen(f"{self.url}clip/{seq}.png", timeout=30) as response:
                        response.read()
                        self.pngs += 1
                after, events = state["seq"], state["event_seq"]
                if state["ended"] and not fresh:
                    self.final = {**state["counters"], "skipped_frames": state["viewer_skipped_frames"]}
                    return
        except Exception as exc:  # reported in the result, never hidden
            self.error = f"{type(exc).__name__}: {exc}"

    def result(self) -> dict[str, Any]:
        self.join(60)
        return {"kind": "http", "counters": self.final, "pngs": self.pngs, "error": self.error}


class ChromiumViewer:
    """A headless Chromium page watching to the end (its DOM, read when the page has the final summary)."""

    def __init__(self, binary: str, url: str, work: Path, name: str):
        flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"]
        flags += ["--disable-background-networking", "--disable-sync", f"--user-data-dir={work / f'chromium-{name}'}"]
        command = [binary, *flags, "--dump-dom", "--virtual-time-budget=600000", url]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def result(self) -> dict[str, Any]:
        try:
            dom = self.process.communicate(timeout=120)[0].decode("utf-8", "replace")
        except subprocess.TimeoutExpired:
            self.process.kill()
            return {"kind": "chromium", "counters": None, "error": "no DOM within 120 s of the stream's end"}
        counters = {}
        for key in ("clips", "dropped", "bad", "skipped"):
            match = re.search(rf'id="count-{key}">(\d+)<', dom)
            counters[key] = int(match.group(1)) if match else None
        summary = re.search(r'<pre id="summary-json">(.*?)</pre>', dom, re.S)
        ended = 'data-state="ended"' in dom and summary is not None and summary.group(1).strip() != ""
        shown = json.loads(html.unescape(summary.group(1))) if ended else {}
        error = None if ended else "the page did not reach the end"
        return {"kind": "chromium", "counters": counters, "summary_processed": shown.get("processed"), "error": error}


# --------------------------------------------------------------------------------------------------- one run


def feed(port: int, vectors: np.ndarray, cadence_s: float) -> None:
    """The scanner: TR ``t`` sent at ``t0 + t·cadence_s`` (an absolute schedule: no drift)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        start = time.monotonic()
        for t, vector in enumerate(vectors):
            time.sleep(max(0.0, start + t * cadence_s - time.monotonic()))
            sock.sendall(encode_frame(vector))
        sock.sendall(encode_frame(None))


def run_once(condition: str, args: argparse.Namespace, vectors: np.ndarray, work: Path, tag: str) -> dict[str, Any]:
    stats = work / f"stats-{tag}.json"
    sinks = ["--sink", f"file:{work / f'out-{tag}.mp4'}"]
    sinks += [] if condition == "no-web" else ["--sink", "web:127.0.0.1:0"]
    command = [sys.executable, "-c", CLI, "stream", "--checkpoint", str(default_assets() / "checkpoint"),
               "--source", "tcp:127.0.0.1:0", *sinks, "--frames", str(args.frames), "--steps", str(args.steps),
               "--threads", "1", "--tr", str(args.cadence), "--stats-json", str(stats)]  # fmt: skip
    stream = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = ""
        while "ready:" not in ready:
            ready = stream.stderr.readline()
            if not ready and stream.poll() is not None:
                raise SystemExit(f"the stream exited before it was ready: {stream.stderr.read()}")
        port = int(re.search(r"from 127\.0\.0\.1:(\d+)", ready).group(1))
        viewers: list[Any] = []
        if condition == "web-3":
            url = re.search(r"live view at (http://127\.0\.0\.1:\d+/)", ready).group(1)
            for i in range(VIEWERS):
                if args.viewers == "chromium":
                    viewers.append(ChromiumViewer(args.chromium, url, work, f"{tag}-{i}"))
                else:
                    viewers.append(HttpViewer(url, f"v{i}"))
                    viewers[-1].start()
            wait_for_viewers(url, VIEWERS)
        time.sleep(args.settle)  # every condition: the same pause between ready (and the viewers) and the first TR
        feed(port, vectors, args.cadence)
        _, err = stream.communicate(timeout=600)
        if stream.returncode != 0:
            raise SystemExit(f"the stream failed ({stream.returncode}): {err}")
        seen = [viewer.result() for viewer in viewers]
    finally:
        stream.kill()
    recorded = json.loads(stats.read_text())
    summary, latencies = recorded["summary"], [r["latency_s"] for r in recorded["trs"]]
    generate = [r["generate_s"] for r in recorded["trs"]]
    expected = {"clips": summary["processed"], "dropped": summary["dropped"], "bad": summary.get("bad", 0)}
    for viewer in seen:
        counters = viewer["counters"] or {}
        viewer["counters_match_summary"] = all(counters.get(k) == v for k, v in expected.items())
    return {
        "condition": condition,
        "latencies_s": latencies,
        "generate_s": generate,
        "outside_generate_s": [a - b for a, b in zip(latencies, generate)],
        "summary": _short(summary),
        "viewers": seen,
    }


def wait_for_viewers(url: str, count: int, timeout_s: float = 60.0) -> None:
    """Until ``count`` viewers (besides this probe) have polled the page's state."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}state?viewer=benchmark-probe", timeout=10) as response:
            if json.loads(response.read())["counters"]["viewers"] >= count + 1:
                return
        time.sleep(0.2)
    raise SystemExit(f"{count} viewers did not connect within {timeout_s:g} s")


def _short(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("trs_in", "windows", "processed", "dropped", "bad", "degraded", "latency_s")
    return {key: summary.get(key) for key in keys}


def percentiles(values: list[float]) -> dict[str, float]:
    x = np.asarray(values, float)
    out = {f"p{q}": float(np.percentile(x, q)) for q in (50, 90, 99)}
    return {**{k: round(v, 4) for k, v in out.items()}, "max": round(float(x.max()), 4), "n": int(x.size)}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for condition in CONDITIONS:
        mine = [run for run in runs if run["condition"] == condition]
        pooled = [v for run in mine for v in run["latencies_s"]]
        out[condition] = {
            "latency_s": percentiles(pooled),
            "run_p50_s": [round(float(np.median(run["latencies_s"])), 4) for run in mine],
            "generate_s": percentiles([v for run in mine for v in run["generate_s"]]),
            "outside_generate_s": percentiles([v for run in mine for v in run["outside_generate_s"]]),
            "clips": [run["summary"]["processed"] for run in mine],
            "dropped": [run["summary"]["dropped"] for run in mine],
        }
        if condition == "web-3":
            views = [v for run in mine for v in run["viewers"]]
            out[condition]["viewers_counters_match"] = sum(v["counters_match_summary"] for v in views)
            out[condition]["viewers"] = len(views)
    base, watched = out["web-0"]["run_p50_s"], out["web-3"]["run_p50_s"]
    spread = max(max(r) - min(r) for r in (out[c]["run_p50_s"] for c in CONDITIONS))
    out["web-3 minus web-0 p50_s"] = round(float(np.median(watched) - np.median(base)), 4)
    out["largest run-to-run p50 spread within a condition s"] = round(spread, 4)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trs", type=int, default=100)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--cadence", type=float, default=0.4, help="Seconds between TRs (also --tr).")
    parser.add_argument("--reps", type=int, default=3, help="Rounds of the three conditions.")
    parser.add_argument("--settle", type=float, default=5.0, help="Seconds between ready and the first TR.")
    parser.add_argument("--viewers", choices=["chromium", "http"], help="[default: chromium when found, else http]")
    parser.add_argument("--out", type=Path, default=RESULTS / "web_view-demo.json")
    args = parser.parse_args(argv)
    args.chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    args.viewers = args.viewers or ("chromium" if args.chromium else "http")
    if args.viewers == "chromium" and not args.chromium:
        raise SystemExit("--viewers chromium: no chromium binary on PATH")
    command = sys.argv if argv is None else ["benchmarks/web_view.py", *argv]
    record: dict[str, Any] = {"benchmark": "web_view", **provenance(command)}
    from mindvideo.data import FMRITransform

    n_raw = FMRITransform.load(default_assets() / "checkpoint" / "data_transform").n_raw
    vectors = np.random.default_rng(0).standard_normal((args.trs, n_raw)).astype(np.float32)
    runs = []
    with tempfile.TemporaryDirectory(prefix="mindvideo-web-bench-") as tmp:
        for rep in range(args.reps):
            for condition in CONDITIONS:
                runs.append(run_once(condition, args, vectors, Path(tmp), f"{rep}-{condition}"))
                p50 = {key: np.median(runs[-1][key]) for key in ("latencies_s", "generate_s", "outside_generate_s")}
                print(f"{condition:7s} rep {rep}: p50 latency / generate / outside " + " / ".join(
                    f"{v:.4f}" for v in p50.values()) + " s", flush=True)  # fmt: skip
    settings = {"model": "demo", "trs": args.trs, "frames": args.frames, "steps": args.steps}
    settings |= {"cadence_s": args.cadence, "threads": 1}
    record.update(settings=settings, viewers=args.viewers, reps=args.reps, results=aggregate(runs))
    record["runs"] = [{k: v for k, v in run.items() if not k.endswith("_s")} for run in runs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(record["results"], indent=1))


if __name__ == "__main__":
    main()
