"""The package's shape: no import cycle, nothing imports upward, and the
README's "How it is built" names every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "wsexec"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: Set[str], root: Path = ROOT) -> Set[str]:
    """Every wsexec module a file imports: at the top, inside functions and
    under TYPE_CHECKING alike."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules:
                    found.add(full)
                elif base in modules:
                    found.add(base)
    found.discard(name)
    return found


def graph() -> Dict[str, Set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module, or a self loop."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    # The checker itself: a known cycle is reported, a chain is not.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_import_reader_sees_imports_inside_functions(tmp_path):
    modules = {"wsexec.config", "wsexec.server", "wsexec.net.front"}
    source = tmp_path / "wsexec" / "net" / "front.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from ..server import x\n\nif T:\n    from .. import config\n")
    assert imports_of(source, modules, tmp_path) == {"wsexec.server", "wsexec.config"}


def test_no_import_cycle():
    edges = graph()
    assert "wsexec.session" in edges and "wsexec.backends.process" in edges
    assert cycles(edges) == []


# Lower layers never import the ones that use them: the flow of a connection
# is net/ -> connection -> http/ | session -> backends/ -> proc/.
UPPER = ("wsexec.cli", "wsexec.server", "wsexec.connection", "wsexec.admission", "wsexec.registry", "wsexec.session")
NEVER_IMPORTS = {
    "wsexec.net": UPPER + ("wsexec.http", "wsexec.backends", "wsexec.proc"),
    "wsexec.http": UPPER + ("wsexec.backends",),
    "wsexec.proc": UPPER + ("wsexec.http", "wsexec.net.front", "wsexec.backends"),
    "wsexec.backends": UPPER,
    "wsexec.websocket": UPPER + ("wsexec.backends", "wsexec.proc", "wsexec.net"),
    "wsexec.session": ("wsexec.cli", "wsexec.server", "wsexec.connection", "wsexec.registry", "wsexec.proc"),
}


def test_nothing_imports_upward():
    wrong = []
    for module, deps in graph().items():
        for lower, banned in NEVER_IMPORTS.items():
            if module == lower or module.startswith(lower + "."):
                wrong += [(module, d) for d in deps if any(d == b or d.startswith(b + ".") for b in banned)]
    assert wrong == []


def test_readme_describes_every_module():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## How it is built", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\s*([a-z_]+(?:/[a-z_]+)*\.py)\b", section, re.M))
    on_disk = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    assert on_disk <= named, sorted(on_disk - named)
    assert named <= on_disk, sorted(named - on_disk)


def test_the_wheel_holds_every_module(tmp_path):
    """`pip install .` (the README's first command) installs the whole package."""
    import subprocess
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                    str(ROOT)], check=True, timeout=120, capture_output=True)
    wheel = next(tmp_path.glob("wsexec-*.whl"))
    in_wheel = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("wsexec/") and n.endswith(".py")}
    on_disk = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")}
    assert on_disk == in_wheel


def test_plain_wsexec_loads_no_mode_libraries():
    """Small boards count every megabyte: prometheus_client (and json, the
    control API's) load only with --control, the shared backend only with
    --shared, h11 only for a request head the fast path leaves to it, email
    only for a conditional request (together 1.3 MB of idle RSS), the HTTP client
    only with --callback."""
    import subprocess
    import sys

    probe = ("import sys, wsexec.cli, wsexec.server, wsexec.connection, wsexec.session; "
             "print(' '.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=True).stdout.split()
    assert "wsexec.server" in loaded
    assert not [m for m in loaded if m.split(".")[0] in ("prometheus_client", "httpx", "h11", "json", "email")]
    # zlib itself is loaded by the standard library (shutil); wsexec's own zlib state only with --compress
    assert not {"wsexec.control", "wsexec.metrics", "wsexec.backends.shared", "wsexec.deflate"} & set(loaded)
    with_control = subprocess.run([sys.executable, "-c", "import sys, wsexec.control; print(' '.join(sys.modules))"],
                                  cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert "prometheus_client" in with_control
    assert "wsexec.backends.callback" not in loaded and "wsexec.http.client" not in loaded
