"""Filled windows: how full the windows are, what they buy in training, what they cost to plan.

    python benchmarks/window_bench.py [--parts fill,train,plan] [--steps 3] [--batch-windows 2]
        [--plan-samples 1e7 [1e8]] [--json]

- fill: speech seconds over window seconds of an epoch's plan (mean over 3
  epochs), 30 s windows, on the bundled train set (shards/train) and on
  synthetic mixes (uniform 1-7 s, 1-15 s, and scale_bench's log-normal around
  6 s), against one clip per window (today's layout);
- train: a whisper-tiny (``streamtrain init-model``, random weights, offline) on
  the CPU, fed by the real trainer (``Trainer.step``: featurizer, targets, loss,
  backward, optimizer) on the bundled train set with the same number of 30 s
  windows per batch, filled or one clip per window: audio seconds (of speech)
  per wall second, after one untimed step;
- plan: ``len(loader)`` in a fresh process (opening excluded) on a synthetic
  format-2 index (scale_bench's durations, 1,000 samples a shard),
  batch_seconds=200 at rank 0 of 64, with and without ``fill_windows=30``:
  wall seconds and the process's CPU seconds (less sensitive to a shared machine).

``--json`` prints one JSON object with every figure.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

WINDOW = 30.0
EPOCHS = 3
MIX_SAMPLES = 200_000


def plan_fill(counts: np.ndarray, durations: np.ndarray, window: float = WINDOW) -> float:
    """Mean fill over EPOCHS epochs' plans."""
    from streamtrain.loader.plan import BatchSettings, ShardTable, plan_epoch
    from streamtrain.loader.windows import fill_ratio

    table = ShardTable(np.asarray(counts, dtype=np.int64), np.asarray(durations, dtype=np.float32))
    planned = durations[durations <= window]
    fills = [fill_ratio(planned, int(plan_epoch(table, BatchSettings(batch_size=8, fill_windows=window), None, 0,
                                                epoch).batches.first_in_row.sum()), window)
             for epoch in range(EPOCHS)]
    return float(np.mean(fills))


