"""The house layout (issue 7): modules import alone, the import graph keeps its shape, the wheel installs
``lmscope`` only, and the CLI starts without torch.

The import graph is read statically (``ast``) from the package sources. An import is *runtime* when it
runs as its module is imported: at module or class level, not inside a function and not under
``if TYPE_CHECKING:``. ``from pkg import name`` where ``pkg`` exports ``name`` lazily (PEP 562, the
packages' ``_LAZY`` tables) runs the module that defines ``name``, so the edge goes there too.

Rules: no cycle among runtime imports; the core (``lmscope.interventions``) never imports
``lmscope.lens`` or ``lmscope.probes``, and ``lmscope.lens`` never imports ``lmscope.probes`` (at any
level: functions and ``TYPE_CHECKING`` blocks included), except ``lmscope.lens.serve``, the ``lmscope serve``
application, whose workbench views call the methods; a method under ``lmscope.probes`` never takes
a sibling method's private (``_name``) names or modules, nor a module of ``lmscope.interventions.backends``
another one's private names (what the backends share lives, public, in ``backends.session``); every
``lmscope.*`` import names a module that exists; two modules of one package never import each other when
one of the two imports is deferred (inside a function: a cycle the deferral only hides).

Sizes (the house standard): no file under ``interventions/``, ``lens/`` or ``probes/`` is over 400 lines, and
no function over 60 lines unless a ``# long: <reason>`` comment on its ``def`` line (or the line above it, or
above its decorators) says why.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP = "lmscope"
FOLDERS = ("interventions", "lens", "probes")
CORE, LENS, PROBES = f"{TOP}.interventions", f"{TOP}.lens", f"{TOP}.probes"
SERVE = f"{LENS}.serve"  # the application on top of the lens and the methods
BACKENDS = f"{CORE}.backends."


# -- the static import graph ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module, absolute
    names: tuple[str, ...]  # names taken by ``from target import ...`` (empty for ``import target``)
    runtime: bool  # runs when ``source`` is imported
    line: int
    deferred: bool = False  # inside a function (runs when it is called); False for runtime and TYPE_CHECKING imports

    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass
class Graph:
    modules: dict[str, Path]  # dotted name -> source file
    imports: list[Import] = field(default_factory=list)
    lazy: dict[str, dict[str, str]] = field(default_factory=dict)  # package -> {name: absolute module}

    def resolve(self, imp: Import) -> list[str]:
        """Every module of ours that ``imp`` runs: the target, submodules taken by name, lazy exports."""
        out = [imp.target]
        for name in imp.names:
            out += self._name_modules(imp.target, name, set())
        return out

    def _name_modules(self, package: str, name: str, seen: set[str]) -> list[str]:
        if f"{package}.{name}" in self.modules:
            return [f"{package}.{name}"]
        module = self.lazy.get(package, {}).get(name)
        if module is None or module in seen:
            return []
        seen.add(module)
        return [module, *self._name_modules(module, name, seen)]

    def edges(self) -> dict[str, list[tuple[str, Import]]]:
        """Runtime edges between our modules: source -> [(target, import)]."""
        out: dict[str, list[tuple[str, Import]]] = {m: [] for m in self.modules}
        for imp in self.imports:
            if imp.runtime:
                out[imp.source] += [(t, imp) for t in self.resolve(imp) if t in self.modules and t != imp.source]
        return out


def package_modules(root: Path, top: str = TOP, folders: tuple[str, ...] = FOLDERS) -> dict[str, Path]:
    """Every module of the package whose root is ``root`` (its ``__init__.py`` is ``top``)."""
    mods = {top: root / "__init__.py"}
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            mods[".".join((top, *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def module_imports(module: str, path: Path) -> list[Import]:
    """Every import in one module, with whether it runs at import time."""
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, runtime: bool, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False, runtime or deferred)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), False, False)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), runtime, deferred)
            elif isinstance(child, ast.Import):
                found.extend(Import(module, a.name, (), runtime, child.lineno, deferred) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                target = _absolute(module, is_package, child.level, child.module)
                names = tuple(a.name for a in child.names)
                found.append(Import(module, target, names, runtime, child.lineno, deferred))
            elif (isinstance(child, ast.Call) and child.args and isinstance(child.args[0], ast.Constant)
                  and isinstance(child.args[0].value, str)
                  and ((isinstance(child.func, ast.Attribute) and child.func.attr == "import_module")
                       or (isinstance(child.func, ast.Name) and child.func.id in ("import_module", "__import__")))):
                found.append(Import(module, child.args[0].value, (), runtime, child.lineno, deferred))
                visit(child, runtime, deferred)
            else:
                visit(child, runtime, deferred)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), True, False)
    return found


def build_graph(root: Path, lazy: dict[str, dict[str, str]] | None = None, top: str = TOP,
                folders: tuple[str, ...] = FOLDERS) -> Graph:
    modules = package_modules(root, top, folders)
    graph = Graph(modules, lazy=lazy or {})
    for name, path in modules.items():
        graph.imports += module_imports(name, path)
    return graph


def lazy_tables(modules: dict[str, Path]) -> dict[str, dict[str, str]]:
    """The ``_LAZY`` export table of each of our packages, with absolute module names.

    Importing a package is cheap (the tables are what keeps it cheap), so the real tables are read.
    """
    out = {}
    for name, path in modules.items():
        if path.name == "__init__.py":
            table = getattr(importlib.import_module(name), "_LAZY", {})
            out[name] = {k: importlib.util.resolve_name(v, name) for k, v in table.items()}
    return out


def find_cycles(graph: Graph) -> list[str]:
    """Each runtime import cycle once, as ``a:line -> b:line -> a``."""
    edges = graph.edges()
    cycles: list[str] = []
    seen: set[frozenset[str]] = set()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[tuple[str, Import | None]] = []

    def dfs(node: str) -> None:
        state[node] = 1
        for target, imp in edges[node]:
            stack.append((node, imp))
            if state.get(target) == 1:
                start = next(i for i, (n, _) in enumerate(stack) if n == target)
                loop = stack[start:]
                key = frozenset(n for n, _ in loop)
                if key not in seen:
                    seen.add(key)
                    cycles.append(" -> ".join(i.where() for _, i in loop if i) + f" -> {target}")
            elif target not in state:
                dfs(target)
            stack.pop()
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            dfs(module)
    return cycles


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def violations(graph: Graph) -> list[str]:
    """Imports at any level that break the layering rules, and imports of modules that do not exist."""
    out = []
    for imp in graph.imports:
        src = imp.source
        targets = graph.resolve(imp)
        if imp.target == TOP or imp.target.startswith(f"{TOP}."):
            missing = [t for t in targets[:1] if t not in graph.modules]
            out += [f"{imp.where()} imports {t}, which does not exist" for t in missing]
        for target in targets:
            if src.startswith(CORE) and target.startswith((LENS, PROBES)):
                out.append(f"{imp.where()}: the core imports {target}")
            if src.startswith(LENS) and not src.startswith(SERVE) and target.startswith(PROBES):
                out.append(f"{imp.where()}: the lens package imports {target}")
        if src.startswith(f"{PROBES}.") and imp.target.startswith(f"{PROBES}."):
            mine, theirs = src.split(".")[2], imp.target.split(".")[2]
            private = [p for p in imp.target.split(".")[3:] if _private(p)] + [n for n in imp.names if _private(n)]
            if mine != theirs and private:
                out.append(f"{imp.where()}: method {mine!r} takes private {', '.join(private)} from {imp.target}")
        if src.startswith(BACKENDS) and imp.target.startswith(BACKENDS) and imp.target != src:
            private = [n for n in imp.names if _private(n)]
            if private:
                out.append(f"{imp.where()}: {src} takes private {', '.join(private)} from {imp.target}")
    return out


def _sibling(a: str, b: str, graph: Graph) -> bool:
    """Whether ``a`` and ``b`` are two modules of one package (its ``__init__`` aside)."""
    def package(m: str) -> str | None:
        return None if graph.modules[m].name == "__init__.py" else m.rpartition(".")[0]
    return package(a) is not None and package(a) == package(b)


def deferred_cycles(graph: Graph) -> list[str]:
    """Each pair of modules of one package that import each other, at least one way inside a function, once.

    A runtime cycle both ways is :func:`find_cycles`' business; imports under ``TYPE_CHECKING`` never run and
    do not count. Each entry names the pair and every import between them, e.g.
    ``a <-> b: a:12 (deferred), b:3``.
    """
    links: dict[tuple[str, str], list[Import]] = {}
    for imp in graph.imports:
        if imp.runtime or imp.deferred:
            for target in graph.resolve(imp):
                if target != imp.source and target in graph.modules and _sibling(imp.source, target, graph):
                    links.setdefault((imp.source, target), []).append(imp)
    out = []
    for (a, b), there in sorted(links.items()):
        back = links.get((b, a))
        if a < b and back and any(i.deferred for i in there + back):
            where = ", ".join(i.where() + (" (deferred)" if i.deferred else "") for i in there + back)
            out.append(f"{a} <-> {b}: {where}")
    return out


MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60
#: The comment that lets a function be longer: ``# long: <reason>`` (a reason is required).
_WHY_LONG = re.compile(r"#\s*long:\s*\S")


def _explained(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether a ``# long: <reason>`` comment sits on the ``def`` line, the line above it or above its decorators."""
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    candidates = {node.lineno - 1, node.lineno - 2, first - 2}
    return any(0 <= i < len(lines) and _WHY_LONG.search(lines[i]) for i in candidates)


