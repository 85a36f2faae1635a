"""The codebase's shape, checked: layers point one way (no import cycle among the project's modules,
model.py needs only torch), no function outside tests over 80 lines, no file over 400 lines, nothing
defined twice at the top of a module (what a merge can leave behind, and Python accepts silently)."""
import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for p in [*ROOT.glob("*.py"), *ROOT.glob("*/*.py")] if p.parent.name != "tests")
MAX_FUNCTION_LINES, MAX_FILE_LINES = 80, 400
# Files allowed over MAX_FILE_LINES for now, each with its reason; the test fails once one fits, so the
# entry goes with it.
LONG_FILES = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SOURCES}


def project_imports(path: Path) -> set:
    """The project's modules that `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]  # `from study import sweep`
        else:
            continue
        found |= {n for n in names if n in MODULES}
    return found - {module_name(path)}


def find_cycle(graph: dict):
    """One import cycle as a list of modules, or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_cycle():
    graph = {m: project_imports(p) for m, p in MODULES.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert graph["model"] == set()  # model.py needs only torch
    assert "train" not in set().union(*graph.values())  # nothing imports the training script


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_functions_and_files_stay_small():
    long_functions = [f"{p.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
                      for p in SOURCES for n in ast.walk(ast.parse(p.read_text()))
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert long_functions == []
    tests = sorted((ROOT / "tests").glob("*.py"))
    long_files = {str(p.relative_to(ROOT)) for p in SOURCES + tests if len(p.read_text().splitlines()) > MAX_FILE_LINES}
    assert long_files == set(LONG_FILES)


def repeated_top_level(source: str) -> list:
    """Names a module defines twice at its top level (functions, classes, constants assigned), and a
    second `if __name__ == "__main__":` block: the later one silently replaces, or repeats, the first."""
    seen, repeats = set(), []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = node.name
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(
                target := node.targets[0] if isinstance(node, ast.Assign) else node.target, ast.Name):
            name = target.id
        elif isinstance(node, ast.If) and ast.unparse(node.test).replace("'", '"') == '__name__ == "__main__"':
            name = "if __name__ == '__main__'"
        else:
            continue
        if name in seen:
            repeats.append(f"{name} (line {node.lineno})")
        seen.add(name)
    return repeats


def test_nothing_is_defined_twice():
    found = {str(p.relative_to(ROOT)): r for p in SOURCES + sorted((ROOT / "tests").glob("*.py"))
             if (r := repeated_top_level(p.read_text()))}
    assert found == {}


def test_a_repeated_definition_is_found():
    main = 'if __name__ == "__main__":\n    main()\n'
    assert repeated_top_level("def f(): pass\nclass C: pass\ndef f(): pass\n" + main + main) == \
        ["f (line 3)", "if __name__ == '__main__' (line 6)"]
    assert repeated_top_level("X = 1\ndef f(): pass\nX: int = 2\n") == ["X (line 3)"]
    assert repeated_top_level("def f(): pass\ndef g(): pass\n" + main) == []


# What each method inserts is named by the module that inserts it: (module, the constant holding the
# pattern, fragments of that pattern as its source spells them, which no other module may repeat).
INSERTED_NAMES = [("lora", "LORA_PARAMS", [r"lora_[AB]"]), ("ia3", "IA3_PARAMS", [r"ia3_l$"]),
                  ("adapters", "ADAPTER_PARAMS", [r"adapter\.(down|up)"]),
                  ("prompts", "PROMPT_PARAMS", [r"embeddings\.prompt\."]),
                  ("prompts", "PREFIX_PARAMS", [r"encoder\.prefix\."])]


def modules_spelling(fragment: str, sources=SOURCES) -> set:
    return {module_name(p) for p in sources if fragment in p.read_text()}


@pytest.mark.parametrize("module, constant, fragments", INSERTED_NAMES)
def test_an_inserted_parameters_name_pattern_is_written_in_one_module(module, constant, fragments):
    pattern = getattr(importlib.import_module(module), constant)
    for fragment in fragments:
        assert fragment in pattern  # the fragment is the pattern's own spelling
        assert modules_spelling(fragment) == {module}, fragment


def test_a_second_spelling_is_found(tmp_path):
    copy = ROOT / "tests" / f"_spelling_{tmp_path.name}.py"  # under ROOT, so that module_name applies
    try:
        copy.write_text('KEYS = r"\\.lora_[AB]$"\n')
        assert f"tests._spelling_{tmp_path.name}" in modules_spelling(r"lora_[AB]", SOURCES + [copy])
    finally:
        copy.unlink()
