"""Soak test of ``mindvideo stream``: a simulated 1-hour scan (1,800 TRs of 2 s) through the folder and TCP sources.

For each source the script starts the real CLI, ``mindvideo stream``, as a subprocess (torch on 1 CPU thread,
sink: one streamed ``.mp4``), waits for its ``ready:`` line (model loaded and warmed up),
then plays the scanner on an **accelerated clock**: TR ``t`` is produced at ``t0 + t·cadence`` — written into the
watched folder as a 3-D NIfTI volume (in place, so the decoder meets partially written files; a one-row CIFTI file
for CIFTI-trained models), or sent over TCP to 127.0.0.1 as a raw float32 vector in the documented framing. The
cadence is chosen from the measured generation time (3 × its p90, at least 0.1 s) unless ``--cadence`` is given;
``--tr`` passed to the decoder is that cadence, so "behind schedule" means behind the accelerated scanner. The
behind-schedule policy defaults to ``lower-steps`` with a queue of 4 windows: the accelerated clock shrinks every
margin ~15-fold, and 4 queued windows at 0.13 s are 0.5 s of slack, less than one real 2-s TR; a machine stall
shorter than that is absorbed, a longer lag lowers the steps (counted as degraded clips) and only a full queue
drops a window (counted as lost). Meanwhile the decoder process's resident memory (VmRSS, /proc) is sampled every
0.5 s.

Checks (exit code 1 if one fails): **no TR lost** — the CLI exits 0, every window is decoded (N TRs give N - lag
clips, the windows offline preprocessing makes; 0 dropped), its per-TR records are TRs 0…N-lag-1, the mp4 holds
(N - lag) × frames frames; **no memory growth** — RSS at the end minus RSS once ``--warm-trs`` TRs were produced
≤ ``--rss-bound-mib``. Reports the decoder latency (arrival of the TR that completes a window → frames written),
the end-to-end latency (that TR written/sent by the producer → frames written; CLOCK_MONOTONIC is shared by both
processes) and RSS over time; writes ``benchmarks/results/stream_soak-<host>.json`` (device,
commit, command, date).

The model: the built-in demo model (``mindvideo/assets/demo/checkpoint``, if present with its ``data_transform/``),
else a tiny random checkpoint with a transform fitted on a tiny simulation (``--model tiny`` forces it). The scan is
a fresh simulation on the same voxel grid (so the same mask / grayordinates) with another seed. Example::

    python benchmarks/stream_soak.py                            # 1,800 TRs per source, automatic cadence
    python benchmarks/stream_soak.py --trs 300 --sources tcp --cadence 0.1 --model tiny
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import mindvideo
from mindvideo.benchmarks.provenance import cpu_name, provenance
from mindvideo.data import FMRITransform, PrepareConfig, SimConfig, prepare, preprocess_defaults, simulate
from mindvideo.data.prepare import resolve_loading
from mindvideo.engine.sources import encode_frame

CLI = "import sys; from mindvideo.cli import main; sys.exit(main())"
SAMPLE_S = 0.5


# --------------------------------------------------------------------------------------------------- set-up


def model_checkpoint(work: Path, choice: str) -> tuple[Path, str]:
    """The demo checkpoint when present (and ``choice`` allows), else a tiny random one with a fitted transform."""
    demo = Path(mindvideo.__file__).parent / "assets" / "demo" / "checkpoint"
    if choice in ("auto", "demo") and (demo / "data_transform").is_dir():
        return demo, "demo"
    if choice == "demo":
        raise SystemExit(f"no demo model with a data_transform/ at {demo}")
    from mindvideo.checkpoint import build_random_checkpoint

    simulate(work / "sim", SimConfig.tiny(seed=3, formats=("nifti",)))
    config = PrepareConfig(layout="wen", size=32, video=False, fmri_format="nifti")
    preprocess = preprocess_defaults("wen", select="topk", top_k=40)
    prepare(
        work / "sim",
        work / "prep",
        config=config,
        preprocess=preprocess,
        loading=resolve_loading(work / "sim", config),
    )
    transform = FMRITransform.load(work / "prep" / "data_transform")
    ckpt = build_random_checkpoint(work / "ckpt", "tiny", num_voxels=transform.num_voxels)
    shutil.copytree(work / "prep" / "data_transform", ckpt / "data_transform")
    return ckpt, "tiny (random weights, transform fitted on SimConfig.tiny(seed=3))"


@dataclasses.dataclass
class Scan:
    """The simulated scan: ``vectors`` (T, V_raw) as the transform reads it, plus what the folder source gets."""

    vectors: np.ndarray
    volumes: np.ndarray | None  # (X, Y, Z, T) float32 (NIfTI-mask transforms)
    affine: np.ndarray | None
    grayordinates: Any  # the run's whole CIFTI brain-model axis (CIFTI transforms)
    rows: np.ndarray | None  # (T, G) every grayordinate of the run (CIFTI transforms)

    def write_tr(self, folder: Path, t: int) -> None:
        """TR ``t`` as a per-TR file, written in place like a scanner export."""
        import nibabel as nib
        from nibabel import cifti2

        if self.volumes is not None:
            nib.save(nib.Nifti1Image(self.volumes[..., t], self.affine), folder / f"vol_{t:05d}.nii")
            return
        series = cifti2.SeriesAxis(start=0.0, step=2.0, size=1, unit="second")
        header = cifti2.Cifti2Header.from_axes((series, self.grayordinates))
        nib.save(cifti2.Cifti2Image(self.rows[t : t + 1], header), folder / f"vol_{t:05d}.dtseries.nii")


def make_scan(work: Path, transform: FMRITransform, trs: int, seed: int) -> Scan:
    """Simulate ``trs`` TRs on the transform's voxel grid (its NIfTI mask's, or the volume of its CIFTI
    grayordinates) and read them exactly as the transform reads runs."""
    import nibabel as nib

    gray = transform.grayordinates
    if transform.mask is not None:
        fmt, grid = "nifti", transform.mask.array.shape
    elif gray is not None and gray.volume_shape is not None:
        fmt, grid = "cifti", gray.volume_shape
    else:
        raise SystemExit("the checkpoint's transform records no voxel grid (mask or CIFTI volume); use --model tiny")
    cfg = SimConfig.tiny(
        grid=tuple(grid),
        seed=seed,
        train_segments=1,
        test_segments=0,
        segment_trs=trs,
        train_repeats=1,
        extra_trs=0,
        formats=(fmt,),
    )
    simulate(work / "scan", cfg)
    name = "seg1_1.nii.gz" if fmt == "nifti" else "seg1_1_Atlas.dtseries.nii"
    run = work / "scan" / "subject1" / "fmri" / "seg1" / fmt / name
    vectors = transform.load_run(run)  # raises unless the simulated run has the transform's raw voxels
    image = nib.load(str(run))
    if fmt == "nifti":
        return Scan(vectors, np.asarray(image.dataobj, np.float32), np.asarray(image.affine), None, None)
    return Scan(vectors, None, None, image.header.get_axis(1), np.asarray(image.dataobj, np.float32))


def calibrate(ckpt: Path, gen: dict[str, Any], calls: int = 10) -> dict[str, float]:
    """Median / p90 seconds of one clip at the soak's settings (1 torch thread, after 3 warm-up calls)."""
    import torch

    from mindvideo.pipeline import GenerationConfig, MindVideoPipeline

    torch.set_num_threads(1)
    pipe = MindVideoPipeline.from_pretrained(ckpt)
    config = GenerationConfig(**gen)
    window = pipe.transform.negative_fmri[None]
    times = []
    for i in range(3 + calls):
        start = time.perf_counter()
        pipe(window, None, config, progress=False)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return {"median_s": float(np.median(times)), "p90_s": float(np.percentile(times, 90))}


