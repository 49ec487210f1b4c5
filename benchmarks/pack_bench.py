"""Packing speed and storage, against an earlier revision of the packer measured in the same run.

Synthesizes N espeak-ng utterances once (22.05 kHz 16-bit WAV, as a corpus on disk
would hold them; ``--cache DIR`` keeps them for later runs), then prints:

- speed: each codec packed with 1 and 2 worker processes, by this tree and, with
  ``--baseline REV``, by the packer at git revision REV (exported to a temporary
  folder), each pack in a fresh interpreter. Audio hours per minute of wall time
  per worker ("per core": a run uses as many cores as it has workers, plus the
  main process writing shards) and per CPU-minute (main process and workers),
  which other load on the machine disturbs less, and how many cores other jobs
  kept busy meanwhile (Linux). Starting the workers is timed; loading torch for a
  revision that resampled with it is not;
- opus complexity: CPU time, bitrate and the distance to the source (mean
  absolute difference of Whisper log-mel features, what a model is fed) of
  libopus at each complexity, and of soundfile's own encoder (complexity 10);
- resampling 22.05 -> 16 kHz: torchaudio's Resample against streamtrain's;
- storage: shard bytes against the WAV inputs and against what a preprocess-first
  pipeline stores, Whisper log-mel features: 80 x 3000 float32 per started 30 s window.

    python benchmarks/pack_bench.py [--utterances 2000] [--codecs flac,opus] [--baseline 97977c0] [--repeats 1]
                                    [--cache DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/support holds the corpus makers and servers

from tests.support.corpus import Corpus, utterances, write_jsonl  # noqa: E402
from streamtrain.audio import DEFAULT_OPUS_COMPLEXITY, decode, encode, resample
from streamtrain.features import WhisperLogMel

REPO = Path(__file__).resolve().parents[1]
WHISPER_WINDOW_SECONDS = 30
WHISPER_FEATURE_BYTES = 80 * 3000 * 4  # n_mels x frames x float32, per 30 s window
LEAN_FEATURE_BYTES_PER_SECOND = 80 * 100 * 2  # n_mels x 100 frames/s x float16, the utterance's own length

#: Packs one source in a fresh interpreter and prints what it measured as JSON. A first
#: resampling call loads what the packer's resampler needs (torch, for revisions before
#: the numpy resampler) before the clock starts; starting worker processes is timed.
RUNNER = """
import json, os, resource, sys, time
import numpy as np
from streamtrain.audio import resample
from streamtrain.pack import pack

resample(np.zeros(4410, dtype=np.float32), 22050, 16000)
if "torch" in sys.modules:
    sys.modules["torch"].set_num_threads(1)  # one core per process, as the workers have

def cpu():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

