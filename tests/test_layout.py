"""The package's shape: no import cycles (function-local imports included), the model pure of tools and lessons."""

import ast
import subprocess
import sys

from conftest import ROOT

PKG = ROOT / "minigpt"


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path) -> set[str]:
    """The minigpt modules a file imports, wherever in the file the import statement stands."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("minigpt")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if not base.startswith("minigpt"):
                continue
            for a in node.names:  # `from . import checkpoint` imports a module; `from .model import GPT` a name
                sub = f"{base}.{a.name}"
                found.add(sub if (PKG.parent / (sub.replace(".", "/") + ".py")).is_file() else base)
    return found - {name}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(g):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    g = graph()
    assert "minigpt.trainer" in g and "minigpt.model" in g["minigpt.trainer"]  # the graph is really read
    assert find_cycle(g) is None, " -> ".join(find_cycle(g))


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_model_and_trainer_import_no_lessons():
    code = ("import sys, minigpt.model, minigpt.trainer, minigpt.generate; "
            "print([m for m in sys.modules if m.startswith('minigpt.lessons')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def is_core(module: str) -> bool:
    return not module.startswith(("minigpt.tools", "minigpt.lessons"))


def test_no_core_module_imports_the_tools():
    """The tools stand on the core, never the reverse: FLOPs, the parameter table and the CPU's flags are
    core modules (minigpt.flops, minigpt.params, minigpt.runtime) that train.py's loop uses."""
    g = graph()
    assert "minigpt.tools.params" in g and "minigpt.flops" in g["minigpt.tools.params"]  # the graph is really read
    back = {m: sorted(n for n in deps if not is_core(n)) for m, deps in g.items() if is_core(m)}
    assert not {m: deps for m, deps in back.items() if deps}
    assert {"minigpt.flops", "minigpt.params"} <= g["minigpt.trainer"]  # what the loop needs, from the core


def test_is_core_and_the_graph_see_a_function_local_import():
    assert is_core("minigpt.trainer") and not is_core("minigpt.tools.bench") and not is_core("minigpt.lessons.attention")
    f = PKG / "optim.py"
    assert "minigpt.runtime" in imports_of(f)  # optim's bf16 check is imported inside a function


def test_the_package_never_imports_the_benchmarks():
    """benchmarks/ is a checkout folder, not in the wheel: the package only finds it at run time (tools/bench.py)."""
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not any(n.split(".")[0] == "benchmarks" for n in names), path


def test_model_has_no_device_cpu_or_compile_branch():
    """model.py reads as the lectures' model: the device-, CPU- and compile-specific fast paths live in
    minigpt/kernels.py, each beside the reference it is tested against."""
    source = (PKG / "model.py").read_text()
    for fragment in ("is_compiling", "device.type", '"cpu"', "'cpu'"):
        assert fragment not in source, f"minigpt/model.py has a device/compile branch: {fragment}"
