"""streamtrain against its peers on one corpus: throughput, storage, start-up, resume, exactly-once, memory.

    python benchmarks/peers/run.py [--samples 2000] [--rounds 3] [--peers streamtrain,mosaic,...]

1. Builds one corpus with streamtrain's writer (espeak-ng speech, FLAC, 16 kHz).
2. Creates (or reuses) one venv per peer library under ~/.cache/streamtrain-bench/venvs.
3. Converts the corpus with each peer's own writer (``peer_*.py convert``).
4. In rounds, runs each peer's measurement phases (``protocol.py``) as subprocesses in
   that peer's venv, sampling the memory of each subprocess and its workers.
5. Prints peer ÷ streamtrain ratios and the absolute values, writes docs/peers.json
   and docs/peers.png.

The protocol (what is held equal) is in protocol.py; what each library does is in
its own peer_*.py; README.md explains the choices.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))  # tests/support: the corpus makers

import protocol  # noqa: E402
import venvs  # noqa: E402


@dataclass(frozen=True)
class Peer:
    name: str
    module: str  # peer_*.py in this folder
    venv: str | None  # None: the project's own venv (the python running this script)
    format: str  # converted data is shared by peers of one format
    resume: str  # the mechanism, in words, for the table


PEERS = [
    Peer("streamtrain", "peer_streamtrain.py", None, "streamtrain", "StreamLoader.state_dict"),
    Peer("webdataset", "peer_webdataset.py", "webdataset", "webdataset",
         "none: replay, skipping delivered samples undecoded"),
    Peer("mosaic", "peer_mosaic.py", "mosaic", "mds", "StreamingDataLoader.state_dict"),
    Peer("lhotse", "peer_lhotse.py", "lhotse", "shar", "DynamicCutSampler.state_dict"),
    Peer("hf-map", "peer_hf.py", "hf", "arrow", "StatefulDataLoader.state_dict (map-style Dataset)"),
    Peer("hf-iterable", "peer_hf.py", "hf", "arrow", "StatefulDataLoader.state_dict (IterableDataset)"),
]
FRACTIONS = [str(f) for f in protocol.RESUME_AT]


# -- subprocesses and their memory ---------------------------------------------------


class TreeMemory(threading.Thread):
    """Peak memory of a process and all its descendants (DataLoader workers), summed.

    ``anon``: proportional set size of anonymous and shared-memory pages, i.e. what the
    processes allocated, each shared page counted once in total; file pages (shared
    libraries, memory-mapped data files, the page cache) are left out. ``pss`` and
    ``rss`` (which counts shared pages once per process) are kept for reference.
    """

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = {"anon": 0, "pss": 0, "rss": 0}  # kB
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                root = psutil.Process(self.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            total = {"anon": 0, "pss": 0, "rss": 0}
            for process in tree:
                fields = _smaps_rollup(process.pid)
                total["anon"] += fields.get("Pss_Anon", 0) + fields.get("Pss_Shmem", 0)
                total["pss"] += fields.get("Pss", 0)
                total["rss"] += fields.get("Rss", 0)
            for name, value in total.items():
                self.peak[name] = max(self.peak[name], value)
            self.stop.wait(self.interval)


def _smaps_rollup(pid: int) -> dict[str, int]:
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    except OSError:  # the process ended between listing and reading
        return {}
    return {name: int(value.split()[0]) for name, _, value in (line.partition(":") for line in lines)}


class PhaseError(RuntimeError):
    pass


def run_phase(python: Path, peer: Peer, phase: str, args: list[str], logdir: Path, timeout: float) -> tuple[dict, dict]:
    """Run one protocol phase; returns its JSON result and the peak memory (MB) of its process tree."""
    out = logdir / f"{peer.name}-{phase}-{time.monotonic_ns()}.json"
    log = out.with_suffix(".log")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
           "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    command = [str(python), str(HERE / peer.module), phase, "--peer", peer.name, "--out", str(out), *args]
    load = os.getloadavg()[0]  # other work on the machine skews wall-clock numbers: keep a trace
    with open(log, "w") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env, cwd=HERE)
        memory = TreeMemory(process.pid)
        memory.start()
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(process.pid)
            code = "timeout"
        memory.stop.set()
        memory.join()
    if code != 0 or not out.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise PhaseError(f"{peer.name} {phase} exited with {code}:\n{tail}")
    result = json.loads(out.read_text())
    return result, {**{name: kb / 1024 for name, kb in memory.peak.items()},
                    "baseline": result.get("baseline_kb", 0) / 1024, "load": load}


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        for process in [*root.children(recursive=True), root]:
            process.kill()
    except psutil.Error:
        pass


# -- the run -------------------------------------------------------------------------


def build_corpus(root: Path, samples: int, per_shard: int) -> None:
    from tests.support.datasets import write_dataset

    shards = [per_shard] * (samples // per_shard) + ([samples % per_shard] if samples % per_shard else [])
    write_dataset(root, shards, min_seconds=1.0, max_seconds=4.0)


def measure(peers: list[Peer], pythons: dict, corpus: Path, work: Path, args) -> dict:
    expected = [key for key, _, _ in protocol.source_samples(corpus)]
    results = {p.name: {"peer": p.name, "resume_how": p.resume, "error": None, "epochs": [], "memory": [],
                        "resume": {f: [] for f in FRACTIONS}} for p in peers}
    data = convert_all(peers, pythons, corpus, work, args, results)
    for round_ in range(args.rounds):
        print(f"  round {round_ + 1}/{args.rounds}")
        for peer in peers:
            result = results[peer.name]
            if peer.format not in data or result["error"]:
                continue
            try:
                first = measure_round(peer, pythons[peer.name], data[peer.format], expected, round_, work, args, result)
            except PhaseError as error:
                result["error"] = str(error)
                print(f"  {peer.name} failed:\n{error}")
            else:
                r = result["resume"]
                print(f"    {peer.name:12} {first['samples_per_s']:7.0f} samples/s, "
                      f"first batch {first['first_batch_s']:.2f}s, "
                      + ", ".join(f"resume {float(f):.0%}: {_fmt_s(r[f][-1]['first_batch_s'])} "
                                  f"({r[f][-1]['duplicates']} dup, {r[f][-1]['missing']} missing)" for f in FRACTIONS))
    return {name: summarize(result) for name, result in results.items()}


def convert_all(peers: list[Peer], pythons: dict, corpus: Path, work: Path, args, results: dict) -> dict[str, Path]:
    """Convert the corpus once per format, with the first peer of that format's own writer."""
    data: dict[str, Path] = {}
    for peer in peers:
        result = results[peer.name]
        if peer.format in data:
            result.update(storage_bytes=results[_first_of(peers, peer.format)]["storage_bytes"], convert_s=None)
            continue
        target = work / "data" / peer.format
        try:
            converted, _ = run_phase(pythons[peer.name], peer, "convert",
                                     ["--source", str(corpus), "--data", str(target), "--workdir", str(work / "logs")],
                                     work / "logs", args.timeout)
        except PhaseError as error:
            result["error"] = str(error)
            print(f"  {peer.name}: conversion failed\n{error}")
            continue
        data[peer.format] = target
        result.update(storage_bytes=protocol.directory_bytes(target), convert_s=converted["convert_s"])
        print(f"  converted to {peer.format}: {result['storage_bytes'] / 1e6:.1f} MB in {converted['convert_s']:.1f}s")
    return data