# --------------------------------------------------------------------------------------------------- one source


def rss_mib(pid: int) -> float | None:
    """Resident memory of ``pid`` in MiB (VmRSS), None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


class Sampler(threading.Thread):
    """Samples (seconds since start, TRs produced, RSS MiB) every :data:`SAMPLE_S` until stopped."""

    def __init__(self, pid: int, produced: list[int]):
        super().__init__(daemon=True)
        self.pid, self.produced, self.samples = pid, produced, []
        self._stop_event = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._stop_event.wait(SAMPLE_S):
            rss = rss_mib(self.pid)
            if rss is not None:
                self.samples.append((round(time.monotonic() - start, 2), self.produced[0], round(rss, 2)))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


def start_stream(cmd: list[str], log_path: Path) -> tuple[subprocess.Popen, threading.Event]:
    """Start the CLI; its stderr goes to ``log_path`` and sets the returned event on the ``ready:`` line."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = threading.Event()

    def pump(stream, name: str) -> None:
        with open(log_path.with_suffix(f".{name}.log"), "w") as out:
            for line in stream:
                out.write(line)
                out.flush()
                if line.startswith("ready:"):
                    ready.set()

    for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
        threading.Thread(target=pump, args=(stream, name), daemon=True).start()
    return proc, ready


def produce(kind: str, scan: Scan, cadence: float, target: Any, produced: list[int]) -> list[float]:
    """Play the scanner: TR t at t0 + t·cadence; returns when each TR was written / sent (monotonic)."""
    sent, sock = [], None
    if kind == "tcp":
        deadline = time.monotonic() + 60
        while sock is None:
            try:
                sock = socket.create_connection(("127.0.0.1", target), timeout=60)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    try:
        t0 = time.monotonic() + 0.5
        for t in range(len(scan.vectors)):
            time.sleep(max(0.0, t0 + t * cadence - time.monotonic()))
            if sock is not None:
                sock.sendall(encode_frame(scan.vectors[t]))
            else:
                scan.write_tr(target, t)
            sent.append(time.monotonic())
            produced[0] = t + 1
        if sock is not None:
            sock.sendall(encode_frame(None))
    finally:
        if sock is not None:
            sock.close()
    return sent


