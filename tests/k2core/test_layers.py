"""k2core's floors (docs/architecture.md, "Layers"): every import inside k2core — at module level or
inside a function — goes to the same floor or a lower one, and there is no import cycle. Run alone
with `python -m pytest tests/k2core/test_layers.py -q`; it reads the sources, imports nothing."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# bottom up; a module may import its own floor and the floors below. First match wins.
FLOORS: list[tuple[str, ...]] = [
    ("k2core", "k2core.errors", "k2core.section", "k2core.lazy", "k2core.progress", "k2core.perf"),
    ("k2core.text", "k2core.model.config", "k2core.optim.config", "k2core.store", "k2core.quality",
     "k2core.report", "k2core.sandbox", "k2core.agentic.domains"),     # leaves: pure text, typed sections, I/O,
    #                                                                    executable domains (pydantic + code)
    ("k2core.config",),                                                # the typed pipeline config
    ("k2core.runs", "k2core.sources"),
    ("k2core.model", "k2core.optim"),                                  # the model and MuonClip
    ("k2core.stage",),                                                 # the stage contract
    ("k2core.artifacts", "k2core.models"),
    ("k2core.infer",),                                                 # engines and the LLM interface
    ("k2core.agentic",),                                               # tools, tasks, rollouts, synthesis
    ("k2core.eval", "k2core.promote", "k2core.rl.gym"),                # benchmark suites, the evaluate stage, promotion;
                                                                       # the gym's environments (verifiers) serve both
    ("k2core.train",),                                                 # the loop and the training stages
    ("k2core.rl",),                                                    # the gym, the K1.5 loss (the rl stage)
    ("k2core.data",),                                                  # the pre-training data stages
    ("k2core.experiments",),
    ("k2core.pipeline",),                                              # the composition root
]


# the one sanctioned upward edge, and only as an import inside a function: a config section builds
# the object it configures (OLMo-core's `OptimConfig.build(model)`), in the same package
BUILDS = {("k2core.optim.config", "k2core.optim.muonclip")}


def floor_of(module: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(FLOORS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{module} is on no floor: add it to FLOORS (and to docs/architecture.md)"
    return best


def k2core_modules() -> dict[str, Path]:
    out = {}
    for f in sorted((ROOT / "k2core").rglob("*.py")):
        parts = f.with_suffix("").relative_to(ROOT).parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports_of(path: Path, modules: dict[str, Path], lazy: bool = True) -> set[str]:
    """k2core modules `path` imports (a `from pkg import name` of a submodule counts as that
    submodule); imports under `if TYPE_CHECKING:` are annotations, not dependencies. `lazy=False`:
    module-level imports only (those that run when the module loads)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)) or \
                (not lazy and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))):
            skip.update(id(n) for n in ast.walk(node))
    deps = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            deps.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            deps.add(node.module)
            deps.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
    return {d for d in deps if d in modules}


def test_no_upward_imports_and_no_cycles():
    modules = k2core_modules()
    graph = {m: imports_of(f, modules) - {m} for m, f in modules.items()}
    eager = {m: imports_of(f, modules, lazy=False) for m, f in modules.items()}
    upward = [f"{m} (floor {floor_of(m)}) imports {d} (floor {floor_of(d)})"
              for m, deps in graph.items() for d in sorted(deps)
              if floor_of(d) > floor_of(m) and not m.startswith(d + ".")   # a package's own __init__ is fine
              and not ((m, d) in BUILDS and d not in eager[m])]
    assert not upward, "upward imports:\n" + "\n".join(upward)
    graph = {m: deps - {d for d in deps if (m, d) in BUILDS} for m, deps in graph.items()}

    state: dict[str, int] = {}                  # 1 = on the path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if m.startswith(d + "."):            # `import k2core.x.y` runs k2core/x/__init__: not a cycle of ours
                continue
            assert state.get(d) != 1, "import cycle: " + " -> ".join([*path, m, d])
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_k2core_never_imports_prefect():
    offenders = [m for m, f in k2core_modules().items()
                 if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "prefect" in ast.unparse(n)
                        for n in ast.walk(ast.parse(f.read_text())))]
    assert not offenders, offenders


def test_light_modules_load_without_torch():
    """Loading the config (every `k2` command does) and listing the pipeline must not import torch
    or a stage's code: a subprocess checks what got imported."""
    import subprocess
    import sys

    code = ("import sys, k2core.config, k2core.pipeline; "
            "bad = [m for m in ('torch', 'k2core.data.curate', 'k2core.train.pretrain', 'great_expectations') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