def measure_round(peer: Peer, python, data: Path, expected: list[str], round_: int, work: Path, args,
                  result: dict) -> dict:
    """One round for one peer: the epoch process, then one resume process per fraction; the first epoch's figures."""
    states = work / "states" / peer.name / f"round-{round_}"
    common = ["--data", str(data), "--workdir", str(states)]
    epoch, memory = run_phase(python, peer, "epoch", [*common, "--total", str(len(expected)), "--epochs", str(args.epochs)],
                              work / "logs", args.timeout)
    result["versions"] = epoch.pop("versions")
    result["memory"].append(memory)
    first = epoch["epochs"][0]
    first_keys = first["keys"]
    result.setdefault("epoch_checks", []).append(once(first_keys, expected))
    for n, run in enumerate(epoch["epochs"]):
        run.pop("keys", None)
        result["epochs"].append({**run, "round": round_, "in_process": n})
    for fraction in FRACTIONS:
        if fraction not in first["snapshots"]:
            raise PhaseError(f"{peer.name} never delivered {float(fraction):.0%} of the corpus "
                             f"({first['samples']} of {len(expected)} samples)")
        resumed, memory = run_phase(python, peer, "resume", [*common, "--at", fraction], work / "logs", args.timeout)
        delivered = first["snapshots"][fraction]["delivered"]
        result["memory"].append(memory)
        result["resume"][fraction].append({
            "first_batch_s": resumed["first_batch_s"],
            "first_batch_cpu_s": resumed["first_batch_cpu_s"],
            "delivered_before": delivered,
            "delivered_after": len(resumed["keys"]),
            "state_bytes": first["snapshots"][fraction]["state_bytes"],
            **once(first_keys[:delivered] + resumed["keys"], expected),
        })
    return first


