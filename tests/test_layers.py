"""The package reads in layers (README "Reading the code"): a module imports only modules of
its own layer or a lower one, and no two modules import each other, directly or around a loop. Imports are read
from the source (ast), at the top of a module and inside functions alike: a lazy import is an import.

A layer is a subpackage of bn_lenet (every module in it belongs to it), except the lowest and the highest,
whose modules sit at the top of the package and are named one by one. LAYERS below is the one table; a new
subpackage, or a new module at the top, must be added to it (the test names any that is not).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bn_lenet"

LAYERS = [  # lowest first; a module may import its own layer and the ones above it in this list
    ("shared leaves", ["errors", "published"]),  # error types + run_main; the book's figures every report cites
    ("the network", "network"),                   # a subpackage: bn_lenet/network/
    ("one run", "training"),
    ("many runs", "sweeps"),
    ("anchors", "anchors"),
    ("entry points", ["cli", "__main__", "api", "live_plot", "__init__"]),
]


def module_names(package: Path = PACKAGE) -> list:
    """Every module of the package, named by its path from the package: "errors", "network.batchnorm", ...
    (a subpackage's own __init__ is "network.__init__")."""
    return sorted(".".join(p.relative_to(package).with_suffix("").parts) for p in package.rglob("*.py"))


def layer_of(modules, layers=LAYERS) -> dict:
    """{module: (rank, layer name)} for each module that has a layer."""
    found = {}
    for module in modules:
        subpackage, _, name = module.rpartition(".")
        for rank, (layer, members) in enumerate(layers):
            if (members == subpackage) if isinstance(members, str) else (not subpackage and name in members):
                found[module] = (rank, layer)
    return found


def imports(path: Path, here: str, modules: set) -> dict:
    """{imported module: first line} of every package module the file at ``path`` (in subpackage ``here``,
    "" at the top) imports, anywhere in the file: ``from .x import y``, ``from ..x.y import z``,
    ``from . import x``, ``from .x import y`` where y is a module, ``from bn_lenet.x.y import z``,
    ``from bn_lenet import x``, ``import bn_lenet.x.y``."""
    found = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level > 0:
                parts = here.split(".") if here else []
                base = parts[:len(parts) - (node.level - 1)]
            elif (node.module or "").split(".")[0] == PACKAGE.name:
                base = []
            else:
                continue
            rest = node.module.split(".")[1 if node.level == 0 else 0:] if node.module else []
            target = ".".join(base + rest)
            if target in modules:
                targets = [target]
            else:  # from a package: the names that are modules of it
                targets = [f"{target}.{a.name}" if target else a.name for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".", 1)[1] for a in node.names if a.name.startswith(PACKAGE.name + ".")]
        for target in targets:
            if target in modules:
                found.setdefault(target, node.lineno)
    return found


def import_graph(package: Path = PACKAGE) -> dict:
    modules = module_names(package)
    return {m: imports(package.joinpath(*m.split(".")).with_suffix(".py"), m.rpartition(".")[0], set(modules))
            for m in modules}


def unassigned(graph: dict, layers=LAYERS) -> list:
    return sorted(set(graph) - set(layer_of(graph, layers)))


def upward_imports(graph: dict, layers=LAYERS) -> list:
    """Every import of a module in a higher layer, as a readable line."""
    rank = layer_of(graph, layers)
    return [f"{m} line {line} imports {dep} ({rank[dep][1]}), above its own layer ({rank[m][1]})"
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
    assert len(graph) > 30 and "network.batchnorm" in graph  # the reader found the package and its subpackages
    missing = unassigned(graph)
    assert not missing, f"modules in no layer: {', '.join(missing)}; move them into a layer's subpackage, or add " \
                        f"them to LAYERS in tests/test_layers.py"
    named = [m for _, members in LAYERS if not isinstance(members, str) for m in members]
    subpackages = [members for _, members in LAYERS if isinstance(members, str)]
    assert sorted(set(named) - set(graph)) == [], "LAYERS names modules that no longer exist"
    assert sorted(set(subpackages) - {m.rpartition(".")[0] for m in graph}) == [], \
        "LAYERS names subpackages that no longer exist"
    assert len(named) == len(set(named)) and len(subpackages) == len(set(subpackages)), "a module is in two layers"


def test_no_module_imports_a_higher_layer():
    up = upward_imports(import_graph())
    assert not up, "move the shared piece down a layer instead:\n" + "\n".join(up)


def test_no_import_cycles():
    loops = cycles(import_graph())
    assert not loops, "import cycles:\n" + "\n".join(" -> ".join(c) for c in loops)


# --- the checks can fail ---------------------------------------------------------------------------------

def test_the_checks_catch_an_upward_import_a_cycle_and_a_module_with_no_layer(tmp_path):
    package = tmp_path / PACKAGE.name
    files = {
        "leaf.py": "",
        "low/__init__.py": "",
        "low/a.py": "import torch\nfrom ..leaf import x\n\ndef f():\n    from ..high.b import g  # lazy, still an import\n",
        "high/__init__.py": "",
        "high/b.py": "from ..low import a\nfrom bn_lenet.high.c import h\n",
        "high/c.py": "import bn_lenet.high.b\nfrom . import b\n",
        "new.py": "from .low.a import f\n",   # a module at the top that LAYERS does not name
        "other/__init__.py": "",            # a subpackage that LAYERS does not name
        "other/d.py": "from bn_lenet import leaf\n",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    layers = [("bottom", ["leaf"]), ("low", "low"), ("high", "high")]
    graph = import_graph(package)
    assert graph["low.a"] == {"leaf": 2, "high.b": 5} and graph["high.b"] == {"low.a": 1, "high.c": 2}
    assert graph["high.c"] == {"high.b": 1} and graph["new"] == {"low.a": 1} and graph["other.d"] == {"leaf": 1}
    assert unassigned(graph, layers) == ["new", "other.__init__", "other.d"]
    assert upward_imports(graph, layers) == ["low.a line 5 imports high.b (high), above its own layer (low)"]
    loops = cycles(graph)
    assert {tuple(sorted(set(c))) for c in loops} >= {("high.b", "low.a"), ("high.b", "high.c")}
    assert all(c[0] == c[-1] for c in loops)
