"""Ray batch reconstruction on the built-in demo: 2 local workers against 1 process, same outputs, wall time.

The demo's held-out test windows (``test_set.npz``, written as a prepared split) are reconstructed by the teacher
with ``mindvideo generate --data`` three ways, each a whole command in its own process, timed from start to exit
(imports, model loading and, for Ray, starting the local cluster included):

* one process on one torch thread (each worker's thread count: the bit-for-bit reference);
* one process on two torch threads (the fastest single process on two cores);
* ``--ray --ray-workers 2`` (a local cluster on 127.0.0.1, two 1-CPU workers, one shard per batch).

Writes ``benchmarks/results/ray-demo.json``: the settings, whole-process and generation seconds of each run, the
ratios, whether the Ray output equals each single-process output bit for bit (and the largest difference), the load
average before and after (the machine may be shared) and provenance.

    python benchmarks/ray_generate.py
    python benchmarks/ray_generate.py --steps 25 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mindvideo.benchmarks.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def prepared_split(assets: Path, folder: Path) -> Path:
    """The demo's test windows and their stimulus as a prepared dataset (``test/fmri.npy``, ``test/video.npy``)."""
    test = np.load(assets / "test_set.npz")
    (folder / "test").mkdir(parents=True)
    np.save(folder / "test" / "fmri.npy", test["fmri"])
    np.save(folder / "test" / "video.npy", test["video"])
    return folder


def timed_generate(command: list[str], out: Path, threads: int | None) -> dict:
    """One ``mindvideo generate`` in a fresh process: its wall seconds, the sidecar's generation seconds."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mindvideo", *command], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    sidecar = json.loads(Path(f"{out}.json").read_text())
    return {"wall_seconds": round(wall, 2), "generation_seconds": sidecar["seconds"], "ray": sidecar.get("ray")}


def run(assets: Path, steps: int, batch_size: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp:
        tmp = Path(tmp)
        data = prepared_split(assets, tmp / "prep")
        base = ["generate", "--checkpoint", str(assets / "checkpoint"), "--data", str(data), "--steps", str(steps),
                "--batch-size", str(batch_size), "--seed", str(seed)]  # fmt: skip
        outs = {"one_process_1_thread": tmp / "one1.npy", "one_process_2_threads": tmp / "one2.npy",
                "ray_2_workers": tmp / "ray.npy"}  # fmt: skip
        extra = {"ray_2_workers": ["--ray", "--ray-workers", "2"]}
        threads = {"one_process_1_thread": 1, "one_process_2_threads": 2, "ray_2_workers": None}
        runs = {
            name: ([*base, "--out", str(out), *extra.get(name, [])], out, threads[name]) for name, out in outs.items()
        }
        times = {name: timed_generate(cmd, out, threads) for name, (cmd, out, threads) in runs.items()}
        videos = {name: np.load(out) for name, (_, out, _) in runs.items()}
    ray_video = videos["ray_2_workers"]
    compare = {
        name: {"bit_identical": bool(np.array_equal(ray_video, videos[name])),
               "max_abs_difference": float(np.abs(ray_video - videos[name]).max())}
        for name in ("one_process_1_thread", "one_process_2_threads")
    }  # fmt: skip
    ray_wall = times["ray_2_workers"]["wall_seconds"]
    return {
        "model": "demo teacher (mindvideo/assets/demo/checkpoint)",
        "windows": int(ray_video.shape[0]),
        "settings": {
            "steps": steps,
            "batch_size": batch_size,
            "seed": seed,
            "frames": int(ray_video.shape[2]),
            "size": list(ray_video.shape[3:]),
            "output": "npy float32",
        },
        "runs": times,
        "ray_equals": compare,
        "wall_ratio_one_process_over_ray": {
            name: round(times[name]["wall_seconds"] / ray_wall, 3)
            for name in ("one_process_1_thread", "one_process_2_threads")
        },
    }


def main(argv: list[str] | None = None) -> None:
    from mindvideo.demo import default_assets

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=Path, help="demo assets [default: the package's]")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps of the teacher")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per call = per shard")
    parser.add_argument("--seed", type=int, default=3407)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    command = sys.argv if argv is None else ["benchmarks/ray_generate.py", *argv]
    where = provenance(command)
    measured = run(args.assets or default_assets(), args.steps, args.batch_size, args.seed)
    result = {"benchmark": "ray-generate", **measured}
    where["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    result["provenance"] = where
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / "ray-demo.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("runs", "ray_equals", "wall_ratio_one_process_over_ray")}, indent=2))


if __name__ == "__main__":
    main()