def machine():
    # CPU seconds every process on the machine has used (Linux): user .. steal, less idle and iowait
    ticks = [int(t) for t in open("/proc/stat").readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")

source, out, codec, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
started, cpu_started, machine_started = time.perf_counter(), cpu(), machine()
summary = pack(source, out, codec=codec, workers=workers, progress=False)
wall, used = time.perf_counter() - started, cpu() - cpu_started
print(json.dumps({"wall": wall, "cpu": used, "others": max(0.0, machine() - machine_started - used) / wall,
                  "hours": summary.hours, "bytes": summary.bytes}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=2000)
    parser.add_argument("--codecs", default="flac,opus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", metavar="REV", help="also pack with the packer of this git revision")
    parser.add_argument("--cache", type=Path, metavar="DIR", help="keep the synthesized corpus here, reuse it later")
    parser.add_argument("--repeats", type=int, default=1, help="pack each way this many times, keep the fastest")
    parser.add_argument("--complexity-utterances", type=int, default=200, help="for the opus complexity table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the in-process tables time one core

    with tempfile.TemporaryDirectory(prefix="pack-bench-") as scratch:
        scratch = Path(scratch)
        corpus = cached_corpus(args.cache or scratch / "corpus", args.utterances, args.seed)
        print(machine_line() + "\n", flush=True)
        trees = {"this tree": REPO}
        if args.baseline:
            trees[f"baseline {args.baseline}"] = export_revision(args.baseline, scratch / "baseline")
        runs = pack_runs(corpus, args.codecs.split(","), trees, scratch, args.repeats)
        waveforms = [decode(corpus.audio[key])[0] for key in list(corpus.audio)[: args.complexity_utterances]]
        seconds = [soundfile.info(path).duration for path in corpus.audio.values()]
        print(f"{args.utterances} utterances, {sum(seconds) / 3600:.3f} h of speech "
              f"(mean {np.mean(seconds):.2f} s), {os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} usable\n")
        print_speed(runs)
        print_complexity(waveforms)
        print_resampling(waveforms)
        print_storage(corpus, runs, seconds)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    return 0


def cached_corpus(folder: Path, count: int, seed: int) -> Corpus:
    """The corpus in ``folder``, synthesized there first unless an earlier run left the same one."""
    stamp, wanted = folder / "corpus.json", {"utterances": count, "seed": seed}
    utts = utterances(count, seed=seed)
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        manifest = folder / "manifest.jsonl"
        return Corpus(manifest, "jsonl", {u.name: u.text for u in utts},
                      {u.name: folder / "audio" / f"{u.name}.wav" for u in utts})
    started = time.perf_counter()
    corpus = write_jsonl(folder, utts)
    stamp.write_text(json.dumps(wanted))
    print(f"synthesized {count} utterances in {time.perf_counter() - started:.0f} s -> {folder}")
    return corpus


def machine_line() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{date.today()}, {model}, Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"


def export_revision(revision: str, folder: Path) -> Path:
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "streamtrain"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def pack_runs(corpus: Corpus, codecs: list[str], trees: dict[str, Path], scratch: Path, repeats: int) -> list[dict]:
    """Each codec, 1 and 2 workers, each tree, the fastest of ``repeats`` packs. The trees
    take turns, so a change in the machine's load hits both alike."""
    runs = []
    for codec in codecs:
        for workers in (1, 2):
            tries = {name: [] for name in trees}
            for _ in range(repeats):
                for name, tree in trees.items():
                    tries[name].append(_pack(corpus, codec, workers, tree, scratch / f"{codec}-{workers}"))
            for name, results in tries.items():
                runs.append({"codec": codec, "workers": workers, "tree": name, **min(results, key=lambda r: r["wall"])})
                walls = ", ".join(f"{r['wall']:.1f} ({r['others']:.1f})" for r in results)
                print(f"  {codec}, {workers} worker(s), {name}: {walls} s (cores other jobs used)", flush=True)
    return runs


def _pack(corpus: Corpus, codec: str, workers: int, tree: Path, out: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", RUNNER, str(corpus.source), str(out), codec, str(workers)],
                            cwd=tree, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), *_python_path()])},
                            capture_output=True, text=True, check=True)  # cwd: -c puts it first on the path
    shutil.rmtree(out)
    return json.loads(result.stdout)


def _python_path() -> list[str]:
    return [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]


def print_speed(runs: list[dict]) -> None:
    print(f"{'codec':<6} {'packer':<18} {'workers':>7} {'wall s':>8} {'audio h/min/core':>17} "
          f"{'audio h/CPU-min':>16} {'x baseline':>11} {'2 workers / 1':>14} {'other jobs, cores':>18}")
    for run in runs:
        per_core = run["hours"] / (run["wall"] / 60) / run["workers"]
        baseline = _find(runs, run["codec"], run["workers"], baseline=True)
        versus = f"{baseline['wall'] / run['wall']:.2f}x" if baseline and baseline is not run else "-"
        single = _find(runs, run["codec"], 1, tree=run["tree"])
        speedup = f"{single['wall'] / run['wall']:.2f}x" if run["workers"] == 2 else "-"
        print(f"{run['codec']:<6} {run['tree']:<18} {run['workers']:>7} {run['wall']:>8.1f} {per_core:>17.2f} "
              f"{run['hours'] / (run['cpu'] / 60):>16.2f} {versus:>11} {speedup:>14} {run['others']:>18.2f}")


def _find(runs: list[dict], codec: str, workers: int, tree: str | None = None, baseline: bool = False) -> dict | None:
    return next((r for r in runs if r["codec"] == codec and r["workers"] == workers
                 and (r["tree"] == tree if tree else r["tree"].startswith("baseline") == baseline)), None)


