"""Imports run one way: no import cycle among raysys' modules or packages (function-level imports
included), no module imports a private name from another package, and only raysys.ray imports Ray."""

import ast
from pathlib import Path

RAYSYS = Path(__file__).resolve().parents[2] / "raysys"


def _module(path: Path) -> str:
    parts = path.relative_to(RAYSYS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, list[tuple[str, list[str]]]]:
    """module -> [(imported raysys module or third-party top name, names taken from it)]."""
    out = {}
    for path in RAYSYS.rglob("*.py"):
        tree = ast.parse(path.read_text())
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((node.module, [a.name for a in node.names]))  # function-level and TYPE_CHECKING too
        out[_module(path)] = found
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "raysys"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _raysys_edges(imports, level) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    modules = set(imports)
    for module, found in imports.items():
        for target, names in found:
            targets = [t for t in (target, *(f"{target}.{n}" for n in names)) if t in modules]
            for t in targets:
                a, b = (module, t) if level == "module" else (_package(module), _package(t))
                if a != b and not (level == "module" and module.startswith(t + ".")):
                    graph.setdefault(a, set()).add(b)
    return graph


def test_no_import_cycle_between_modules_or_packages():
    imports = _imports()
    assert _cycle(_raysys_edges(imports, "module")) is None, _cycle(_raysys_edges(imports, "module"))
    packages = _raysys_edges(imports, "package")
    packages.pop("raysys", None)  # the top-level package only re-exports lazily (diffusers' custom modules)
    assert _cycle(packages) is None, _cycle(packages)


def test_layers_run_one_way():
    order = ["core", "data", "models", "scoring", "quality", "generation", "schedules", "report", "training", "ray", "stages",
             "cli"]
    packages = _raysys_edges(_imports(), "package")
    for package, targets in packages.items():
        if package == "raysys":
            continue
        for target in targets:
            assert order.index(target) < order.index(package), f"raysys.{package} imports raysys.{target}"


def test_no_cross_package_private_import_and_only_the_ray_package_imports_ray():
    for module, found in _imports().items():
        for target, names in found:
            if target.split(".")[0] == "ray":
                assert _package(module) == "ray", f"{module} imports {target}: only raysys.ray imports Ray"
            if target.startswith("raysys.") and _package(target) != _package(module):
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{module} imports private {private} from {target}"


def test_no_stage_module_imports_another():
    """Stages name what they read; paths come from raysys.core.run_layout, the graph from the registry."""
    for module, found in _imports().items():
        if module.startswith("raysys.stages."):
            others = [t for t, names in found if t.startswith("raysys.stages") and t != module] + \
                     [f"raysys.stages.{n}" for t, names in found if t == "raysys.stages" for n in names]
            assert not others, f"{module} imports {others}"


def test_the_checks_find_what_they_look_for():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None
