"""The package's layers, read from the source (issue 26 item 2): every ``import`` of every module of
``fairbench`` is parsed with `ast`, at the top of the module and inside functions alike, into the
import graph of ``fairbench.*``; imports under ``if TYPE_CHECKING:`` are left out (they never run).

- no import cycles, not even through an import inside a function;
- the report and the result schema never import torch, nor training code, nor the methods, through
  any chain of fairbench modules: a leaderboard renders from JSON files alone;
- nothing imports the CLI (it is the top: it passes what the layers below need down to them);
- the evaluation never imports the training;
- the rooms (subpackages) and the few top-level modules form layers: a module imports only from its
  own room or from a lower layer (`LAYERS`, drawn in docs/architecture.md); a room's ``__init__``
  imports nothing, so importing a torch-free module of a room loads nothing else.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fairbench

PACKAGE = Path(fairbench.__file__).parent
TRAINING = ("fairbench.train", "fairbench.methods", "fairbench.tune")
EVALUATION = ("fairbench.eval",)
RENDERING = ("fairbench.report", "fairbench.schema")

# Bottom to top; a room or top-level module imports only its own room and lower layers. Rooms on one
# layer never import each other. docs/architecture.md draws this.
LAYERS = (
    ("fairbench.errors", "fairbench._version"),
    ("fairbench.registry", "fairbench.files", "fairbench.distributed"),
    ("fairbench.specs",),
    ("fairbench.config",),
    ("fairbench.schema",),
    ("fairbench.runs", "fairbench.data", "fairbench.models"),
    ("fairbench.eval",),
    ("fairbench.methods", "fairbench.report"),
    ("fairbench.train",),
    ("fairbench.sweep",),
    ("fairbench.tune",),
    ("fairbench.api",),
    ("fairbench",),
    ("fairbench.cli",),
    ("fairbench.__main__",),
)
TOP_LEVEL = {"__init__", "__main__", "_version", "api", "cli", "config", "distributed", "errors", "files", "registry"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, whether it is a package's ``__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = _modules()


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree``, wherever it is (functions, classes, try blocks), except
    under ``if TYPE_CHECKING:``."""
    out: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return out