def _first_of(peers: list[Peer], format: str) -> str:
    return next(p.name for p in peers if p.format == format)


def once(seen: list[str], expected: list[str]) -> dict:
    """Duplicates and missing keys of what the training loop saw against the corpus."""
    unique = set(seen)
    return {"duplicates": len(seen) - len(unique), "missing": len(set(expected) - unique),
            "unknown": len(unique - set(expected))}


def summarize(result: dict) -> dict:
    epochs = result["epochs"]
    if epochs:
        fresh = [e for e in epochs if e["in_process"] == 0]  # each phase process's first loader
        firsts = [e["first_batch_s"] for e in fresh]
        result.update(
            samples_per_s=statistics.median(e["samples_per_s"] for e in epochs),
            audio_s_per_s=statistics.median(e["audio_s_per_s"] for e in epochs),
            samples_per_s_range=[min(e["samples_per_s"] for e in epochs), max(e["samples_per_s"] for e in epochs)],
            cpu_ms_per_sample=statistics.median(e["cpu_ms_per_sample"] for e in epochs),
            first_batch_s=statistics.median(firsts),
            first_batch_cpu_ms=1000 * statistics.median(e["first_batch_cpu_s"] for e in fresh),
            padding_fraction=statistics.median(e["padding_fraction"] for e in epochs),
            samples_per_epoch=epochs[0]["samples"],
        )
    for fraction, runs in result["resume"].items():
        times = [r["first_batch_s"] for r in runs]
        result[f"resume_{fraction}_s"] = statistics.median(times) if runs and None not in times else None
        result[f"resume_{fraction}_cpu_ms"] = 1000 * statistics.median(r["first_batch_cpu_s"] for r in runs) \
            if runs and None not in times else None
        result[f"resume_{fraction}_no_batch"] = any(t is None for t in times)
        result[f"resume_{fraction}_duplicates"] = max((r["duplicates"] for r in runs), default=None)
        result[f"resume_{fraction}_missing"] = max((r["missing"] for r in runs), default=None)
    if result["memory"]:
        result["peak_mb"] = max(m["anon"] for m in result["memory"])
        result["peak_pss_mb"] = max(m["pss"] for m in result["memory"])
        result["peak_rss_mb"] = max(m["rss"] for m in result["memory"])
        # what loading adds to the process after its imports (workers share the imported pages)
        result["loading_mb"] = max(m["anon"] - m["baseline"] for m in result["memory"])
        result["baseline_mb"] = statistics.median(m["baseline"] for m in result["memory"])
        result["load_max"] = max(m["load"] for m in result["memory"])
    checks = result.get("epoch_checks", [])
    result["epoch_duplicates"] = max((c["duplicates"] for c in checks), default=None)
    result["epoch_missing"] = max((c["missing"] for c in checks), default=None)
    return result


# -- report --------------------------------------------------------------------------

COLUMNS = [  # key, header, unit scale, format, higher is better
    ("samples_per_s", "samples/s", 1, "{:.0f}", True),
    ("audio_s_per_s", "audio s/s", 1, "{:.0f}", True),
    ("cpu_ms_per_sample", "CPU ms/sample", 1, "{:.2f}", False),
    ("storage_bytes", "storage MB", 1e-6, "{:.1f}", False),
    ("first_batch_s", "1st batch s", 1, "{:.2f}", False),
    ("resume_0.5_s", "resume 50% s", 1, "{:.2f}", False),
    ("resume_0.95_s", "resume 95% s", 1, "{:.2f}", False),
    # CPU (process + workers) to the first batch, fresh and resumed at 50 %: what a busy machine barely moves
    ("first_batch_cpu_ms", "1st CPU ms", 1, "{:.0f}", False),
    ("resume_0.5_cpu_ms", "res50% CPU ms", 1, "{:.0f}", False),
    ("peak_mb", "peak MB", 1, "{:.0f}", False),
    ("loading_mb", "loading MB", 1, "{:.0f}", False),
]


def exactly_once(r: dict) -> str:
    if r.get("error"):
        return "failed (see failures below)"
    parts = []
    for fraction in FRACTIONS:
        dup, missing = r[f"resume_{fraction}_duplicates"], r[f"resume_{fraction}_missing"]
        if dup is None:
            continue
        if dup or missing:
            parts.append(f"{float(fraction):.0%}: " + ", ".join(
                text for text in (f"{dup} dup" if dup else "", f"{missing} missing" if missing else "") if text))
    if r["epoch_duplicates"] or r["epoch_missing"]:
        parts.insert(0, f"uninterrupted epoch: {r['epoch_duplicates']} dup, {r['epoch_missing']} missing")
    return "yes" if not parts else "NO (" + "; ".join(parts) + ")"


