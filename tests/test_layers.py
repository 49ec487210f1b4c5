"""The package's layering: a module imports only from its own layer or the layers below it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "streamtrain"

#: Lowest first, as in DESIGN.md's Layers table. A module belongs to the first layer with a prefix of
#: its dotted name; ``cli`` (the commands) may import from every layer.
LAYERS = [
    ("storage", ["streamtrain.storage"]),
    ("audio", ["streamtrain.audio"]),
    ("format", ["streamtrain.format"]),
    ("pack", ["streamtrain.pack"]),
    ("loader", ["streamtrain.loader"]),
    ("features", ["streamtrain.features"]),
    ("train", ["streamtrain.train"]),
    ("distill", ["streamtrain.distill"]),
    ("cli", ["streamtrain.cli", "streamtrain.__main__", "streamtrain.__init__"]),
]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def layer_of(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return [name for name in found if name == "streamtrain" or name.startswith("streamtrain.")]


MODULES = sorted(PACKAGE.rglob("*.py"))


def upward_imports(module: str, source: str) -> list[tuple[str, str]]:
    """(imported module, its layer) for each import of ``source`` from a layer above ``module``'s."""
    return [(name, LAYERS[layer_of(name)][0]) for name in imports(source)
            if name != "streamtrain" and layer_of(name) > layer_of(module)]


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_no_module_imports_from_a_higher_layer(path):
    module = module_name(path)
    upward = upward_imports(module, path.read_text())
    assert not upward, f"{module} (layer {LAYERS[layer_of(module)][0]}) imports upward: {upward}"


def test_an_upward_import_is_found_even_inside_a_function():
    source = "import numpy\nfrom streamtrain.format.index import sample_offsets\n" \
             "def f():\n    from streamtrain.features import decode_features\n"
    assert upward_imports("streamtrain.loader.batch", source) == [("streamtrain.features", "features")]
    assert upward_imports("streamtrain.cli.featurize", "import streamtrain.train.config") == []
