"""The package's shape, as DESIGN.md's Layers section promises it: nine layer packages and nothing else at the
top, argument parsing only in the commands, no test helpers in the wheel, the users' names at the package root."""

import ast
import shutil
import subprocess
import sys
import zipfile

import pytest

import streamtrain
from tests.test_layers import LAYERS, PACKAGE

ROOT = PACKAGE.parent
LAYER_PACKAGES = [name for name, _ in LAYERS]  # the nine, lowest first


def test_the_top_level_holds_only_the_nine_layer_packages():
    entries = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert entries == {"__init__.py", "__main__.py", *LAYER_PACKAGES}
    assert len(LAYER_PACKAGES) == 9 and all((PACKAGE / name / "__init__.py").is_file() for name in LAYER_PACKAGES)


def test_arguments_are_parsed_only_under_cli():
    parsing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        if "argparse" in names and path.relative_to(PACKAGE).parts[0] != "cli":
            parsing.append(str(path.relative_to(ROOT)))
    assert parsing == []


USERS_NAMES = ["StreamLoader", "merge_states", "RetryPolicy", "BatchSettings", "WhisperLogMel", "KaldiFbank",
               "SpecAugment", "Batch", "Stateful", "pack", "merge", "open_dataset"]


def test_the_names_users_import_come_from_the_package_root():
    for name in USERS_NAMES:
        assert name in streamtrain.__all__, name
    from streamtrain import (BatchSettings, KaldiFbank, RetryPolicy, SpecAugment, StreamLoader,  # noqa: F401
                             WhisperLogMel, merge_states)

    assert StreamLoader.__module__ == "streamtrain.loader.stream_loader"
    assert callable(merge_states) and BatchSettings(batch_size=4).batch_size == 4
    with pytest.raises(AttributeError, match="has no attribute 'Nothing'"):
        streamtrain.Nothing  # noqa: B018


def test_importing_the_package_loads_no_layer():
    """The root's names load on first use: ``import streamtrain`` (and so every command's start) stays light."""
    code = "import sys, streamtrain; print(sorted(m for m in sys.modules if m.startswith('streamtrain.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.mark.slow
def test_the_wheel_holds_the_package_and_no_test_helper(tmp_path):
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(PACKAGE, tmp_path / "streamtrain", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w",
                    "dist"], cwd=tmp_path, check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packaged = sorted(n for n in names if not n.startswith("streamtrain-"))
    sources = [p.relative_to(tmp_path).as_posix() for p in (tmp_path / "streamtrain").rglob("*.py")]
    bundled = [p.relative_to(tmp_path).as_posix() for p in (tmp_path / "streamtrain" / "train" / "recipes").rglob("*")
               if p.is_file()]  # the recipes, the digits tokenizer and the demo shards: package data
    assert bundled and packaged == sorted(sources + bundled)  # nothing from tests/ or benchmarks/
    helpers = ("moto", "http.server", "socketserver")
    shipped = [n for n in packaged if n.endswith(".py") and any(h in (tmp_path / n).read_text() for h in helpers)]
    assert shipped == [], f"test servers in the wheel: {shipped}"


def test_every_package_the_code_imports_is_a_declared_runtime_dependency():
    """What ``pip install streamtrain`` must bring (cffi was once imported and not declared); test-only
    libraries (moto, hypothesis) stay out of the package."""
    import importlib.metadata
    import re
    import tomllib

    declared = {re.split(r"[<>=\[ ;]", spec)[0].lower()
                for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    optional = {"s3fs"}  # s3:// locations, imported by fsspec on demand, never by streamtrain
    distributions = importlib.metadata.packages_distributions()
    undeclared = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for top in {name.split(".")[0] for name in names} - set(sys.stdlib_module_names) - {"streamtrain"}:
                owners = {d.lower() for d in distributions.get(top, [top])}
                if not owners & (declared | optional):
                    undeclared.add(f"{top} ({path.relative_to(ROOT)})")
    assert sorted(undeclared) == []
