"""Packs against one job per run: K MNIST-1D CNN runs trained four ways, timed in one go.

* ``separate processes``: K jobs of ``python -m workflow train``, two at a time with
  one thread each, as the pipeline ran them before packs (the baseline);
* ``one process, in turn``: one process that trains the K runs one after another
  (``train_run`` K times), with every thread;
* ``pack, sequential`` and ``pack, stacked``: one ``python -m workflow train-pack`` job
  of the K runs, stepped in turn or stacked with ``torch.func.vmap``, with every thread.

Every way is a fresh process (or processes) from the command line, so start-up
(importing torch, loading the data) is counted as a job pays it. The table gives the
wall time, the time per run and the speed-up over separate processes.

    python benchmarks/bench_pack.py [--ks 1,4,16,64] [--epochs 3] [--device auto] [--jobs 2]
        [--ways separate,turn,sequential,stacked] [--data JSON] [--model JSON] [--batch-size 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = {"name": "mnist1d", "args": {}, "train_size": None}  # 4000 train examples
MODEL = {"name": "cnn1d", "channels": 32}


def spec(seed: int, epochs: int, data: dict, model: dict, batch_size: int) -> dict:
    """A pretraining run of the default study's settings, for ``epochs`` epochs."""
    return {"run": f"pretrain/bench/s{seed}", "stage": "pretrain", "seed": seed, "data": data, "model": model,
            "train": {"epochs": epochs, "batch_size": batch_size, "optimizer": "adam", "lr": 0.01, "momentum": 0.9,
                      "weight_decay": 0.0, "schedule": "cosine"}, "parent": None}


def python(*args: str, threads: int, device: str) -> list[str]:
    return [sys.executable, *args, "--device", device, "--threads", str(threads)]


def run(commands: list[list[str]], jobs: int) -> float:
    """Wall time of running ``commands``, ``jobs`` at a time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def one(cmd: list[str]) -> None:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{proc.stderr[-3000:]}")

    start = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, commands))
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", default="1,4,16,64", help="pack sizes, comma-separated")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=2, help="separate processes at once (the baseline)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of a one-process way")
    p.add_argument("--ways", default="separate,turn,sequential,stacked")
    p.add_argument("--data", default=json.dumps(DATA), help="JSON: the dataset (default: MNIST-1D)")
    p.add_argument("--model", default=json.dumps(MODEL), help="JSON: the model (default: the default study's CNN)")
    p.add_argument("--batch-size", type=int, default=100)
    args = p.parse_args()
    ways = args.ways.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data.npz"
        subprocess.run([sys.executable, "-m", "workflow", "data", "--spec", args.data, "--out", str(data)],
                       check=True, cwd=ROOT)
        print(f"device {args.device}, {args.epochs} epochs of {args.data} per run, model {args.model}, "
              f"baseline: {args.jobs} processes at once with 1 thread; one-process ways: {args.threads} threads")
        print(f"{'K':>4}  {'way':<24}{'wall s':>9}{'s / run':>9}{'speed-up':>10}")
        for k in map(int, args.ks.split(",")):
            runs = [{"spec": spec(seed, args.epochs, json.loads(args.data), json.loads(args.model), args.batch_size), "out": str(tmp / f"k{k}" / f"s{seed}"), "inputs": {}}
                    for seed in range(k)]
            times: dict[str, float] = {}
            if "separate" in ways:
                times["separate processes"] = run([
                    python("-m", "workflow", "train", "--spec", json.dumps(r["spec"]), "--data", str(data),
                           "--out", r["out"] + "-separate", "--no-progress", threads=1, device=args.device)
                    for r in runs
                ], args.jobs)
            if "turn" in ways:
                script = tmp / f"turn{k}.py"
                script.write_text(
                    "import json, sys\nfrom workflow.jobs import train_run\n"
                    f"for r in json.loads({json.dumps(json.dumps(runs))}):\n"
                    f"    train_run(r['spec'], r['out'] + '-turn', data_path={str(data)!r}, progress=False,"
                    " device=sys.argv[sys.argv.index('--device') + 1],"
                    " threads=int(sys.argv[sys.argv.index('--threads') + 1]))\n"
                )
                times["one process, in turn"] = run([python(str(script), threads=args.threads, device=args.device)], 1)
            for stack in ("sequential", "stacked"):
                if stack not in ways:
                    continue
                pack = tmp / f"pack{k}-{stack}.json"
                pack.write_text(json.dumps({"pack": f"bench/k{k}", "stack": stack, "data": str(data), "runs": [
                    {**r, "out": r["out"] + f"-{stack}"} for r in runs]}))
                times[f"pack, {stack}"] = run([python("-m", "workflow", "train-pack", "--pack", str(pack),
                                                      "--no-progress", threads=args.threads, device=args.device)], 1)
            base = times.get("separate processes")
            for way, wall in times.items():
                ratio = f"{base / wall:>10.2f}" if base else f"{'':>10}"
                print(f"{k:>4}  {way:<24}{wall:>9.2f}{wall / k:>9.3f}{ratio}", flush=True)


if __name__ == "__main__":
    main()