def fill_figures() -> dict:
    from scale_bench import synthetic_durations

    index = json.loads((ROOT / "shards/train/index.json").read_text())
    bundled = np.fromfile(ROOT / "shards/train/index.durations.f32", dtype=np.float32)
    rng = np.random.default_rng(0)
    mixes = {
        "bundled train set": (np.asarray(index["shards"]["samples"]), bundled),
        "uniform 1-7 s": (np.full(MIX_SAMPLES // 1000, 1000), rng.uniform(1, 7, MIX_SAMPLES).astype(np.float32)),
        "uniform 1-15 s": (np.full(MIX_SAMPLES // 1000, 1000), rng.uniform(1, 15, MIX_SAMPLES).astype(np.float32)),
        "log-normal ~6 s (0.5-30 s)": (np.full(MIX_SAMPLES // 1000, 1000), synthetic_durations(MIX_SAMPLES)),
    }
    return {name: {"mean_seconds": float(d.mean()), "one_clip_per_window": float(d.mean() / WINDOW),
                   "filled": plan_fill(c, d)} for name, (c, d) in mixes.items()}


def train_figures(steps: int, batch_windows: int) -> dict:
    import torch

    from streamtrain.train.config import load_recipe
    from streamtrain.train.init_model import init_model
    from streamtrain.train.loop import Trainer

    torch.set_num_threads(os.cpu_count() or 1)
    figures = {}
    with tempfile.TemporaryDirectory(prefix="window-bench-") as tmp:
        init_model("whisper-tiny", f"{tmp}/whisper-tiny", 0)
        for name, filled in (("one clip per window", False), ("filled windows", True)):
            recipe = load_recipe("whisper-finetune", [
                f"model.pretrained={tmp}/whisper-tiny", "model.tokenizer=null", "model.gradient_checkpointing=false",
                f"data.train={ROOT / 'shards/train'}", "data.validation=null", f"data.batch_size={batch_windows}",
                "data.num_workers=1", f"data.fill_windows={str(filled).lower()}", "train.cpu=true",
                "train.mixed_precision='no'", "train.micro_batches=1", f"train.output_dir={tmp}/run-{filled}",
                "train.progress=false", "optim.warmup_steps=0"])
            trainer = Trainer(recipe)
            batches = iter(trainer.loader)
            trainer.step([next(batches)])  # untimed: first-call costs
            audio = utterances = rows = 0.0
            started = time.perf_counter()
            for _ in range(steps):
                batch = next(batches)
                trainer.step([batch])
                audio += float(batch.seconds.sum())
                utterances += batch.size
                rows += batch.audio.shape[0]
            elapsed = time.perf_counter() - started
            batches.close()
            figures[name] = {"audio_seconds_per_s": audio / elapsed, "step_seconds": elapsed / steps,
                             "utterances_per_window": utterances / rows, "windows_per_step": rows / steps}
    figures["speed-up"] = (figures["filled windows"]["audio_seconds_per_s"]
                           / figures["one clip per window"]["audio_seconds_per_s"])
    return figures


SETTINGS = {"batch_seconds=200, 64 ranks": {}, "batch_seconds=200, 64 ranks, fill_windows=30": {"fill_windows": 30.0}}


def measure_plan(root: str, setting: str) -> dict:
    """In this (fresh) process: open, then plan one setting."""
    from streamtrain.loader import StreamLoader

    started = time.perf_counter()
    loader = StreamLoader(root, batch_seconds=200.0, num_workers=8, rank=0, world_size=64, seed=0,
                          **SETTINGS[setting])
    opened, cpu = time.perf_counter(), time.process_time()
    batches = len(loader)
    return {"open_s": opened - started, "plan_s": time.perf_counter() - opened,
            "plan_cpu_s": time.process_time() - cpu, "batches": batches}


def plan_figures(sizes: list[float]) -> dict:
    from scale_bench import build

    figures = {}
    for size in sizes:
        samples = int(size)
        with tempfile.TemporaryDirectory(prefix="window-bench-plan-") as tmp:
            build(Path(tmp), samples, 1000, 2)
            for setting in SETTINGS:
                figures[f"{samples:.0e} samples, {setting}"] = fresh("--measure-plan", tmp, setting)
    return figures


def fresh(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def tables(figures: dict) -> str:
    lines = []
    if "fill" in figures:
        lines += ["| data | mean clip | one clip per window | filled 30 s windows | ratio |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {f['mean_seconds']:.2f} s | {f['one_clip_per_window']:.3f} | {f['filled']:.3f} | "
                  f"{f['filled'] / f['one_clip_per_window']:.1f}x |" for name, f in figures["fill"].items()]
        lines.append("")
    if "train" in figures:
        train = figures["train"]
        lines += ["| whisper-tiny, CPU | audio s / s | s / step | windows / step | utterances / window |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {f['audio_seconds_per_s']:.2f} | {f['step_seconds']:.1f} | {f['windows_per_step']:.0f} "
                  f"| {f['utterances_per_window']:.1f} |" for name, f in train.items() if isinstance(f, dict)]
        lines += [f"| filled / one clip | {train['speed-up']:.1f}x | | | |", ""]
    if "plan" in figures:
        lines += ["| planning (rank 0 of 64, fresh process) | open s | plan s | plan CPU s | batches |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {f['open_s']:.2f} | {f['plan_s']:.2f} | {f['plan_cpu_s']:.2f} | {f['batches']:,} |"
                  for name, f in figures["plan"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="fill,train,plan")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per layout")
    parser.add_argument("--batch-windows", type=int, default=2, help="30 s windows per training batch")
    parser.add_argument("--plan-samples", type=float, nargs="+", default=[1e7])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--measure-plan", nargs=2, metavar=("ROOT", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_plan:
        print(json.dumps(measure_plan(*args.measure_plan)))
        return
    parts = args.parts.split(",")
    figures = {"uptime": os.getloadavg()}
    if "fill" in parts:
        figures["fill"] = fill_figures()
    if "train" in parts:
        figures["train"] = train_figures(args.steps, args.batch_windows)
    if "plan" in parts:
        figures["plan"] = plan_figures(args.plan_samples)
    print(json.dumps(figures) if args.json else tables(figures))


if __name__ == "__main__":
    main()
