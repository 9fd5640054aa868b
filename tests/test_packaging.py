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
    assert "clipsearch/rank.onnx" in zipfile.ZipFile(wheel).namelist()


def test_export_without_pytorch_fails_in_one_line():
    # torch blocked: what `python -m export` does in the runtime-only (NAS) environment
    code = "import runpy, sys\nsys.modules['torch'] = None\nsys.argv = ['export']\nrunpy.run_module('export', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "(torch" in result.stderr and "not installed)" in result.stderr
    assert "copy the model folder" in result.stderr