def _fmt_s(value) -> str:
    return "no batch" if value is None else f"{value:.2f}s"


def _cell(r: dict, key: str, scale: float, fmt: str) -> str:
    value = r.get(key)
    if value is None:
        return "no batch" if r.get(f"{key[:-2]}_no_batch") else "-"
    return fmt.format(value * scale)


W = 16  # column width


def table(results: dict[str, dict]) -> str:
    base = results["streamtrain"]
    names = list(results)
    width = max(len(n) for n in names) + 2
    lines = ["peer ÷ streamtrain (↑ higher is better, ↓ lower is better)"]
    header = f"{'peer':{width}}" + "".join(f"{h + (' ↑' if up else ' ↓'):>{W}}" for _, h, _, _, up in COLUMNS)
    lines += [header + "  exactly-once after resume", "-" * (len(header) + 28)]
    for name in names:
        r, row = results[name], f"{name:{width}}"
        for key, _, _, _, _ in COLUMNS:
            value, reference = r.get(key), base.get(key)
            if value is None or not reference:
                row += f"{'no batch' if r.get(f'{key[:-2]}_no_batch') else '-':>{W}}"
            else:
                row += f"{value / reference:>{W - 1}.2f}x"
        lines.append(row + "  " + exactly_once(r))
    lines += ["", "absolute values"]
    lines.append(f"{'peer':{width}}" + "".join(f"{h:>{W}}" for _, h, _, _, _ in COLUMNS) + "  resume mechanism")
    lines.append("-" * (len(header) + 28))
    for name in names:
        r = results[name]
        lines.append(f"{name:{width}}" + "".join(f"{_cell(r, k, s, f):>{W}}" for k, _, s, f, _ in COLUMNS)
                     + "  " + r["resume_how"])
    failed = [f"{n}: {r['error'].splitlines()[0]} ... {r['error'].strip().splitlines()[-1].strip()}"
              for n, r in results.items() if r.get("error")]
    if failed:
        lines += ["", "failures:", *failed]
    return "\n".join(lines)


def chart(results: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    colors = ["#d62728" if n == "streamtrain" else "#7f7f7f" for n in names]
    panels = [(k, h, s, up) for k, h, s, _, up in COLUMNS]
    fig, axes = plt.subplots(2, 6, figsize=(25, 8))  # one panel a column, and exactly-once
    for ax, (key, header, scale, up) in zip(axes.flat, panels):
        values = [(results[n].get(key) or 0) * scale for n in names]
        bars = ax.bar(names, values, color=colors)
        for bar, name, value in zip(bars, names, values):
            label = "no batch" if results[name].get(f"{key[:-2]}_no_batch") else (
                f"{value:.0f}" if value >= 100 else f"{value:.3g}")
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{header} ({'higher' if up else 'lower'} is better)", fontsize=10)
        ax.tick_params(axis="x", rotation=35, labelsize=8)
    ax = axes.flat[-1]
    x = range(len(names))
    for offset, fraction, color in ((-0.2, "0.5", "#1f77b4"), (0.2, "0.95", "#ff7f0e")):
        wrong = [(results[n].get(f"resume_{fraction}_duplicates") or 0)
                 + (results[n].get(f"resume_{fraction}_missing") or 0) for n in names]
        ax.bar([i + offset for i in x], wrong, width=0.4, color=color, label=f"resumed at {float(fraction):.0%}")
    ax.set_xticks(list(x), names, rotation=35, fontsize=8)
    ax.set_title("duplicate + missing after resume (0: exactly once)", fontsize=10)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()}-core {platform.machine()} ({model}), {memory:.0f} GiB, no GPU used"


def parse_args() -> tuple[argparse.Namespace, list[Peer]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000, help="utterances in the corpus")
    parser.add_argument("--per-shard", type=int, default=100, help="utterances per shard (all formats)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all peers (fresh processes each)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per epoch process")
    parser.add_argument("--peers", default=",".join(p.name for p in PEERS), help="comma-separated subset")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "streamtrain-bench")
    parser.add_argument("--work", type=Path, help="keep corpus, converted data and logs here (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per subprocess")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "peers.json")
    parser.add_argument("--png", type=Path, default=REPO / "docs" / "peers.png")
    args = parser.parse_args()
    chosen = [p for p in PEERS if p.name in args.peers.split(",")]
    if not chosen or chosen[0].name != "streamtrain":
        parser.error("--peers must include streamtrain (every ratio is against it)")
    return args, chosen


