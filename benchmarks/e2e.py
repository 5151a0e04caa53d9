"""End-to-end and per-stage benchmark of fMRI → video, every backend side by side in one run.

CPU mode (any machine): a checkpoint (default: a tiny random one) through
  * ``pytorch``    — the reference-style eager PyTorch pipeline (diffusers ``scheduler.step`` loop),
  * ``torch``      — the PyTorch networks (on the CPU the UNet as a frozen TorchScript trace) driven by the C loop,
  * ``onnxruntime`` — the exported graphs (exported here first) driven by the C sampling loop,
reporting per-stage latency, frames/s, UNet evaluations per clip (2·S for a guided teacher, S for a distilled
student) and the ratio to ``pytorch`` measured in the same process.

GPU mode (``--gpu``, needs CUDA): an SD-1.5-sized random UNet at 256², 60 frames, 25 steps, guided, comparing
  * eager fp32 (reference-style: per-step Python loop, diffusers ``scheduler.step``),
  * eager fp16 + SDPA (same loop),
  * bf16 per-step Python loop with the fused Triton update (``GraphedLoop.run_eager``),
  * bf16 whole-loop CUDA graph (``GraphedLoop`` replay),
with the real-time factor against a 2-s TR and the achieved TFLOP/s and % of the measured bf16 matmul peak; then
the whole ``Runtime`` (encoder → CUDA-graph loop → VAE decode, and the C loop for contrast) on a random SD-1.5-sized
checkpoint in bf16, per stage (``runtime_end_to_end``).

``--decoder tiny`` decodes every end-to-end row with the checkpoint's tiny decoder instead of the VAE decoder (a random
checkpoint gets a random one: timing only); the result file records which decoder ran (``decoder``).

Results go to ``benchmarks/results/e2e-<device>.json`` (``--out``, ``--out-dir``) with the device, commit, command
and date, and a short table is printed. ``mindvideo bench`` runs the same and writes to the current folder.

    python benchmarks/e2e.py                   # CPU, tiny model
    python benchmarks/e2e.py --checkpoint CKPT --frames 6 --steps 10
    python benchmarks/e2e.py --checkpoint CKPT --decoder tiny   # CKPT/tiny_decoder (exported with the rest)
    python benchmarks/e2e.py --gpu             # H100/H200: the real-time target
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mindvideo.benchmarks.provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results"
TR_SECONDS = 2.0


def timed(fn, repeats: int, sync=lambda: None) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after one warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------------------------------------------- CPU


def add_random_tiny_decoder(checkpoint: Path, preset: str) -> None:
    """A random ``tiny_decoder/`` for a random checkpoint (timing only): the default decoder for the SD-1.5 VAE, the
    tests' size (8 channels, one block per level) for the tiny one."""
    from mindvideo.config import read_json
    from mindvideo.models.tiny_decoder import TinyDecoder, TinyDecoderConfig

    vae = read_json(checkpoint / "vae" / "config.json")
    size = {} if preset == "sd15" else {"width": 8, "blocks": 1}
    TinyDecoder(TinyDecoderConfig.for_vae(vae, **size)).save_pretrained(checkpoint / "tiny_decoder")


