"""bench/quality.py end to end on generated datasets with the colour model, whose right
answers are known."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from helpers import COLOURS, REPO, write_photo


def run_quality(*args):
    result = subprocess.run([sys.executable, "bench/quality.py", *map(str, args)], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_easy_set_scores_perfectly_and_comparison_prints_a_difference(tmp_path, colour_model):
    for name, rgb in COLOURS.items():
        for k in range(3):
            write_photo(tmp_path / "easy" / name / f"{k}.png", rgb, grain=0)
    a, b = run_quality(tmp_path / "easy", "--model", colour_model, "--model", colour_model, "--work", tmp_path / "w",
                       "--workers", "1")
    assert a == b and a["top1"] == 1.0 and a["top5"] == 1.0 and a["mAP"] == pytest.approx(1.0)
    assert a["images"] == 24 and a["classes"] == 8


def test_confusable_set_gives_the_computed_value(tmp_path, colour_model):
    """'red' holds four off-red images; 'yellow' four yellow ones and one pure red. In the
    colour model, query red ranks: pure red (labelled yellow), then the four off-reds: AP
    (1/2 + 2/3 + 3/4 + 4/5) / 4. Query yellow: four yellows, four off-reds, then the pure red:
    AP (4 + 5/9) / 5. top-1 = 1/2, top-5 = 1."""
    for k in range(4):
        write_photo(tmp_path / "set" / "red" / f"r{k}.png", (255, 26, 26), grain=0)
        write_photo(tmp_path / "set" / "yellow" / f"y{k}.png", (255, 255, 0), grain=0)
    write_photo(tmp_path / "set" / "yellow" / "pure-red.png", (255, 0, 0), grain=0)
    (result,) = run_quality(tmp_path / "set", "--model", colour_model, "--work", tmp_path / "w", "--workers", "1")
    expected_map = ((1 / 2 + 2 / 3 + 3 / 4 + 4 / 5) / 4 + (4 + 5 / 9) / 5) / 2
    assert result["top1"] == 0.5 and result["top5"] == 1.0
    assert result["mAP"] == pytest.approx(expected_map, abs=1e-6)


def test_cifar100_pickle_format(tmp_path, colour_model):
    names = ["red", "blue", "green"]
    data, labels = [], []
    for label, name in enumerate(names):
        for _ in range(2):
            image = np.zeros((32, 32, 3), dtype=np.uint8)
            image[:] = COLOURS[name]
            data.append(image.transpose(2, 0, 1).reshape(-1))
            labels.append(label)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names}, f)
    with open(folder / "test", "wb") as f:
        pickle.dump({"data": np.stack(data), "fine_labels": labels}, f)
    (result,) = run_quality(folder, "--model", colour_model, "--work", tmp_path / "w", "--workers", "1")
    assert result["images"] == 6 and result["classes"] == 3 and result["top1"] == 1.0
