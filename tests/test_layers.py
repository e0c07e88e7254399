"""The package reads in layers (DESIGN.md "Layout", README "Reading the code"): a module imports only modules of
its own layer or a lower one, and no two modules import each other, directly or around a loop. Imports are read
from the source (ast), at the top of a module and inside functions alike: a lazy import is an import.

LAYERS below is the one table of which module belongs where; a new module must be added to it (the test names
any that is not).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bn_lenet"

LAYERS = [  # lowest first; a module may import its own layer and the ones above it in this list
    ("shared leaves", ["errors", "published"]),  # error types + run_main; the book's figures every report cites
    ("the network", ["batchnorm", "sync_batchnorm", "pool", "model", "options"]),
    ("one run", ["config", "data", "step", "graph_step", "train", "files", "provenance", "runs", "distributed",
                 "launch", "tb_log", "plots", "process"]),
    ("many runs", ["stats", "answers_common", "answer_distributed", "answer_gradients", "answer_lr",
                   "answer_test_stats", "answers_affine", "answers_batch", "answers_variants", "study_report",
                   "sweep_answers", "sweep_spec", "sweep_report", "sweep_exec", "sweep_ray", "sweep_index", "sweep"]),
    ("anchors", ["tutorial", "benchmark", "benchmark_report"]),
    ("entry points", ["cli", "__main__", "api", "live_plot", "__init__"]),
]


def layer_of(layers=LAYERS) -> dict:
    return {module: (rank, name) for rank, (name, modules) in enumerate(layers) for module in modules}


def imports(path: Path, modules: set) -> dict:
    """{imported module: first line} of every package module ``path`` imports, anywhere in the file:
    ``from .x import y``, ``from . import x``, ``from bn_lenet.x import y``, ``from bn_lenet import x``,
    ``import bn_lenet.x``."""
    found = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.ImportFrom):
            relative = node.level > 0
            absolute = (node.module or "").split(".")[0] == PACKAGE.name
            if relative or absolute:
                rest = (node.module or "").split(".")[0 if relative else 1:]
                names = rest[:1] if rest and rest[0] else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith(PACKAGE.name + ".")]
        for name in names:
            if name in modules:
                found.setdefault(name, node.lineno)
    return found


def import_graph(package: Path = PACKAGE) -> dict:
    modules = {p.stem for p in package.glob("*.py")}
    return {m: imports(package / f"{m}.py", modules) for m in sorted(modules)}


def unassigned(graph: dict, layers=LAYERS) -> list:
    return sorted(set(graph) - set(layer_of(layers)))


def upward_imports(graph: dict, layers=LAYERS) -> list:
    """Every import of a module in a higher layer, as a readable line."""
    rank = layer_of(layers)
    return [f"{m}.py line {line} imports {dep} ({rank[dep][1]}), above its own layer ({rank[m][1]})"
            for m, deps in graph.items() for dep, line in deps.items()
            if m in rank and dep in rank and rank[dep][0] > rank[m][0]]


def cycles(graph: dict) -> list:
    """One loop of imports per strongly connected group of modules, e.g. ["a", "b", "a"]."""
    found, state = [], {}  # state: 1 on the current path, 2 done

    def visit(m, path):
        state[m] = 1
        for dep in graph.get(m, {}):
            if state.get(dep) == 1:
                found.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    return found


# --- the package ---------------------------------------------------------------------------------------

def test_every_module_is_in_a_layer():
    graph = import_graph()
    assert len(graph) > 30  # the reader found the package
    missing = unassigned(graph)
    assert not missing, f"modules in no layer: {', '.join(missing)}; add them to LAYERS in tests/test_layers.py"
    assert sorted(set(layer_of()) - set(graph)) == [], "LAYERS names modules that no longer exist"
    assert sum(len(modules) for _, modules in LAYERS) == len(layer_of()), "a module is in two layers"


def test_no_module_imports_a_higher_layer():
    up = upward_imports(import_graph())
    assert not up, "move the shared piece down a layer instead:\n" + "\n".join(up)


def test_no_import_cycles():
    loops = cycles(import_graph())
    assert not loops, "import cycles:\n" + "\n".join(" -> ".join(c) for c in loops)


# --- the checks can fail ---------------------------------------------------------------------------------

def test_the_checks_catch_an_upward_import_a_cycle_and_a_new_module(tmp_path):
    package = tmp_path / PACKAGE.name
    package.mkdir()
    files = {
        "low.py": "import torch\n\ndef f():\n    from .high import g  # lazy, still an import\n",
        "high.py": "from . import low\nfrom bn_lenet.mid import h\n",
        "mid.py": "import bn_lenet.high\n",
        "new.py": "",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    layers = [("bottom", ["low"]), ("top", ["mid", "high"])]
    graph = import_graph(package)
    assert graph["low"] == {"high": 4} and graph["high"] == {"low": 1, "mid": 2} and graph["mid"] == {"high": 1}
    assert unassigned(graph, layers) == ["new"]
    assert upward_imports(graph, layers) == ["low.py line 4 imports high (top), above its own layer (bottom)"]
    loops = cycles(graph)
    assert {tuple(sorted(set(c))) for c in loops} >= {("high", "low"), ("high", "mid")}
    assert all(c[0] == c[-1] for c in loops)
