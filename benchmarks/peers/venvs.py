"""One virtual environment per peer library, created on first use and reused after.

The peers cannot share one environment: mosaicml-streaming pins numpy < 2.2 and
transformers < 5 and pulls torchvision, which streamtrain's own pins do not allow.
Each venv lives in ``<cache>/venvs/<name>`` and holds a marker with its exact
requirement list; a venv whose marker is missing or different is rebuilt.
Venvs are built in parallel (the work is mostly downloading and unpacking).

Torch: where a peer needs torch but not torchvision, a CPU build is used when
one lies in a pip ``find-links`` folder (``torch==X`` then resolves to it);
otherwise pip picks. ``STREAMTRAIN_BENCH_TORCH`` overrides the requirement.
Mosaic imports torchvision at import time, and torchvision's wheels on PyPI are
built against PyPI's default torch, so its venv takes whatever torch pip picks
for torchvision.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MARKER = ".streamtrain-bench.json"


def cpu_torch() -> str:
    """``torch==X`` for a local CPU wheel of this Python, else plain ``torch``."""
    if os.environ.get("STREAMTRAIN_BENCH_TORCH"):
        return os.environ["STREAMTRAIN_BENCH_TORCH"]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for folder in _find_links():
        wheels = sorted(glob.glob(os.path.join(folder, f"torch-*+cpu-{tag}-{tag}-*linux*x86_64.whl")))
        if wheels:
            version = os.path.basename(wheels[-1]).split("-")[1].split("+")[0]
            return f"torch=={version}"
    return "torch"


def _find_links() -> list[str]:
    found = os.environ.get("PIP_FIND_LINKS", "").split()
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    for line in listing.stdout.splitlines():
        name, _, value = line.partition("=")
        if name.endswith("find-links"):
            found += value.strip().strip("'\"").split()
    return [f.removeprefix("file://") for f in found if not f.startswith(("http://", "https://"))]


def requirements() -> dict[str, list[str]]:
    """venv name -> exact requirements. soundfile is pinned to the project venv's version."""
    torch = cpu_torch()
    return {
        "webdataset": ["webdataset==1.0.2", "soundfile==0.14.0", torch],
        "mosaic": ["mosaicml-streaming==0.13.0", "soundfile==0.14.0"],
        # lhotse 1.33.0 imports urllib3 without declaring it
        "lhotse": ["lhotse==1.33.0", "urllib3", "soundfile==0.14.0", torch],
        "hf": ["datasets==5.2.0", "torchdata==0.11.0", "soundfile==0.14.0", torch],
    }


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure(names: list[str], cache: Path, log=print) -> dict[str, dict]:
    """Create (or reuse) the named venvs: name -> {python, seconds (0 if reused), error}."""
    wanted = requirements()
    root = cache / "venvs"
    root.mkdir(parents=True, exist_ok=True)

    def build(name: str) -> tuple[str, dict]:
        venv, started = root / name, time.perf_counter()
        result = {"python": python_of(venv), "seconds": 0.0, "error": None, "requirements": wanted[name]}
        marker = venv / MARKER
        if marker.exists() and json.loads(marker.read_text()) == wanted[name]:
            return name, result
        shutil.rmtree(venv, ignore_errors=True)
        log(f"  creating venv {name}: {' '.join(wanted[name])}")
        logfile = root / f"{name}.log"
        with open(logfile, "w") as out:
            base = getattr(sys, "_base_executable", sys.executable)
            steps = [
                [base, "-m", "venv", str(venv)],
                [str(python_of(venv)), "-m", "pip", "install", "--disable-pip-version-check", *wanted[name]],
            ]
            for step in steps:
                if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                    result["error"] = f"{' '.join(step[:4])}... failed; see {logfile}"
                    break
            else:
                marker.write_text(json.dumps(wanted[name]))  # last: a half-built venv has no marker
        result["seconds"] = time.perf_counter() - started
        return name, result

    with ThreadPoolExecutor(max_workers=len(names) or 1) as pool:
        return dict(pool.map(build, names))
