"""The package's shape: every import runs down the layers (none back up, so no cycle), and the
README's config key table is the one the config module generates."""

import ast
from pathlib import Path

from fussfast.config import keys_markdown

ROOT = Path(__file__).resolve().parents[1]

# Lowest first; a package imports only from layers below its own (docs/architecture.md).
LAYERS = [
    ["fussfast._C"],  # the compiled extension
    ["fussfast._info", "fussfast._files", "fussfast.ops"],
    ["fussfast.losses", "fussfast.model", "fussfast.data", "fussfast.eval"],
    ["fussfast.features"],
    ["fussfast.tasks"],
    ["fussfast.fed"],
    ["fussfast.config"],
    ["fussfast.assemble", "fussfast.outputs", "fussfast.report"],
    ["fussfast.run", "fussfast.flower"],
    ["fussfast.demo", "fussfast.pipeline"],
    ["fussfast.__main__", "fussfast"],
]


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def level(module: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package_of(module) in layer)


def imports():
    for path in (ROOT / "fussfast").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "fussfast":
                yield from ((module, f"fussfast.{a.name}", node.lineno) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fussfast."):
                yield module, node.module, node.lineno
            elif isinstance(node, ast.Import):
                yield from ((module, a.name, node.lineno) for a in node.names if a.name.startswith("fussfast"))


def test_imports_run_down_the_layers():
    up, across = [], []
    for source, target, line in imports():
        a, b = package_of(source), package_of(target)
        if a == b:
            continue
        if level(target) > level(source):
            up.append(f"{source}:{line} imports {target}")
        elif level(target) == level(source) and a != "fussfast":
            across.append(f"{source}:{line} imports {target}")
    assert not up, "imports running back up:\n" + "\n".join(up)
    assert not across, "imports within a layer:\n" + "\n".join(across)


def test_every_package_has_a_layer():
    packages = {package_of(m) for m, _, _ in imports()}
    assert all(any(p in layer for layer in LAYERS) for p in packages), packages


def test_readme_key_table_is_generated():
    readme = (ROOT / "README.md").read_text()
    assert keys_markdown() in readme, "README's key table is stale: paste `fussfast config --keys`"