def oversized(root: Path, folders: tuple[str, ...] = FOLDERS) -> list[str]:
    """Each package file over :data:`MAX_FILE_LINES` lines and each unexplained function over
    :data:`MAX_FUNCTION_LINES` lines (``def`` line to last line, docstring included)."""
    out = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            text = path.read_text(encoding="utf-8")
            lines = text.splitlines()
            if len(lines) > MAX_FILE_LINES:
                out.append(f"{rel}: {len(lines)} lines (at most {MAX_FILE_LINES})")
            long = []
            for node in ast.walk(ast.parse(text, rel)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    if length > MAX_FUNCTION_LINES and not _explained(lines, node):
                        long.append((node.lineno, f"{rel}:{node.lineno} {node.name}(): {length} lines "
                                                  f"(at most {MAX_FUNCTION_LINES}, or say why: # long: <reason>)"))
            out += [text for _, text in sorted(long)]
    return out


@pytest.fixture(scope="module")
def graph() -> Graph:
    modules = package_modules(ROOT)
    return build_graph(ROOT, lazy_tables(modules))


def test_graph_sees_every_module_and_import(graph: Graph) -> None:
    assert {f"{CORE}.model", f"{CORE}.backends.hooks", f"{LENS}.training.fit", f"{PROBES}.steering.vectors",
            TOP} <= set(graph.modules)
    assert not [m for m in graph.modules if ".tests" in m or ".benchmarks" in m]
    # a lazy re-export is followed to the module that defines the name
    assert f"{CORE}.model" in graph.resolve(Import(TOP, TOP, ("HookedModel",), True, 0))
    runtime = {(i.source, i.target) for i in graph.imports if i.runtime}
    assert (f"{CORE}.model", f"{CORE}.backends.hooks") in runtime


def test_no_runtime_import_cycle(graph: Graph) -> None:
    assert find_cycles(graph) == []


def test_layering_rules_hold(graph: Graph) -> None:
    assert violations(graph) == []


def test_no_two_way_deferred_import_in_a_package(graph: Graph) -> None:
    found = deferred_cycles(graph)
    assert not found, "modules of one package that import each other (one way deferred):\n" + "\n".join(found)


def test_files_and_functions_stay_small() -> None:
    found = oversized(ROOT)
    assert not found, f"{len(found)} over the size limits:\n" + "\n".join(found)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_catches_what_it_should(tmp_path: Path) -> None:
    """The rules fire on a small package that breaks each of them (and stay quiet on what is allowed)."""
    over = MAX_FUNCTION_LINES + 1

    def func(name: str, n: int, head: str = "", comment: str = "") -> str:
        return f"{head}def {name}():{comment}\n" + "    x = 1\n" * (n - 1)
    fns = "".join([
        func("over", over), func("at_limit", MAX_FUNCTION_LINES),
        func("too_far", over, head="x = 1  # long: two lines above the def is too far\n\n"),
        func("said_on_def_line", over, comment="  # long: a reason"),
        func("said_above", over, head="# long: one table, read top to bottom\n"),
        func("said_above_decorator", over, head="# long: a reason\n@staticmethod\n"),
        func("no_reason", over, head="# long:\n"),
    ]) + "class C:\n    def method(self):\n" + "        x = 1\n" * MAX_FUNCTION_LINES
    _write(tmp_path, {
        "__init__.py": "",
        "interventions/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n",
        "interventions/a.py": "from .b import B\nclass A: ...\n",
        "interventions/b.py": "import lmscope.interventions.c\nclass B: ...\n",
        "interventions/c.py": "from . import a\n",  # a -> b -> c -> a at import time
        "interventions/d.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lmscope.lens import x\n"
                               "def f():\n    import lmscope.probes.m.v\n"
                               "from lmscope.interventions import A\n"),  # runs a lazily: no cycle through d
        "interventions/e.py": "def g():\n    from .d import f\n    import importlib\n"
                              "    importlib.import_module('lmscope.lens.x')\n",
        "interventions/backends/__init__.py": "", "interventions/backends/two.py": "_shared = fine = 1\n",
        "interventions/backends/one.py": "from .two import _shared, fine\n",
        "lens/__init__.py": "", "lens/x.py": "from ..probes.m import v\nfrom lmscope.interventions.nope import z\n",
        "probes/__init__.py": "", "probes/m/__init__.py": "", "probes/n/__init__.py": "",
        "probes/m/v.py": "from lmscope.probes.n.w import _secret, public\nfrom ..n._impl import thing\n",
        "probes/n/w.py": "from .v2 import _own\n_secret = public = 1\ndef k():\n    from ..m import v\n",
        "probes/n/v2.py": "_own = 1\n", "probes/n/_impl.py": "thing = 1\n",
        # two-way imports inside one package: deferred one way (a/b) or both ways (c/d) are caught; a deferred import
        # answered only under TYPE_CHECKING (e/f) or from another package (n.w/m.v above) is not
        "probes/p/__init__.py": "", "probes/p/a.py": "A = 1\ndef f():\n    from .b import B\n",
        "probes/p/b.py": "from .a import A\nB = 1\n",
        "probes/p/c.py": "def f():\n    from . import d\n",
        "probes/p/d.py": "def g():\n    from lmscope.probes.p.c import f\n",
        "probes/p/e.py": "def h():\n    from .f import x\n",
        "probes/p/f.py": "from typing import TYPE_CHECKING\nx = 1\nif TYPE_CHECKING:\n    from .e import h\n",
        # sizes: files and functions one line over the limits (with and without a reason) and at them
        "lens/big.py": "x = 1\n" * (MAX_FILE_LINES + 1), "lens/ok.py": "x = 1\n" * MAX_FILE_LINES,
        "lens/fns.py": fns,
    })
    g = build_graph(tmp_path, lazy={f"{TOP}.interventions": {"A": f"{TOP}.interventions.a"}})
    cycles = find_cycles(g)
    assert len(cycles) == 1 and "interventions.a:1" in cycles[0] and "interventions.c:1" in cycles[0], cycles
    found = violations(g)
    expected = [
        "interventions.d:3: the core imports lmscope.lens",  # under TYPE_CHECKING
        "interventions.d:5: the core imports lmscope.probes.m.v",  # inside a function
        "interventions.e:4: the core imports lmscope.lens.x",  # importlib.import_module
        "lens.x:1: the lens package imports lmscope.probes.m",
        "lens.x:2 imports lmscope.interventions.nope, which does not exist",
        "probes.m.v:1: method 'm' takes private _secret",
        "probes.m.v:2: method 'm' takes private _impl",
        "interventions.backends.one:1: lmscope.interventions.backends.one takes private _shared from",
    ]
    for text in expected:
        assert any(text in v for v in found), (text, found)
    assert len(found) == len(expected) + 2, found  # d:3 also reaches lmscope.lens.x, lens.x:1 lmscope.probes.m.v
    assert not [v for v in found if v.startswith(f"{TOP}.probes.n.")]  # a method's own private names are its own
    pairs = deferred_cycles(g)
    assert len(pairs) == 2, pairs
    assert pairs[0].startswith("lmscope.probes.p.a <-> lmscope.probes.p.b: ") and "probes.p.a:3 (deferred)" in pairs[0]
    assert "probes.p.b:1" in pairs[0] and "probes.p.b:1 (deferred)" not in pairs[0], pairs
    assert pairs[1].startswith("lmscope.probes.p.c <-> lmscope.probes.p.d: "), pairs
    sizes = oversized(tmp_path)
    lines = fns.splitlines()

    def at(name: str) -> str:
        line = next(i + 1 for i, text in enumerate(lines) if text.lstrip().startswith(f"def {name}("))
        return f"lens/fns.py:{line} {name}(): {over} lines"
    assert [s.split(" (")[0] for s in sizes] == [
        f"lens/big.py: {MAX_FILE_LINES + 1} lines", f"lens/fns.py: {len(lines)} lines",
        at("over"), at("too_far"), at("no_reason"), at("method")], sizes


