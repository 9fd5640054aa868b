"""The package's corridors, enforced: which subpackage may import which (the table of
docs/development.md), where the heavy and optional packages may be imported, and that the
subpackages' `__init__.py` hold a docstring only. Every module is read with `ast`, imports
inside functions included, so a lazy import cannot slip past."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from helpers import REPO

PACKAGE = REPO / "clipsearch"
GROUND = {"errors", "config"}
# Each subpackage may import the ground modules, itself and these subpackages (and no other).
MAY_IMPORT = {
    "photos": set(),
    "cache": set(),  # stores bytes and numbers: no model, no photos
    "model": {"photos"},
    "index": {"cache", "model", "photos"},  # never search
    "search": {"cache", "model", "photos"},  # never index
    "serve": {"search", "health", "cache", "model", "photos"},  # never index, never tag (health's --tag is not served)
    "tag": {"search", "cache", "model", "photos"},  # never index, never serve
    "health": {"search", "tag", "cache", "model", "photos"},  # never index, never serve
    "cli": {"index", "search", "serve", "tag", "health", "cache", "model", "photos"},
}
# Outside packages only some places may import (None: nowhere); "lazily": inside functions only.
THIRD_PARTY = {
    "click": ({"cli"}, False),
    "torch": (None, False), "transformers": (None, False), "export": (None, False),
    "onnx": ({"model/build.py", "model/pull.py", "model/text_layouts.py"}, True),
    "safetensors": ({"model/text_layouts.py"}, True),
    "distributed": ({"index/cluster.py"}, False),
    "pillow_heif": ({"photos/formats.py"}, True),
    "rawpy": ({"photos/raw.py"}, True),
}
# Inside model/, the runtime side (what `query` and `index` load) never reaches the pulling
# side, which needs onnx.
RUNTIME_MODEL = {"manifest", "encoders", "tokens"}
PULLING_MODEL = {"pull", "pull_text", "hub", "layouts", "text_layouts", "build", "catalogue", "known_answers"}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imports_of(path: Path) -> list[tuple[str, bool, int]]:
    """(absolute module imported, inside a function?, line) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []

    def visit(node, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, nested, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module
                if child.module is None or module in ("clipsearch", package):  # `from . import x`
                    found.extend((f"{module}.{alias.name}", nested, child.lineno) for alias in child.names)
                else:
                    found.append((module, nested, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return found


def where(path: Path) -> tuple[str, str]:
    """(subpackage or "ground", path relative to clipsearch/)."""
    relative = path.relative_to(PACKAGE)
    return (relative.parts[0] if len(relative.parts) > 1 else "ground"), relative.as_posix()


def broken_rules(path: Path) -> list[str]:
    home, name = where(path)
    problems = []
    for module, nested, line in imports_of(path):
        parts = module.split(".")
        if parts[0] == "clipsearch" and len(parts) > 1:
            target = parts[1]
            if target in GROUND or target in ("__main__",):
                if home == "ground" and target != "__main__" and name.removesuffix(".py") in GROUND:
                    problems.append(f"{name}:{line} imports {module}: the ground modules import nothing of clipsearch")
                continue
            if home == "ground":
                if not (name == "__main__.py" and target == "cli"):
                    problems.append(f"{name}:{line} imports {module}: only __main__ may, and only cli")
                continue
            if target != home and target not in MAY_IMPORT[home]:
                problems.append(f"{name}:{line} imports {module}: {home}/ may not import {target}/")
            if home == "model" and target == "model" and len(parts) > 2:
                if Path(name).stem in RUNTIME_MODEL and parts[2] in PULLING_MODEL:
                    problems.append(f"{name}:{line} imports {module}: the runtime model modules never reach the pulling side")
        elif parts[0] in THIRD_PARTY:
            allowed, lazily = THIRD_PARTY[parts[0]]
            if allowed is None or not (home in allowed or name in allowed):
                problems.append(f"{name}:{line} imports {module}: allowed only in {sorted(allowed or ['nowhere'])}")
            elif lazily and not nested:
                problems.append(f"{name}:{line} imports {module} at module level: only inside functions (lazily)")
    return problems


def test_every_module_keeps_to_the_import_table():
    problems = [problem for path in modules() for problem in broken_rules(path)]
    assert not problems, "\n".join(problems)


def test_the_table_catches_a_forbidden_import(tmp_path, monkeypatch):
    """The check itself can fail: index/ importing search/, a lazy one included, is caught."""
    source = (PACKAGE / "index" / "status.py").read_text()
    planted = PACKAGE / "index" / "status.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (
        source + "\n\ndef _planted():\n    from clipsearch.search.query import run_query\n" if self == planted
        else Path.read_bytes(self).decode()))
    problems = broken_rules(planted)
    assert problems == [f"index/status.py:{source.count(chr(10)) + 4} imports clipsearch.search.query: "
                        "index/ may not import search/"]


def test_only_known_subpackages_and_docstring_only_inits():
    subpackages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subpackages == set(MAY_IMPORT)
    for name in subpackages:
        tree = ast.parse((PACKAGE / name / "__init__.py").read_text())
        assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value.value, str), \
            f"{name}/__init__.py: a docstring only (no re-exports: the query's start-up order depends on it)"
    loose = {p.stem for p in PACKAGE.glob("*.py")}
    assert loose == GROUND | {"__init__", "__main__"}, f"ground modules only at the top: {loose}"


