"""The layering of the package, checked on its import graph (grimp, through import-linter's contracts in setup.cfg):

- the network (model, stages, nn, ops, config, trace, detections, the image contract, matterport's family) imports
  nothing from io/, render/, study/, crosscheck/ or cli/; its arithmetic imports no oracle and no optional extra;
- nothing imports the CLI; weights_convert takes from minimaskrcnn only its config and version;
- no import cycle between modules, nor between the sub-packages of minimaskrcnn.

Imports inside functions count: grimp reads every import statement, wherever it stands.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("minimaskrcnn", "weights_convert")


def lint_imports(root: Path):
    """Run import-linter on the tree at `root` with its setup.cfg; (exit status, output)."""
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    p = subprocess.run([sys.executable, "-c", code, "--no-cache", str(root / "setup.cfg")], cwd=root,
                       env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                       timeout=300)
    return p.returncode, p.stdout + p.stderr


def test_contracts_are_kept():
    status, out = lint_imports(ROOT)
    assert status == 0 and "0 broken" in out, out


@pytest.mark.parametrize("module, upward", [
    ("minimaskrcnn/stages/fpn.py", "from minimaskrcnn.render import overlay"),
    ("minimaskrcnn/ops/nms.py", "import torch"),
    ("minimaskrcnn/io/files.py", "from minimaskrcnn.cli import options"),
])
def test_an_upward_import_breaks_a_contract(tmp_path, module, upward):
    """The contracts can fail: the same check on a copy of the tree with one upward import added."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.npz"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{upward}  # added by the test\n")
    status, out = lint_imports(tmp_path)
    assert status != 0 and "BROKEN" in out.upper(), out


def _strongly_connected(nodes, edges):
    """Tarjan's algorithm: the strongly connected components of a directed graph (iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(edges.get(root, ())))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(edges.get(w, ()))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.add(w)
                        if w == v:
                            break
                    out.append(component)
    return out


def _graph(level):
    """{node: importees}: modules (level=None), or collapsed to `minimaskrcnn.<sub-package or module>`."""
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)

    def node(m):
        if level is None:
            return m
        return ".".join(m.split(".")[:level])
    edges = {}
    for m in graph.modules:
        for imported in graph.find_modules_directly_imported_by(m):
            a, b = node(m), node(imported)
            if a != b:
                edges.setdefault(a, set()).add(b)
    return set(map(node, graph.modules)), edges


@pytest.mark.parametrize("level", [None, 2], ids=["modules", "sub-packages"])
def test_no_import_cycle(level):
    nodes, edges = _graph(level)
    cycles = [sorted(c) for c in _strongly_connected(sorted(nodes), edges) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_finder_finds_cycles():
    cycles = [c for c in _strongly_connected("abcd", {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) if len(c) > 1]
    assert cycles == [{"a", "b", "c"}]