# -- every module imports alone -------------------------------------------------------------------------
_FORK_IMPORTS = r"""
import importlib, json, os, sys, traceback
plan = json.loads(sys.stdin.read())
for target, names in plan["third_party"]:  # what our modules import, so that each child is quick
    try:
        mod = importlib.import_module(target)
        for n in names:
            getattr(mod, n, None)
    except Exception:
        pass
assert not [m for m in sys.modules if m == "lmscope" or m.startswith("lmscope.")], "parent imported lmscope"
failed = []
for name in plan["modules"]:
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            assert not [m for m in sys.modules if m == "lmscope" or m.startswith("lmscope.")]
            mod = importlib.import_module(name)
            for export in getattr(mod, "__all__", ()) if hasattr(mod, "_LAZY") else ():
                getattr(mod, export)  # every lazy export resolves
            code = 0
        except BaseException:
            print(f"--- importing {name} alone:", file=sys.stderr)
            traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print(json.dumps({"failed": failed, "count": len(plan["modules"])}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_imports_alone(graph: Graph) -> None:
    """Each module is imported first, in a process where no lmscope module has been imported yet.

    One fresh interpreter imports the third-party modules lmscope imports at module level (torch,
    transformers... so that this takes seconds, not minutes), then forks once per lmscope module;
    each child starts without any ``lmscope`` module and imports its one module (plus, for packages,
    every lazy export). Order-dependent imports and import-time cycles fail here.
    """
    third = sorted({(i.target, i.names) for i in graph.imports if i.runtime and not i.target.startswith(TOP)})
    plan = {"modules": sorted(graph.modules), "third_party": third}
    proc = subprocess.run([sys.executable, "-c", _FORK_IMPORTS], input=json.dumps(plan), capture_output=True,
                          text=True, timeout=300, cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"failed": [], "count": len(graph.modules)}, proc.stderr[-6000:]


_CLI_HELP = r"""
import sys
from lmscope.interventions import cli
parser = cli.build_parser()
names = sorted(cli.command_registrars())
for argv in [["--help"]] + [[n, "--help"] for n in names]:
    try:
        parser.parse_args(argv)
    except SystemExit as exit_:
        assert exit_.code == 0, argv