def prepare_venvs(chosen: list[Peer], cache: Path, timings: dict) -> tuple[dict, dict]:
    """The peers' virtual environments (built once, then reused) and each peer's python."""
    started = time.perf_counter()
    print("venvs:")
    built = venvs.ensure(sorted({p.venv for p in chosen if p.venv}), cache)
    timings["venvs_s"] = time.perf_counter() - started
    took = [f"{n} {b['seconds']:.0f}s" if b["seconds"] else f"{n} reused" for n, b in built.items()]
    print(f"  {timings['venvs_s']:.0f}s ({', '.join(took)})")
    return built, {p.name: Path(sys.executable) if p.venv is None else built[p.venv]["python"] for p in chosen}


def measure_all(chosen: list[Peer], built: dict, pythons: dict, args, timings: dict) -> tuple[dict, dict]:
    """Build (or reuse) the corpus and measure every usable peer: (corpus totals, results by peer)."""
    work = args.work or Path(tempfile.mkdtemp(prefix="streamtrain-peers-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        corpus = work / "corpus"
        if not (corpus / "index.json").exists():
            build_corpus(corpus, args.samples, args.per_shard)
        index = json.loads((corpus / "index.json").read_text())["totals"]
        timings["corpus_s"] = time.perf_counter() - t
        print(f"corpus: {index['samples']} utterances, {index['seconds'] / 3600:.2f} h, {index['shards']} shards, "
              f"{index['bytes'] / 1e6:.1f} MB FLAC ({timings['corpus_s']:.0f}s)")
        for peer in chosen:
            if peer.venv and built[peer.venv]["error"]:
                print(f"  {peer.name}: no venv ({built[peer.venv]['error']})")
        usable = [p for p in chosen if not (p.venv and built[p.venv]["error"])]
        t = time.perf_counter()
        print("measuring:")
        shutil.rmtree(work / "data", ignore_errors=True)
        results = measure(usable, pythons, corpus, work, args)
        for peer in chosen:
            if peer not in usable:
                results[peer.name] = summarize({
                    "peer": peer.name, "resume_how": peer.resume, "epochs": [], "memory": [],
                    "resume": {f: [] for f in FRACTIONS}, "error": f"venv: {built[peer.venv]['error']}",
                })
        timings["measure_s"] = time.perf_counter() - t
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return index, results


def report(results: dict, index: dict, built: dict, timings: dict, args) -> None:
    """The table on stdout, the JSON record and the chart."""
    when = datetime.date.today().isoformat()
    settings = (f"{index['samples']} utterances ({index['seconds'] / 3600:.2f} h FLAC 16 kHz), "
                f"batch {protocol.BATCH_SIZE}, {protocol.WORKERS} workers, {args.rounds} rounds x {args.epochs} epochs")
    print()
    print(table(results))
    print(f"\n{when}, {machine()}; {settings}")
    loads = [m["load"] for r in results.values() for m in r["memory"]]
    if loads:
        print(f"machine load (1-min average) when phases started: median {statistics.median(loads):.1f}, "
              f"max {max(loads):.1f} on {os.cpu_count()} cores; other work on the machine slows wall-clock "
              f"rates, not CPU ms/sample")
    print(f"time: venvs {timings['venvs_s']:.0f}s, corpus {timings['corpus_s']:.0f}s, "
          f"conversion + measurement {timings['measure_s']:.0f}s, total {timings['total_s']:.0f}s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "date": when, "machine": machine(), "settings": settings, "corpus": index, "timings": timings,
        "venvs": {n: {k: str(v) if isinstance(v, Path) else v for k, v in b.items()} for n, b in built.items()},
        "results": results,
    }, indent=1))
    load = f"; machine load {statistics.median(loads):.1f} (1-min avg) while measuring" if loads else ""
    chart(results, args.png, f"streamtrain vs peers — {when}, {machine()}\n{settings}{load}")
    print(f"wrote {args.json} and {args.png}")


def main() -> None:
    args, chosen = parse_args()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    built, pythons = prepare_venvs(chosen, args.cache, timings)
    index, results = measure_all(chosen, built, pythons, args, timings)
    timings["total_s"] = time.perf_counter() - started
    report(results, index, built, timings, args)


if __name__ == "__main__":
    main()