def soak_source(kind: str, ckpt: Path, scan: Scan, cadence: float, args: argparse.Namespace, work: Path) -> dict:
    """One source end to end: start the CLI, produce the scan, check and measure."""
    trs = len(scan.vectors)
    out, stats_json = work / f"{kind}.mp4", work / f"{kind}-stats.json"
    if kind == "folder":
        target: Any = work / "export"
        target.mkdir()
        spec = f"folder:{target}"
    else:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            target = probe.getsockname()[1]
        spec = f"tcp:127.0.0.1:{target}"
    gen = ["--frames", args.frames, "--steps", args.steps, "--height", args.size, "--width", args.size]
    cmd = [sys.executable, "-c", CLI, "stream", "--checkpoint", ckpt, "--source", spec, "--sink", f"file:{out}"]
    cmd += ["--max-trs", trs, "--tr", f"{cadence:g}", "--threads", 1, "--stats-json", stats_json, "--idle-timeout", 60]
    cmd += ["--connect-timeout", 120, *gen, "--guidance", args.guidance, "--policy", args.policy]
    cmd = [str(c) for c in [*cmd, "--max-queue", args.max_queue, "--min-steps", 1]]
    proc, ready = start_stream(cmd, work / kind)
    if not ready.wait(300):
        proc.kill()
        raise SystemExit(f"{kind}: the stream never became ready; see {work / kind}.stderr.log")
    produced = [0]
    sampler = Sampler(proc.pid, produced)
    sampler.start()
    started = time.monotonic()
    sent = produce(kind, scan, cadence, target, produced)
    rc = proc.wait(timeout=600)
    sampler.stop()
    wall = time.monotonic() - started
    return measure(kind, rc, stats_json, out, sent, sampler.samples, args, wall, shown_command(cmd[3:], work))


# --------------------------------------------------------------------------------------------------- checks


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": round(float(p50), 4), "p95": round(float(p95), 4), "max": round(float(max(values)), 4)}


