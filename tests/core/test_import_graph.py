"""The shape of ``siamese_core``: imports run one way, downwards, and only at module level.

Parsed with `ast` (nothing is imported): every module's module-level imports form a graph that must be
acyclic and respect `LAYERS`. The one lazy boundary is ``siamese_core/__init__.py``; back-references for
type hints live under ``if TYPE_CHECKING:``; dynamic loads through `siamese_core.registry` (the sanctioned
non-static import) are calls, not import statements, so they are not edges here.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "siamese_core"
ROOT = "siamese_core"

# module -> layer; a module may import its own layer or lower ones, never a higher one.
LAYERS: dict[str, int] = {
    # 0 - vocabulary and process set-up: no model, no data
    "siamese_core.allocator": 0, "siamese_core.quiet_import": 0, "siamese_core.errors": 0, "siamese_core.jsonable": 0,
    "siamese_core.findings": 0, "siamese_core.metrics": 0, "siamese_core.registry": 0,
    "siamese_core.diagnostics": 0, "siamese_core.diagnostics.codes": 0, "siamese_core.diagnostics.report": 0,
    "siamese_core.config": 0, "siamese_core.cpus": 0, "siamese_core.runtime": 0, "siamese_core.checkpoint": 0,
    # 1 - data: sources, splits, the one sampler, loaders
    "siamese_core.data": 1, "siamese_core.data.types": 1, "siamese_core.data.idx": 1,
    "siamese_core.data.validation": 1, "siamese_core.data.splits": 1, "siamese_core.data.pairs": 1,
    "siamese_core.data.sources": 1, "siamese_core.data.cache": 1, "siamese_core.data.image_folder": 1,
    "siamese_core.data.loaders": 1,
    # 2 - models, losses, metric computations, evaluation
    "siamese_core.models": 2, "siamese_core.models.distances": 2, "siamese_core.models.layers": 2,
    "siamese_core.models.preprocessing": 2, "siamese_core.models.encoders": 2, "siamese_core.models.siamese": 2,
    "siamese_core.losses": 2, "siamese_core.verification": 2, "siamese_core.evaluation": 2,
    # 3 - a run, built once from a config
    "siamese_core.run": 3,
    # 4 - diagnostics: read-only checks over models and data
    "siamese_core.diagnostics.scores": 4, "siamese_core.diagnostics.data_checks": 4,
    "siamese_core.diagnostics.graph_checks": 4, "siamese_core.diagnostics.loss_checks": 4,
    "siamese_core.diagnostics.watchers": 4,
    # 5 - the callbacks every training installs; 6 - training; 7 - the doctor (calls training)
    "siamese_core.callbacks": 5,
    "siamese_core.training": 6,
    "siamese_core.doctor": 7, "siamese_core.doctor._diagnose": 7, "siamese_core.doctor.probes": 7,
    # the package boundary: lazy access to everything above, static imports of pure modules only
    "siamese_core": 8,
}

# Must not load TensorFlow/Keras (nor scikit-learn: 2.7 s) when imported: config validation and
# `import siamese_core` stay fast; data loading stays TensorFlow-free so a sweep's preflight is instant.
PURE = ("siamese_core", "siamese_core.config", "siamese_core.errors", "siamese_core.findings",
        "siamese_core.registry", "siamese_core.metrics", "siamese_core.diagnostics.codes",
        "siamese_core.allocator", "siamese_core.quiet_import", "siamese_core.jsonable", "siamese_core.cpus")
NO_TENSORFLOW = PURE + ("siamese_core.data.sources", "siamese_core.data.pairs", "siamese_core.verification")
HEAVY = {"tensorflow", "keras", "sklearn"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports executed when the module loads (``if TYPE_CHECKING:`` blocks excluded)."""
    out: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])
    return out


def _nested_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """Imports inside functions or classes (executed late, hiding a dependency)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    found.append((sub.lineno, ast.unparse(sub)))
    return found


def _resolve(module: str, node: ast.Import | ast.ImportFrom) -> tuple[set[str], set[str]]:
    """(siamese_core modules, third-party top-level packages) that `node` imports."""
    ours: set[str] = set()
    theirs: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            top = alias.name.split(".")[0]
            if top == ROOT:
                ours.add(alias.name)
            else:
                theirs.add(top)
        return ours, theirs
    if node.level:
        is_package = MODULES[module].name == "__init__.py"
        base = module.split(".")
        base = base[:len(base) - node.level + (1 if is_package else 0)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != ROOT:
        theirs.add(target.split(".")[0])
        return ours, theirs
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        ours.add(sub if sub in MODULES else target)
    return ours, theirs


def _with_parents(name: str, importer: str) -> set[str]:
    """`name` and the packages whose ``__init__`` importing it runs.

    Not counted: the root package (the boundary, imported first by everyone) and the importer's own
    packages (already being initialised when the importer runs).
    """
    parts = name.split(".")
    chain = {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
    return {p for p in chain if not importer.startswith(p + ".")}


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    edges: dict[str, set[str]] = {}
    third: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges[module], third[module] = set(), set()
        for node in _module_level_imports(tree):
            ours, theirs = _resolve(module, node)
            for target in ours:
                edges[module] |= _with_parents(target, module) if target != ROOT else {ROOT}
            third[module] |= theirs
        edges[module].discard(module)
    return edges, third


EDGES, THIRD_PARTY = _graph()


def _closure(module: str) -> set[str]:
    seen, stack = set(), [module]
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        stack.extend(EDGES.get(m, ()))
    return seen


def test_no_function_local_imports():
    """Dependencies are declared at the top of each module; only the package boundary is lazy."""
    offenders = {name: _nested_imports(ast.parse(path.read_text(encoding="utf-8")))
                 for name, path in MODULES.items() if path != PACKAGE_DIR / "__init__.py"}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_import_graph_is_acyclic():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(EDGES.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(EDGES):
        if module not in state:
            visit(module, [module])


def test_every_module_has_a_layer():
    assert sorted(set(MODULES) - set(LAYERS)) == [], "place new modules in LAYERS"
    assert sorted(set(LAYERS) - set(MODULES)) == [], "LAYERS names modules that no longer exist"


def test_layers_only_import_downwards():
    upward = [f"{a} (layer {LAYERS[a]}) imports {b} (layer {LAYERS[b]})"
              for a, targets in EDGES.items() for b in sorted(targets) if LAYERS[b] > LAYERS[a]]
    assert upward == []


@pytest.mark.parametrize("module", NO_TENSORFLOW)
def test_light_modules_import_no_heavy_package(module):
    """Statically, through every siamese_core module they import."""
    heavy = {m: sorted(THIRD_PARTY[m] & (HEAVY if module in PURE else {"tensorflow", "keras"}))
             for m in _closure(module)}
    assert {m: h for m, h in heavy.items() if h} == {}


def test_importing_siamese_core_and_validating_a_config_loads_no_tensorflow():
    code = textwrap.dedent("""
        import sys
        import siamese_core
        from siamese_core import TrainConfig, ConfigError, metrics, registry
        TrainConfig.from_dict({"dataset": "digits", "loss": {"type": "triplet"}, "distance": "cosine",
                               "early_stopping": {"enabled": True, "monitor": "val_eer"}})
        try:
            TrainConfig.from_dict({"encoder": {"type": "resnet"}})
        except ConfigError:
            pass
        assert metrics.direction("val_eer") == "min" and "conv" in registry.ENCODERS
        print("HEAVY=" + ",".join(sorted(m for m in ("tensorflow", "keras", "sklearn") if m in sys.modules)))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stdout, proc.stdout