def test_every_module_says_what_it_owns_and_stays_small():
    for path in modules():
        tree = ast.parse(path.read_text())
        if path.name != "__main__.py":
            assert ast.get_docstring(tree), f"{path.relative_to(REPO)}: a docstring saying what it owns"
        assert path.read_text().count("\n") <= 420, f"{path.relative_to(REPO)}: over ~400 lines; split it"


@pytest.mark.parametrize("package", ["torch", "transformers"])
def test_nothing_outside_export_mentions_importing(package):
    offenders = [where(path)[1] for path in modules() for module, _, _ in imports_of(path)
                 if module.split(".")[0] == package]
    assert offenders == []


DOCS = REPO / "docs"
CITATION = re.compile(r'docs/([\w-]+\.md)(?:\s+\\?"([^"\\]+)\\?")?')
LINK = re.compile(r"\]\(((?:docs/)?[\w-]+\.md)(?:#([\w-]+))?\)")


def headings(page: Path) -> set[str]:
    return {line.lstrip("#").strip() for line in page.read_text().splitlines() if line.startswith("#")}


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_every_cited_doc_page_and_heading_exists():
    """Code cites docs as `docs/PAGE.md "Heading"`; pages link as `[..](PAGE.md#anchor)`."""
    missing = []
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "bench").glob("*.py"), *(REPO / "export").glob("*.py")]:
        text = path.read_text()
        assert 'README "' not in text and 'README \\"' not in text, f"{path}: cite docs/PAGE.md \"Heading\""
        for page, heading in CITATION.findall(text):
            target = DOCS / page
            if not target.is_file() or (heading and heading not in headings(target)):
                missing.append(f"{path.relative_to(REPO)}: docs/{page} {heading!r}")
    for page in [REPO / "README.md", *DOCS.glob("*.md")]:
        for link, fragment in LINK.findall(page.read_text()):
            target = (page.parent / link) if page.parent == DOCS or not link.startswith("docs/") else REPO / link
            if not target.is_file() or (fragment and fragment not in {anchor(h) for h in headings(target)}):
                missing.append(f"{page.relative_to(REPO)}: {link}#{fragment}")
    assert not missing, "\n".join(missing)


def test_the_readme_stays_short_over_the_docs():
    readme = (REPO / "README.md").read_text()
    assert readme.count("\n") <= 160
    for page in DOCS.glob("*.md"):
        assert f"docs/{page.name}" in readme, f"README links every page: {page.name}"
