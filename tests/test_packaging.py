"""What `pip install .` puts on a NAS: the runtime package only."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from helpers import REPO


def test_the_wheel_holds_the_runtime_and_no_top_level_export_package(tmp_path):
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("clipsearch-*.whl")
    top = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "clipsearch" in top and "export" not in top and "tests" not in top and "bench" not in top
    names = zipfile.ZipFile(wheel).namelist()
    for data in ("clipsearch/search/rank.onnx",
                 "clipsearch/model/catalogue.json", "clipsearch/serve/web/index.html",
                 "clipsearch/serve/web/app.js", "clipsearch/model/known_answer_pictures/openai-clip-diagram.png"):
        assert data in names, data


def test_export_without_pytorch_fails_in_one_line():
    # torch blocked: what `python -m export` does in the runtime-only (NAS) environment
    code = "import runpy, sys\nsys.modules['torch'] = None\nsys.argv = ['export']\nrunpy.run_module('export', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "(torch" in result.stderr and "not installed)" in result.stderr
    assert "copy the model folder" in result.stderr


# Optional packages the runtime imports, the extra that brings each, and the test proving its
# absence is handled (one note naming the extra, nothing remembered as failed).
OPTIONAL = {"pillow_heif": "heic", "rawpy": "raw", "onnx": "models", "safetensors": "models", "distributed": "cluster"}


def test_every_runtime_import_is_a_core_dependency_or_a_handled_extra():
    """What `pip install .` brings must be enough for every module of clipsearch/ to import what
    it imports; anything else must be one of the optional extras, named in OPTIONAL."""
    import ast
    import re
    from importlib.metadata import packages_distributions

    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0].lower().replace("_", "-") for dep in project["dependencies"]}
    extras = {name: {re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0].lower().replace("_", "-") for dep in deps}
              for name, deps in project["optional-dependencies"].items()}
    distributions = packages_distributions()
    imported: dict[str, set[str]] = {}
    for source in (REPO / "clipsearch").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                imported.setdefault(name.split(".")[0], set()).add(source.name)
    unexplained = {}
    for module, where in sorted(imported.items()):
        if module in sys.stdlib_module_names or module == "clipsearch":
            continue
        if module in OPTIONAL:
            extra = OPTIONAL[module]
            dists = distributions.get(module, [module])
            assert any(d.lower().replace("_", "-") in extras[extra] for d in dists), \
                f"{module} is said to come with [{extra}], which does not list it"
            continue
        dists = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
        if not dists & core:
            unexplained[module] = sorted(where)
    assert not unexplained, f"imported by the runtime but not a core dependency nor a handled extra: {unexplained}"
