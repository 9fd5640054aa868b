"""Load: a 20,000-image library indexed into a cache that already holds 1,000,000 vectors.
Slow (a few minutes): run with `python -m pytest -q -m slow`."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import REPO, run_cli_measured
from PIL import Image

from clipsearch.cache.packed import quantize_rows
from clipsearch.cache.store import Store
from clipsearch.model.manifest import load_manifest

pytestmark = pytest.mark.slow

IMAGES = 20_000
SYNTHETIC = 1_000_000

def test_twenty_thousand_images_into_a_million_vector_cache(tmp_path, colour_model):
    manifest = load_manifest(colour_model)
    root = tmp_path / "library"
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        folder = root / f"{i // 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    db = tmp_path / "index.db"
    store = Store(db)
    store.check_model(manifest.model_id, manifest.name, claim=True)
    for start in range(0, SYNTHETIC, 100_000):
        unit = rng.normal(size=(100_000, 3)).astype(np.float32)
        q, scales = quantize_rows(unit / np.linalg.norm(unit, axis=1, keepdims=True))
        with store.atomic():
            seq = store.next_seq()
            store.insert_rows(
                (f"/elsewhere/{(start + i) // 1000}/{start + i}.jpg".encode(), f"/elsewhere/{(start + i) // 1000}".encode(),
                 1, 1, None, q[i].tobytes(), float(scales[i]), seq, 0) for i in range(100_000))
    store.close()

    started = time.perf_counter()
    # this test process holds ~270 MB of synthetic vectors: measured apart from it
    result, peak_mb = run_cli_measured("index", str(root), "--db", str(db), "--model", str(colour_model), timeout=1800)
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    print(f"\nindexed {IMAGES} images into a {SYNTHETIC}-vector cache in {elapsed:.1f} s, "
          f"peak RSS of the largest process {peak_mb:.0f} MB; {result.stderr.decode().strip().splitlines()[-1]}")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT COUNT(*) FROM images WHERE deleted = 0 AND vector IS NOT NULL").fetchone() == (
            IMAGES + SYNTHETIC,)
    assert peak_mb < 600
    query = subprocess.run([sys.executable, "-m", "clipsearch", "query", "red", "--db", str(db), "--model",
                            str(colour_model), "--in", str(root), "--top", "5", "--paths"], cwd=REPO,
                           capture_output=True, timeout=300)
    assert query.returncode == 0 and len(query.stdout.splitlines()) == 5
    assert all(line.startswith(os.fsencode(root)) for line in query.stdout.splitlines())