def count_frames(path: Path) -> int:
    import av

    if not path.is_file():
        return 0
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def rss_report(samples: list[tuple[float, int, float]], warm_trs: int) -> dict[str, Any]:
    """RSS at start / after warm-up / end / max (MiB), growth after warm-up and its slope per 1,000 TRs."""
    if not samples:
        return {"samples": 0}
    warm = [s for s in samples if s[1] >= warm_trs] or samples[-1:]
    trs, rss = np.array([s[1] for s in warm], float), np.array([s[2] for s in warm])
    slope = float(np.polyfit(trs, rss, 1)[0] * 1000) if len(warm) > 2 and np.ptp(trs) > 0 else 0.0
    return {
        "samples": len(samples),
        "start_mib": samples[0][2],
        "after_warmup_mib": warm[0][2],
        "end_mib": samples[-1][2],
        "max_mib": max(s[2] for s in samples),
        "growth_after_warmup_mib": round(samples[-1][2] - warm[0][2], 2),
        "slope_mib_per_1000_trs": round(slope, 3),
        "series": samples[:: max(1, len(samples) // 60)],  # ≤ ~60 points for plots
    }


def shown_command(args: list[str], work: Path) -> str:
    """The CLI command as recorded: the scratch folder as WORK/, paths inside the checkout relative to its root."""
    root = Path(__file__).resolve().parents[1]
    return " ".join(args).replace(f"{work}/", "WORK/").replace(f"{root}/", "")


def measure(kind, rc, stats_json, out, sent, samples, args, wall, cmd) -> dict[str, Any]:
    """The checks and figures of one source."""
    trs = len(sent)
    report = json.loads(stats_json.read_text()) if stats_json.is_file() else {"summary": {}, "trs": []}
    summary, records = report["summary"], report["trs"]
    window, lag = summary.get("window_size", 2), summary.get("lag", 0)
    clips = trs - lag  # window t needs frames t+lag … t+lag+W-1 (clamped at the end): T - lag clips, as offline
    e2e = [r["done"] - sent[min(r["tr"] + lag + window - 1, trs - 1)] for r in records]
    frames = count_frames(out)
    rss = rss_report(samples, args.warm_trs)
    checks = {
        "cli_exit_0": rc == 0,
        "all_trs_decoded": summary.get("processed") == clips == summary.get("windows"),
        "none_dropped": summary.get("dropped") == 0,
        "no_clean_tr_reported_bad": summary.get("bad") == 0,  # the simulated scan is clean: a bad TR is a false alarm
        "records_are_trs_0_to_n": [r["tr"] for r in records] == list(range(clips)),
        "video_has_every_frame": frames == clips * args.frames,
        "rss_growth_within_bound": rss.get("growth_after_warmup_mib", 1e9) <= args.rss_bound_mib,
    }
    return {
        "source": kind,
        "trs": trs,
        "lag_trs": lag,
        "expected_clips": clips,
        "clips": summary.get("processed"),
        "lost": clips - (summary.get("processed") or 0),
        "dropped": summary.get("dropped"),
        "degraded": summary.get("degraded"),
        "bad_trs": summary.get("bad_trs"),
        "source_events": summary.get("source"),
        "policy_actions": summary.get("policy_actions"),
        "video_frames": frames,
        "latency_decoder_s": _pct([r["latency_s"] for r in records]),
        "latency_end_to_end_s": _pct(e2e),
        "generate_s": _pct([r["generate_s"] for r in records]),
        "rss": rss,
        "wall_s": round(wall, 1),
        "checks": checks,
        "passed": all(checks.values()),
        "command": cmd,
    }


# --------------------------------------------------------------------------------------------------- main


def environment(argv: list[str]) -> dict[str, Any]:
    import torch  # noqa: F401  (its version is recorded)

    record = {"benchmark": "stream_soak", **provenance(argv)}
    record["device"] = f"{cpu_name()}, {os.cpu_count()} logical CPUs (the decoder runs on the CPU; shared machine)"
    return record


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trs", type=int, default=1800, help="TRs per source (1,800 = 1 hour at TR 2 s)")
    parser.add_argument("--sources", nargs="+", choices=["folder", "tcp"], default=["folder", "tcp"])
    parser.add_argument("--model", choices=["auto", "demo", "tiny"], default="auto")
    parser.add_argument("--cadence", type=float, help="seconds between TRs [default: from the measured generation]")
    parser.add_argument("--frames", type=int, default=2, help="frames per clip")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=12.5)
    parser.add_argument("--size", type=int, default=32, help="output height = width (pixels)")
    parser.add_argument("--policy", default="lower-steps", help="behind-schedule policy of the decoder")
    parser.add_argument("--max-queue", type=int, default=4, help="windows allowed to wait")
    parser.add_argument("--warm-trs", type=int, default=100, help="TRs after which RSS must stop growing")
    parser.add_argument("--rss-bound-mib", type=float, default=16.0, help="allowed RSS growth after warm-up")
    parser.add_argument("--work", type=Path, help="keep the work files here [default: a temporary folder]")
    parser.add_argument("--out", type=Path, help="result file [default: benchmarks/results/stream_soak-<host>.json]")
    return parser.parse_args(argv[1:])


def print_result(r: dict[str, Any]) -> None:
    lat, e2e, rss = r["latency_decoder_s"], r["latency_end_to_end_s"], r["rss"]
    print(
        f"{r['source']:>6}: {r['clips']}/{r['expected_clips']} clips from {r['trs']} TRs (lag {r['lag_trs']}), "
        f"lost {r['lost']}, dropped {r['dropped']}, bad {len(r['bad_trs'] or [])}, "
        f"degraded {r['degraded']}, {r['video_frames']} video frames, {r['wall_s']} s"
    )
    print(f"        latency decoder  p50 {lat['p50']} s  p95 {lat['p95']} s  max {lat['max']} s")
    print(f"        latency e2e      p50 {e2e['p50']} s  p95 {e2e['p95']} s  max {e2e['max']} s")
    where = (rss.get(k) for k in ("start_mib", "after_warmup_mib", "end_mib", "max_mib", "slope_mib_per_1000_trs"))
    print("        RSS MiB start {}  after warm-up {}  end {}  max {}  slope {}/1000 TRs".format(*where))
    print(f"        checks: {'PASS' if r['passed'] else 'FAIL'} {r['checks']}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    args = parse_args(argv)
    env = environment(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="stream-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        ckpt, model = model_checkpoint(work, args.model)
        transform = FMRITransform.load(ckpt / "data_transform")
        scan = make_scan(work, transform, args.trs, seed=11)
        gen = {"num_frames": args.frames, "num_inference_steps": args.steps, "guidance_scale": args.guidance}
        gen.update(height=args.size, width=args.size)
        timing = calibrate(ckpt, gen)
        cadence = args.cadence or max(0.1, round(3 * timing["p90_s"], 2))
        print(
            f"model {model}; scan {args.trs} TRs × {transform.n_raw} raw voxels; generation {timing}; "
            f"cadence {cadence} s (clock × {2.0 / cadence:.1f})"
        )
        results = [soak_source(kind, ckpt, scan, cadence, args, work) for kind in args.sources]
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    for result in results:
        print_result(result)
    settings = {"policy": args.policy, "max_queue": args.max_queue, "torch_threads": 1, "scanner_tr_s": 2.0}
    settings.update(cadence_s=cadence, clock_acceleration=round(2.0 / cadence, 2), warm_trs=args.warm_trs)
    record = {**env, "load_average_after": [round(v, 2) for v in os.getloadavg()], "model": model}
    record.update(settings={**gen, **settings, "rss_bound_mib": args.rss_bound_mib}, generation_calibration=timing)
    record.update(results=results, passed=all(r["passed"] for r in results))
    out = args.out or Path(__file__).parent / "results" / f"stream_soak-{platform.node() or 'host'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
