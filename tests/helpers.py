"""Helpers the tests import: where the test data lives, the colour table of the colour model,
writers of real image files, and the real CLI in a subprocess."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parent / "data"
REPO = DATA.parent.parent

COLOURS = {
    "red": (230, 20, 20), "green": (20, 200, 30), "blue": (25, 30, 220), "yellow": (235, 225, 30),
    "teal": (20, 220, 225), "magenta": (220, 30, 215), "white": (245, 245, 245), "black": (12, 12, 12),
}


def write_photo(path: Path, colour, size=(320, 240), grain: float = 8.0, seed: int = 0, fmt: str | None = None) -> Path:
    """A real photo-like file: a flat colour with sensor-like grain, saved in the format of
    its extension."""
    rng = np.random.default_rng(seed)
    arr = np.empty((size[1], size[0], 3), dtype=np.float32)
    arr[:] = colour
    arr += rng.normal(0, grain, arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"quality": 90} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    img.save(path, format=fmt, **kwargs)
    return path


def colour_library(root: Path, per_colour: int = 2) -> dict[str, list[Path]]:
    """Folders of photos of known colours: {colour: [paths]}."""
    library = {}
    for i, (name, rgb) in enumerate(COLOURS.items()):
        library[name] = [write_photo(root / f"album{i % 3}" / f"{name}_{k}.jpg", rgb, seed=i * 10 + k)
                         for k in range(per_colour)]
    return library


def run_cli(*args, env=None, timeout=120, check=False) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (for crash, signal and concurrency cases)."""
    full_env = dict(os.environ, **(env or {}))
    result = subprocess.run([sys.executable, "-m", "clipsearch", *args], capture_output=True, env=full_env,
                            timeout=timeout, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"clipsearch {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
    return result


# Runs a command, then prints the largest peak RSS (KiB) in its process tree as a last line.
_PEAK_RSS = ("import resource, subprocess, sys\n"
             "code = subprocess.run(sys.argv[1:]).returncode\n"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
             "sys.exit(code)\n")


def run_cli_measured(*args, timeout=300) -> tuple[subprocess.CompletedProcess, float]:
    """`run_cli`, plus the peak RSS in MB of the largest process of the run (the CLI or one of
    its workers). Measured by a small wrapper: a child forked from this test process would
    report the test's own memory as its peak."""
    result = subprocess.run([sys.executable, "-c", _PEAK_RSS, sys.executable, "-m", "clipsearch", *args],
                            capture_output=True, timeout=timeout, cwd=REPO)
    stderr, _, peak_kib = result.stderr.rstrip(b"\n").rpartition(b"\n")
    result.stderr = stderr + b"\n" if stderr else b""
    return result, int(peak_kib) / 1024


def run_unprivileged(*args: str, env: dict) -> subprocess.CompletedProcess:
    """The CLI in a subprocess for which file permissions apply, even when the tests run as root."""
    command = [sys.executable, "-m", "clipsearch", *args]
    if os.geteuid() == 0:
        # Root reads any file through CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH: drop both (from the
        # bounding and inheritable sets, so the exec'd Python does not get them back) and stay
        # root otherwise, so the interpreter and the venv stay reachable wherever they live.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            import pytest

            pytest.skip("running as root without util-linux's setpriv to drop the override capabilities")
        caps = "-dac_override,-dac_read_search"
        command = [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", "--", *command]
    return subprocess.run(command, cwd=REPO, capture_output=True, timeout=120, env=dict(os.environ, **env))


@contextlib.contextmanager
def serving(command: list[str], env: dict | None = None):
    """A `clipsearch serve --port 0 ...` process (the whole command line given); yields the
    link it prints (http://127.0.0.1:PORT/, with ?token=... when it wants one), and stops it
    afterwards."""
    import re
    import time

    proc = subprocess.Popen(command, stderr=subprocess.PIPE, cwd=REPO, env=dict(os.environ, **(env or {})))
    try:
        url, deadline = None, time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline().decode()
            assert line, "serve ended before it listened"
            match = re.search(r"serving .* at (http://127\.0\.0\.1:\d+/\S*)", line)
            url = match and match.group(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