def cpu_bench(
    checkpoint: Path | None, frames: int, steps: int, repeats: int, threads: int, decoder: str = "vae"
) -> dict:
    from mindvideo.checkpoint import build_random_checkpoint
    from mindvideo.engine.backends import OnnxRuntimeBackend, TorchBackend
    from mindvideo.engine.runtime import Runtime
    from mindvideo.export import Axis, ExportSettings, SpecOptions, export_onnx
    from mindvideo.pipeline import GenerationConfig, MindVideoPipeline

    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="mindvideo-bench-"))
    if checkpoint is None:
        checkpoint = build_random_checkpoint(work / "ckpt", "tiny", init_scale=0.02)
        if decoder == "tiny":
            add_random_tiny_decoder(checkpoint, "tiny")
    pipe = MindVideoPipeline.from_pretrained(checkpoint)
    fmri = np.random.default_rng(0).standard_normal((1, pipe.window_size, pipe.num_voxels)).astype(np.float32)
    cfg = GenerationConfig(num_frames=frames, num_inference_steps=steps, scheduler="dpm", decoder=decoder)
    pipe.check_generation(cfg)  # a checkpoint without tiny_decoder/ is refused before the export
    profile = SpecOptions(frames=Axis(1, frames, max(frames, 16)))  # the clip length is inside the graphs' profile
    export_onnx(checkpoint, work / "exported", ExportSettings(spec=profile))
    runtimes = {
        "torch": Runtime(TorchBackend(checkpoint)),
        "onnxruntime": Runtime(OnnxRuntimeBackend(work / "exported", threads=threads)),
    }
    calls = {"pytorch": lambda: pipe(fmri, None, cfg, progress=False)}
    calls.update({name: (lambda rt=rt: rt(fmri, None, cfg)) for name, rt in runtimes.items()})
    rows: dict[str, dict] = {name: {"seconds": [], "stages": []} for name in calls}
    for call in calls.values():  # warm-up
        call()
    for _ in range(repeats):  # interleaved, so background load hits every backend alike
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            rows[name]["seconds"].append(time.perf_counter() - start)
            if name in runtimes:
                rows[name]["stages"].append(runtimes[name].times)
    for name in runtimes:
        stages = rows[name].pop("stages")
        rows[name]["stages_median"] = {
            stage: statistics.median(getattr(t, stage) for t in stages) for stage in ("encode", "loop", "decode")
        }
    rows["pytorch"].pop("stages")
    rows["pytorch"]["unet_evals_per_clip"] = (2 if cfg.guidance_scale > 1.0 and not pipe.is_student else 1) * steps
    for name, runtime in runtimes.items():
        rows[name]["unet_evals_per_clip"] = runtime.unet_evals(cfg)
    base = statistics.median(rows["pytorch"]["seconds"])
    for row in rows.values():
        row["median_s"] = statistics.median(row["seconds"])
        row["frames_per_s"] = frames / row["median_s"]
        row["speedup_vs_pytorch"] = base / row["median_s"]
        row["real_time_factor"] = row["median_s"] / TR_SECONDS
    return {
        "mode": "cpu",
        "checkpoint": str(checkpoint),
        "frames": frames,
        "steps": steps,
        "threads": threads,
        "batch": 1,
        "guidance": cfg.guidance_scale,
        "scheduler": cfg.scheduler,
        "decoder": decoder,
        "backends": rows,
    }


# --------------------------------------------------------------------------------------------------------- GPU


