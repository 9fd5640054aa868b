"""The bench scripts run on a torch-free machine given a model folder (a NAS with a copied
folder), and say in one line what is missing otherwise."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from helpers import DATA, REPO

BLOCK_TORCH = "import runpy, sys\nsys.modules['torch'] = None\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n"


def run_bench(script: str, *args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(REPO / "bench" / script), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=300, env=dict(os.environ, **env))


def test_models_bench_runs_without_pytorch_on_a_given_model_folder(tmp_path):
    model = tmp_path / "nas-model"
    shutil.copytree(DATA / "tiny-model", model)
    result = run_bench("models.py", "--repeats", "1", "--batch", "2",
                       env={"CLIPSEARCH_BENCH_MODEL": str(model), "CLIPSEARCH_BENCH_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert "int8" in result.stdout and "fp32 comparisons left out" in result.stdout


def test_a_bench_without_model_or_pytorch_says_what_to_do_in_one_line(tmp_path):
    result = run_bench("models.py", env={"CLIPSEARCH_BENCH_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "CLIPSEARCH_BENCH_MODEL" in result.stderr
