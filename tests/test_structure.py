"""The package's shape: no import cycles (function-local imports included), stage files short enough to read.

The import graph is built from the source with `ast`: every `import` / `from ... import` anywhere in a
module, at the top or inside a function, is an edge to the minimask module it names. A cycle hidden in
a function-local import is still a cycle (issue 13), so it counts.
"""

import ast
from pathlib import Path

import minimask

PACKAGE = Path(minimask.__file__).parent
# the stage files chapters 01-11 read (STYLE.md's table; training, data and CLIs are chapters 12-13)
CHAPTER_FILES = [
    "backend.py", "tape.py", "conv.py", "layers.py", "norms.py", "pooling.py", "shape_ops.py", "losses.py",
    "resnet.py", "fpn.py", "boxes.py", "anchors.py", "matching.py", "rpn.py", "nms.py", "roi_pool.py",
    "roi_align.py", "poolers.py", "kernels.py", "box_head.py", "mask_head.py", "model.py", "config.py",
    "transform.py", "module.py", "init.py", "roi_heads.py", "utils.py", "cuda_cpu.py",
]
MAX_LINES = 330


def _module_name(path):
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph():
    """{module: set of minimask modules it imports}, from every import statement in its source."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                # `from . import tape` imports the module minimask.tape; `from .tape import op` the same
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def find_cycle(graph):
    """A list of modules forming a cycle, or None."""
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        state[n] = "done"
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    # the package __init__ imports everything (its public names): edges INTO it would be cycles too
    assert len(graph) > 30
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_stage_files_of_chapters_01_to_11_are_short():
    lengths = {f: len((PACKAGE / f).read_text().splitlines()) for f in CHAPTER_FILES}
    too_long = {f: n for f, n in lengths.items() if n > MAX_LINES}
    assert not too_long, f"stage files over {MAX_LINES} lines: {too_long}"


def reachable(graph, start):
    """Every module `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for m in graph[todo.pop()]:
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


# Going down the package from train.py a reader meets data, then the model, the RPN, the RoI heads and
# the losses (issue 13, item 5): a module never imports, even indirectly, one above it in this list.
READING_ORDER = ["train", "builders", "data", "model", "rpn", "roi_heads", "losses"]


def test_reading_order_has_no_arrow_pointing_back_up():
    graph = import_graph()
    for i, upper in enumerate(READING_ORDER):
        for lower in READING_ORDER[i + 1:]:
            assert f"minimask.{upper}" not in reachable(graph, f"minimask.{lower}"), f"{lower} imports {upper}"


def test_reachable_follows_indirect_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": set()}
    assert reachable(graph, "a") == {"b", "c"} and reachable(graph, "c") == set()


def test_the_clis_import_from_lower_modules_never_from_each_other():
    graph = import_graph()
    clis = {"minimask.train", "minimask.evaluate", "minimask.predict"}
    for cli in clis:
        assert not reachable(graph, cli) & (clis - {cli}), f"{cli} imports {reachable(graph, cli) & clis}"