heavy = sorted(m for m in ("torch", "transformers", "numpy", "matplotlib", "safetensors") if m in sys.modules)
print(",".join(names) + "|" + ",".join(heavy))
"""


def test_cli_help_imports_nothing_heavy() -> None:
    """``lmscope --help`` and every ``lmscope <command> --help`` in a fresh interpreter: no torch, numpy..."""
    proc = subprocess.run([sys.executable, "-c", _CLI_HELP], capture_output=True, text=True, timeout=120,
                          cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr[-3000:]
    commands, heavy = proc.stdout.strip().splitlines()[-1].split("|")
    assert {"decode", "steer", "train-lens", "eval-lens"} <= set(commands.split(","))
    assert heavy == ""


# -- the wheel ------------------------------------------------------------------------------------------
def _source_copy(dest: Path) -> Path:
    """The working tree as a fresh clone would have it (tracked and new files, nothing ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_wheel_installs_lmscope_only(tmp_path: Path) -> None:
    src = _source_copy(tmp_path / "src")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("lmscope-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {TOP}, top
    # every source module (so every folder with an __init__.py) of the three packages, and nothing else
    sources = {f"{TOP}/{p.relative_to(ROOT).as_posix()}" for f in FOLDERS for p in (ROOT / f).rglob("*.py")}
    assert {n for n in names if n.endswith(".py")} == sources | {f"{TOP}/__init__.py"}
    for folder in {p.parent for f in FOLDERS for p in (ROOT / f).rglob("*.py")}:
        assert (folder / "__init__.py").is_file(), f"{folder} has modules but no __init__.py"
    assert f"{TOP}/py.typed" in names
    data = {f"{TOP}/{p.relative_to(ROOT).as_posix()}" for p in (ROOT / "probes" / "steering" / "data").glob("*")}
    assert data and data <= names, data - names
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    modules = {line.split("=", 1)[1].strip().split(":")[0] for line in entry_points.splitlines() if "=" in line}
    assert modules and all(f"{m.replace('.', '/')}.py" in names for m in modules), modules


# -- the README's examples ------------------------------------------------------------------------------
def readme_python(path: Path = ROOT / "README.md") -> list[str]:
    """The README's ```python blocks, in order."""
    blocks, current = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if current is None and line.strip() == "```python":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    assert current is None, "an unclosed ```python block"
    return blocks


@pytest.mark.slow
def test_readme_examples_run_as_written(tmp_path: Path, smollm: object) -> None:  # smollm: skip without the model
    """Every Python block of the README, in order, in one fresh interpreter (they build on each other)."""
    blocks = readme_python()
    assert len(blocks) >= 3 and any("from lmscope import HookedModel" in b for b in blocks)
    script = "\n\n".join(f"# --- README block {i}\n{b}\nprint('README block {i} ok', flush=True)"
                         for i, b in enumerate(blocks))
    (tmp_path / "readme_examples.py").write_text(script)
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run([sys.executable, "readme_examples.py"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1500)  # ~40 s of CPU; generous for a shared machine
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert all(f"README block {i} ok" in proc.stdout for i in range(len(blocks)))


# -- the docs -------------------------------------------------------------------------------------------
DOCS = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]


def module_names(path: Path) -> set[str]:
    """Names a module defines at import time (functions, classes, assignments, imports; not TYPE_CHECKING)."""
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
            elif isinstance(node, ast.If) and not _is_type_checking(node.test):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return names


def _scripts() -> list[tuple[str, str]]:
    """(label, Python source) of every README/docs code block, benchmark script and notebook code cell."""
    out = [(f"{doc.relative_to(ROOT)}", block) for doc in DOCS for block in readme_python(doc)]
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        out.append((str(script.relative_to(ROOT)), script.read_text(encoding="utf-8")))
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        out += [(str(nb.relative_to(ROOT)), "".join(c["source"])) for c in cells if c["cell_type"] == "code"]
    return out


def test_docs_scripts_and_notebooks_import_what_exists(graph: Graph) -> None:
    """Every README/docs Python block, benchmark and notebook cell parses, and what it imports from lmscope exists."""
    bad = []
    for label, source in _scripts():
        source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(source, label)):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith(TOP):
                continue
            mod = node.module or ""
            if mod not in graph.modules:
                bad.append(f"{label}: no module {mod}")
                continue
            known = module_names(graph.modules[mod]) | set(graph.lazy.get(mod, {}))
            bad += [f"{label}: {mod} has no {a.name}" for a in node.names
                    if a.name not in known and f"{mod}.{a.name}" not in graph.modules]
    assert bad == []


def test_docs_links_resolve() -> None:
    import re

    bad = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if "://" not in target and not (doc.parent / target).exists():
                bad.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert bad == []


def test_every_error_class_is_documented(graph: Graph) -> None:
    """docs/errors.md has a section for every LmscopeError subclass in the package."""
    bases: dict[str, list[str]] = {}
    for path in graph.modules.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]

    def is_error(name: str) -> bool:
        return name == "LmscopeError" or any(is_error(b) for b in bases.get(name, []))

    errors = sorted(n for n in bases if is_error(n))
    assert {"LmscopeError", "InputError", "SiteError", "CliError"} <= set(errors)
    text = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    assert [e for e in errors if f"\n## {e}\n" not in text] == []