def unet_flops(unet, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(x, t, cond)
    return counter.get_total_flops()


def matmul_peak(dtype=torch.bfloat16, n: int = 8192) -> float:
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    seconds = statistics.median(timed(lambda: a @ b, 10, torch.cuda.synchronize))
    return 2 * n**3 / seconds


# the reference-style rows: (label, dtype, attention backend forced for the row; None = the registry's choice)
EAGER_ROWS = (("eager_fp32", torch.float32, None), ("eager_fp16_sdpa", torch.float16, "sdpa"))
GPU_ROWS = ("eager_fp32", "eager_fp16_sdpa", "python_loop_bf16", "cuda_graph_bf16")


def eager_row(
    config, dtype: torch.dtype, attention: str | None, latents: torch.Tensor, steps: int, repeats: int, device="cuda"
) -> dict:
    """Seconds per clip of the reference-style loop (per-step Python, diffusers ``scheduler.step``, guided) with a
    fresh random UNet of ``config`` in ``dtype``. ``attention`` forces that kernels-registry backend for the timed
    calls (``None``: the automatic choice, which on CUDA in fp16/bf16 is the Triton kernels)."""
    from mindvideo.checkpoint import SCHEDULER_CONFIG
    from mindvideo.kernels import use_backend
    from mindvideo.models import VideoUNet
    from mindvideo.sampling import guided_sample, make_scheduler

    unet = VideoUNet(config).to(device=device, dtype=dtype).eval()
    cond = torch.randn((2, 77, config.cross_attention_dim), device=device, dtype=dtype)
    scheduler = make_scheduler(SCHEDULER_CONFIG, "dpm")
    latents = latents.to(device)

    def denoise(x, t, c):
        return unet(x.to(dtype), t.expand(x.shape[0]).float(), c)

    def run():
        with torch.inference_mode():
            return guided_sample(denoise, scheduler, latents, cond, 12.5, steps)

    sync = torch.cuda.synchronize if latents.is_cuda else (lambda: None)
    with use_backend(attention):
        seconds = timed(run, repeats, sync)
    return {"seconds": seconds, "attention_backend": attention or "automatic"}


def gpu_bench(frames: int, steps: int, repeats: int, decoder: str = "vae") -> dict:
    from mindvideo.checkpoint import SCHEDULER_CONFIG
    from mindvideo.engine import make_plan
    from mindvideo.engine.cuda_graph import GraphedLoop
    from mindvideo.models import VideoUNet, VideoUNetConfig
    from mindvideo.sampling import initial_latents, make_scheduler

    torch.backends.cuda.matmul.allow_tf32 = False
    sync = torch.cuda.synchronize
    shape, cond_shape = (1, 4, frames, 32, 32), (2, 77, 768)
    latents = initial_latents(shape, 0, 1.0).cuda()
    results: dict = {"mode": "gpu", "frames": frames, "steps": steps, "resolution": 256, "batch": 1, "guided": True}
    results["decoder"] = decoder  # of the end-to-end rows (runtime_end_to_end); the loop rows decode nothing
    peak = matmul_peak()
    results["measured_bf16_matmul_peak_tflops"] = peak / 1e12
    for label, dtype, attention in EAGER_ROWS:
        results[label] = eager_row(VideoUNetConfig.sd15(), dtype, attention, latents, steps, repeats)
        torch.cuda.empty_cache()
    unet = VideoUNet(VideoUNetConfig.sd15()).cuda().to(torch.bfloat16).eval()
    cond = torch.randn(cond_shape, device="cuda", dtype=torch.bfloat16)
    plan = make_plan(make_scheduler(SCHEDULER_CONFIG, "dpm"), steps)
    loop = GraphedLoop(unet, plan, shape, cond_shape, guidance_scale=12.5, dtype=torch.bfloat16)
    results["python_loop_bf16"] = {"seconds": timed(lambda: loop.run_eager(latents, cond), repeats, sync)}
    loop.capture()
    results["cuda_graph_bf16"] = {"seconds": timed(lambda: loop(latents, cond), repeats, sync)}
    x_in = torch.zeros((2, *shape[1:]), device="cuda", dtype=torch.bfloat16)
    flops = unet_flops(unet, x_in, torch.zeros(2, device="cuda"), cond) * steps
    results["unet_flops_per_clip"] = flops
    results["unet_evals_per_clip"] = 2 * steps  # guided: [negative; positive] rows, one batched call per step
    results["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    for key in GPU_ROWS:
        row = results[key]
        row["median_s"] = statistics.median(row["seconds"])
        row["real_time_factor"] = row["median_s"] / TR_SECONDS
        row["tflops"] = flops / row["median_s"] / 1e12
        row["percent_of_bf16_peak"] = 100 * flops / row["median_s"] / peak
        row["speedup_vs_eager_fp32"] = results["eager_fp32"]["median_s"] / row["median_s"]
        row["unet_evals_per_clip"] = results["unet_evals_per_clip"]
    results["note"] = "UNet loop only (encoder and VAE decode not included); random SD-1.5-sized weights."
    try:
        results["runtime_end_to_end"] = runtime_bench(frames, steps, repeats, decoder=decoder)
    except Exception as exc:  # the loop figures above stand on their own; record why this part failed
        results["runtime_end_to_end"] = {"error": f"{type(exc).__name__}: {exc}"}
    return results


def runtime_bench(
    frames: int,
    steps: int,
    repeats: int,
    *,
    preset: str = "sd15",
    device: str = "cuda",
    dtype: str = "bf16",
    decoder: str = "vae",
) -> dict:
    """What ``mindvideo generate --backend torch --device cuda --dtype bf16`` does, end to end with per-stage times:
    encoder → loop → decode (the VAE decoder, or a random tiny decoder with ``decoder="tiny"``), on a random checkpoint
    of ``preset`` size written to a temporary folder. The loop runs as the CUDA graph and as the C loop over the same
    backend (on CPU: the device loop and the C loop)."""
    from mindvideo.checkpoint import build_random_checkpoint
    from mindvideo.engine.backends import TorchBackend
    from mindvideo.engine.runtime import Runtime
    from mindvideo.pipeline import GenerationConfig

    work = Path(tempfile.mkdtemp(prefix="mindvideo-bench-runtime-"))
    try:
        start = time.perf_counter()
        ckpt = build_random_checkpoint(work / "ckpt", preset)
        if decoder == "tiny":
            add_random_tiny_decoder(ckpt, preset)
        built = time.perf_counter() - start
        backend = TorchBackend(ckpt, device=device, dtype=dtype)
        geometry = backend.geometry
        fmri = np.random.default_rng(0).standard_normal((1, geometry.window_size, geometry.num_voxels))
        cfg = GenerationConfig(
            num_frames=frames, num_inference_steps=steps, scheduler="dpm", guidance_scale=12.5, decoder=decoder
        )
        cuda = backend.device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        out: dict = {"preset": preset, "device": device, "dtype": dtype, "frames": frames, "steps": steps}
        out["decoder"] = decoder
        out["checkpoint_build_s"] = built
        for loop in ("graph" if cuda else "device", "c"):
            runtime, stages = Runtime(backend, loop=loop), []

            def call(runtime=runtime, stages=stages):
                runtime(fmri.astype(np.float32), None, cfg)
                stages.append(runtime.times)

            seconds = timed(call, repeats, sync)
            median = statistics.median(seconds)
            kinds = ("encode", "loop", "decode")
            out[f"loop_{loop}"] = {
                "seconds": seconds,
                "median_s": median,
                "stages_median_s": {k: statistics.median(getattr(t, k) for t in stages[1:]) for k in kinds},
                "frames_per_s": frames / median,
                "real_time_factor": median / TR_SECONDS,
                "unet_evals_per_clip": runtime.unet_evals(cfg),
            }
        if cuda:
            out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="the GPU benchmark (SD-1.5 size, 60 frames)")
    parser.add_argument("--checkpoint", type=Path, help="CPU mode: checkpoint folder [default: tiny random]")
    parser.add_argument("--frames", type=int, help="frames per clip [default: 6 CPU, 60 GPU]")
    parser.add_argument("--steps", type=int, help="denoising steps [default: 10 CPU, 25 GPU]")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--decoder",
        choices=("vae", "tiny"),
        default="vae",
        help="decoder of the end-to-end rows: the VAE's, or CKPT/tiny_decoder (a random one for a random checkpoint)",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU mode: intra-op threads for torch and onnxruntime")
    parser.add_argument("--out", type=Path, help="result JSON [default: OUT_DIR/e2e-<device>.json]")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="folder of the default result JSON")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, command: list[str]) -> dict:
    """The benchmark ``args`` ask for, with its provenance (``command`` is the command line recorded)."""
    where = provenance(command)  # before the run
    if args.gpu:
        if not torch.cuda.is_available():
            from mindvideo.errors import MindVideoError

            raise MindVideoError("expected a CUDA device for --gpu", "none", "run the CPU mode without --gpu")
        result = gpu_bench(args.frames or 60, args.steps or 25, args.repeats, args.decoder)
    else:
        frames, steps = args.frames or 6, args.steps or 10
        result = cpu_bench(args.checkpoint, frames, steps, args.repeats, args.threads, args.decoder)
    result["provenance"] = where
    return result