def _known(name: str) -> str | None:
    """The fairbench module ``name`` (a module or a name in one) is, or lies in."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in MODULES:
            return ".".join(parts[:i])
    return None


def imports_of(module: str) -> tuple[set[str], set[str]]:
    """(the fairbench modules, the other top-level packages) ``module`` imports."""
    path, is_package = MODULES[module]
    here = module if is_package else module.rpartition(".")[0]
    inside: set[str] = set()
    outside: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from fairbench import x`: module x where there is one, else a name of the package
            subs = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in MODULES]
            targets = subs + ([source] if len(subs) < len(node.names) else [])
        for target in targets:
            known = _known(target)
            if known is not None:
                inside.add(known)
            elif not target.startswith("fairbench"):
                outside.add(target.split(".")[0])
    inside.discard(module)
    return inside, outside


GRAPH = {m: imports_of(m) for m in MODULES}


def _reach(module: str) -> dict[str, list[str]]:
    """Every fairbench module ``module`` imports, directly or through others, with one chain to it."""
    chains = {module: [module]}
    todo = [module]
    while todo:
        current = todo.pop(0)
        for nxt in sorted(GRAPH[current][0]):
            if nxt not in chains:
                chains[nxt] = chains[current] + [nxt]
                todo.append(nxt)
    return chains


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a cycle's modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v][0]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_the_graph_reads_imports_inside_functions_and_skips_type_checking() -> None:
    """The reader itself: an import inside a function is an edge, one under TYPE_CHECKING is not;
    relative imports and ``from package import module`` resolve to the module."""
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
        "def f():\n    from fairbench.eval.threats import get_threat\n"
    )
    names = {n.module if isinstance(n, ast.ImportFrom) else n.names[0].name for n in _import_nodes(tree)}
    assert names == {"typing", "fairbench.eval.threats"}
    assert "fairbench.specs.datasets" in GRAPH["fairbench.schema.record"][0]  # imported inside a function
    assert "fairbench.methods" in GRAPH["fairbench.cli"][0]  # likewise
    assert "fairbench.schema.files" in GRAPH["fairbench.schema"][0]  # a package's own modules
    assert "torch" in GRAPH["fairbench.eval.threats"][1] and "torch" not in GRAPH["fairbench.specs.threats"][1]


def test_no_import_cycles() -> None:
    assert _cycles() == [], "import cycles (through imports at the top or inside functions)"


def test_report_and_schema_import_no_torch_training_or_methods() -> None:
    problems = []
    for module in (m for m in MODULES if _in(m, RENDERING)):
        for reached, chain in _reach(module).items():
            if _in(reached, TRAINING):
                problems.append(" -> ".join(chain))
            for package in {"torch", "torchvision", "pyautoattack"} & GRAPH[reached][1]:
                problems.append(" -> ".join(chain + [package]))
    assert problems == []


def test_nothing_imports_the_cli() -> None:
    assert (
        sorted(m for m, (inside, _) in GRAPH.items() if "fairbench.cli" in inside and m != "fairbench.__main__") == []
    )


def test_evaluation_never_imports_training() -> None:
    problems = [
        " -> ".join(chain)
        for module in MODULES
        if _in(module, EVALUATION)
        for reached, chain in _reach(module).items()
        if _in(reached, TRAINING)
    ]
    assert problems == []


def test_the_report_and_schema_load_without_torch() -> None:
    """What the graph says, checked by Python itself: rendering a leaderboard imports no torch."""
    code = (
        "import sys, fairbench.report.command, fairbench.schema, fairbench.specs.threats, "
        "fairbench.specs.datasets; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision', 'pyautoattack') or m.startswith(('fairbench.methods', 'fairbench.train'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _layer(module: str) -> tuple[int, str]:
    """(layer, room) of ``module``: the most specific entry of `LAYERS` it lies in."""
    found = [
        (len(room), level, room)
        for level, rooms in enumerate(LAYERS)
        for room in rooms
        if module == room or (room != "fairbench" and module.startswith(room + "."))
    ]
    assert found, f"{module} lies in no layer of LAYERS: add its room"
    _, level, room = max(found)
    return level, room


def _upward(graph: dict[str, tuple[set[str], set[str]]]) -> list[str]:
    """Every import in ``graph`` that does not point down the layers (nor stays in its room)."""
    problems = []
    for module, (inside, _) in sorted(graph.items()):
        level, room = _layer(module)
        for target in sorted(inside):
            target_level, target_room = _layer(target)
            if target_room != room and target_level >= level:
                problems.append(f"{module} (layer {level}) imports {target} (layer {target_level})")
    return problems


def test_every_import_points_down_the_layers() -> None:
    assert _upward(GRAPH) == []


def test_few_top_level_modules_and_rooms_whose_init_imports_nothing() -> None:
    top = {path.stem for path in PACKAGE.glob("*.py")}
    assert top == TOP_LEVEL, "a new top-level module: put it in a room (docs/architecture.md)"
    rooms = [p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]
    assert sorted(rooms) == sorted(
        r.split(".")[1] for layer in LAYERS for r in layer if r.count(".") == 1 and r.split(".")[1] not in TOP_LEVEL
    )
    # a room's __init__ that imports nothing keeps its torch-free modules torch-free; methods and
    # models hold their registries there, schema its torch-free public names
    quiet = ("specs", "data", "eval", "train", "runs", "sweep", "tune", "report")
    assert {room: sorted(GRAPH[f"fairbench.{room}"][0]) for room in quiet} == {room: [] for room in quiet}


def test_the_layer_check_finds_an_upward_import() -> None:
    """The check itself: the evaluator importing the trainer, or two rooms of one layer importing
    each other, are reported; an import inside a room is not."""
    graph = {
        "fairbench.eval.evaluator": ({"fairbench.train.trainer", "fairbench.eval.attacks"}, set()),
        "fairbench.data.datasets": ({"fairbench.runs.folder"}, set()),
        "fairbench.train.trainer": ({"fairbench.eval.evaluator"}, set()),
    }
    assert _upward(graph) == [
        "fairbench.data.datasets (layer 5) imports fairbench.runs.folder (layer 5)",
        "fairbench.eval.evaluator (layer 6) imports fairbench.train.trainer (layer 8)",
    ]
    assert _layer("fairbench") == (12, "fairbench") and _layer("fairbench.api") == (11, "fairbench.api")