def print_complexity(waveforms: list[np.ndarray]) -> None:
    speech = [resample(w, 22050, 16000) for w in waveforms]
    seconds = sum(len(w) for w in speech) / 16000
    mel = WhisperLogMel()
    rows = [(str(c), lambda w, c=c: encode(w, 16000, "opus", complexity=c)[0]) for c in range(11)]
    rows.append(("soundfile (10)", _soundfile_opus))
    measured = {name: _measure_encoder(encoder, speech, mel) for name, encoder in rows}
    default = measured[str(DEFAULT_OPUS_COMPLEXITY)][0]
    print(f"\nopus at 16 kHz, default bitrate, {len(speech)} utterances ({seconds:.0f} s); log-mel distance: mean "
          "|difference| of Whisper log-mel to the source's")
    print(f"{'complexity':<15} {'CPU ms per audio s':>19} {'x default time':>15} {'kbit/s':>7} {'log-mel distance':>17}")
    for name, (cpu, size, distance) in measured.items():
        print(f"{name:<15} {cpu / seconds * 1e3:>19.2f} {cpu / default:>15.2f} {size * 8 / seconds / 1e3:>7.1f} "
              f"{distance:>17.4f}")


def _soundfile_opus(waveform: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, waveform, 16000, format="OGG", subtype="OPUS")
    return buffer.getvalue()


def _measure_encoder(encoder, speech: list[np.ndarray], mel: WhisperLogMel) -> tuple[float, int, float]:
    """(CPU seconds to encode all, bytes, mean log-mel distance of the decoded audio to the source)."""
    encoder(speech[0])
    started = time.process_time()
    encoded = [encoder(w) for w in speech]
    cpu = time.process_time() - started
    distances = [_log_mel_distance(mel, w, decode(data)[0][: len(w)]) for w, data in zip(speech, encoded)]
    return cpu, sum(map(len, encoded)), float(np.mean(distances))


def _log_mel_distance(mel: WhisperLogMel, source: np.ndarray, decoded: np.ndarray) -> float:
    lengths = torch.tensor([len(source)])
    with torch.no_grad():
        a, frames = mel(torch.from_numpy(source)[None], lengths)
        b, _ = mel(torch.from_numpy(np.ascontiguousarray(decoded))[None], lengths)
    return float((a - b)[..., : int(frames[0])].abs().mean())


def print_resampling(waveforms: list[np.ndarray]) -> None:
    from torchaudio.transforms import Resample

    kernel = Resample(22050, 16000, resampling_method="sinc_interp_kaiser", lowpass_filter_width=64,
                      rolloff=0.9475937167399596, beta=14.769656459379492)

    def torchaudio_resample(waveform: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return kernel(torch.from_numpy(waveform)[None])[0].numpy()

    timed = {}
    for name, function in [("torchaudio Resample", torchaudio_resample),
                           ("streamtrain.audio.resampling", lambda w: resample(w, 22050, 16000))]:
        function(waveforms[0])
        started = time.process_time()
        for waveform in waveforms:
            function(waveform)
        timed[name] = (time.process_time() - started) / len(waveforms)
    print(f"\n{'resampling 22.05 -> 16 kHz, one thread':<40} {'CPU ms per utterance':>21} {'x streamtrain':>14}")
    for name, cpu in timed.items():
        print(f"{name:<40} {cpu * 1e3:>21.3f} {cpu / timed['streamtrain.audio.resampling']:>14.2f}")


def print_storage(corpus: Corpus, runs: list[dict], seconds: list[float]) -> None:
    wav = sum(path.stat().st_size for path in corpus.audio.values())
    features = sum(math.ceil(s / WHISPER_WINDOW_SECONDS) * WHISPER_FEATURE_BYTES for s in seconds)
    storage = [("WAV source (22.05 kHz 16-bit)", wav)]
    storage += [(f"shards, {r['codec']} 16 kHz, {r['tree']}", r["bytes"]) for r in runs if r["workers"] == 1]
    storage.append(("Whisper log-mel features (80x3000 f32)", features))
    storage.append(("log-mel, f16, own length (no padding)", sum(s * LEAN_FEATURE_BYTES_PER_SECOND for s in seconds)))
    print(f"\n{'storage':<48} {'MB':>9} {'x WAV':>8} {'x features':>11}")
    for name, size in storage:
        print(f"{name:<48} {size / 1e6:>9.2f} {size / wav:>8.3f} {size / features:>11.4f}")


if __name__ == "__main__":
    sys.exit(main())