def result_name(gpu: bool) -> str:
    """``e2e-cpu.json`` or ``e2e-gpu-<device>.json``."""
    return f"e2e-gpu-{torch.cuda.get_device_name().replace(' ', '_')}.json" if gpu else "e2e-cpu.json"


def write_result(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def summary(result: dict) -> list[tuple[str, float, int, float, float, str]]:
    """One row per timed backend: (name, median s / clip, UNet evals / clip, frames/s, real-time factor, speed-up
    over the reference-style eager run, "–" for the GPU's whole-runtime rows that are not comparable to it)."""
    frames = result["frames"]
    if result["mode"] == "cpu":
        timed_rows = dict(result["backends"])
        baseline = timed_rows["pytorch"]["median_s"]
    else:
        timed_rows = {key: result[key] for key in GPU_ROWS}
        baseline = timed_rows["eager_fp32"]["median_s"]
        for key, row in (result.get("runtime_end_to_end") or {}).items():
            if key.startswith("loop_"):
                timed_rows[f"runtime end-to-end, {key[5:]} loop"] = {**row, "end_to_end": True}
    out = []
    for name, row in timed_rows.items():
        median = row["median_s"]
        versus = "–" if row.get("end_to_end") else f"{baseline / median:.2f}×"
        out.append((name, median, row["unet_evals_per_clip"], frames / median, median / TR_SECONDS, versus))
    return out


def format_table(result: dict) -> str:
    """:func:`summary` as an aligned plain-text table, under a line naming the run."""
    head = ("backend", "s / clip", "UNet evals", "frames/s", "RTF (2-s TR)", "vs eager")
    body = [(n, f"{s:.3f}", str(e), f"{f:.1f}", f"{r:.3f}", v) for n, s, e, f, r, v in summary(result)]
    widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]
    device = result["provenance"]["device"]
    decoder = result.get("decoder", "vae")  # files from before the option: the VAE decoder
    run = f"{result['frames']} frames × {result['steps']} steps on {device}, {decoder} decoder"
    lines = [f"{result['mode'].upper()}: {run}"]
    for row in (head, *body):
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args, sys.argv if argv is None else ["benchmarks/e2e.py", *argv])
    out = args.out or args.out_dir / result_name(args.gpu)
    write_result(result, out)
    print(format_table(result))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    from mindvideo.errors import MindVideoError

    try:
        main()
    except MindVideoError as exc:
        sys.exit(f"error: {exc}")
