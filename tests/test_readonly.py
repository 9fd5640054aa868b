"""A cache on a read-only volume (a degraded NAS volume, a snapshot, a backup mounted
read-only): `query`, `status` and `serve` answer from it; `index` and `tag` say in one line
that it is read-only. Two real kinds of read-only: a read-only bind mount in a private mount
namespace (`unshare -m`, as root), and the permissions such a volume gives (a folder and
files without write bits, with root's override capabilities dropped)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request

import pytest
from helpers import COLOURS, REPO, serving, write_photo

READ_ONLY = "the cache is read-only (a read-only volume, snapshot or permissions)"


def can_bind_read_only() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind /tmp /tmp && mount -o remount,bind,ro /tmp"],
                           capture_output=True)
    return probe.returncode == 0


def command(kind: str, folder, *args: str) -> list[str]:
    """The CLI as a user on that kind of read-only cache folder would run it."""
    cli = [sys.executable, "-m", "clipsearch", *args]
    if kind == "mount":
        script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
        return ["unshare", "-m", "sh", "-c", script, str(folder), *cli]
    if os.geteuid() != 0:
        return cli
    caps = "-dac_override,-dac_read_search"
    return [shutil.which("setpriv"), f"--bounding-set={caps}", f"--inh-caps={caps}", "--", *cli]


@pytest.fixture(params=["mount", "permissions"])
def read_only_cache(request, tmp_path, colour_model):
    kind = request.param
    if kind == "mount" and not can_bind_read_only():
        pytest.skip("needs root and unshare/mount (a private mount namespace) for a read-only bind mount")
    if kind == "permissions" and os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("running as root without util-linux's setpriv to drop the override capabilities")
    root, cache = tmp_path / "photos", tmp_path / "cache"
    for name in ("red", "blue", "green"):
        write_photo(root / f"{name}.jpg", COLOURS[name])
    db = cache / "index.db"
    done = subprocess.run([sys.executable, "-m", "clipsearch", "index", str(root), "--db", str(db), "--model",
                           str(colour_model), "--workers", "1"], capture_output=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    write_photo(root / "yellow.jpg", COLOURS["yellow"])  # something for a refused index run to do
    if kind == "permissions":
        for path in [cache, *cache.iterdir()]:
            path.chmod(0o555 if path.is_dir() else 0o444)
    yield kind, cache, db, root, colour_model
    cache.chmod(0o755)


def run(kind, cache, *args) -> subprocess.CompletedProcess:
    return subprocess.run(command(kind, cache, *args), capture_output=True, cwd=REPO, timeout=120)


def test_query_and_status_answer_from_a_read_only_cache(read_only_cache):
    kind, cache, db, root, model = read_only_cache
    before = sorted(p.name for p in cache.iterdir())
    found = run(kind, cache, "query", "red", "-n", "1", "--db", str(db), "--model", str(model), "--no-server")
    assert found.returncode == 0 and found.stdout.decode().split("\t")[1].strip() == str(root / "red.jpg"), found.stderr
    status = run(kind, cache, "status", "--json", "--db", str(db), "--model", str(model))
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["indexed"] == 3
    failed = run(kind, cache, "status", "--failed", "--db", str(db), "--model", str(model))
    assert failed.returncode == 0 and b"0 failed files" in failed.stderr
    assert sorted(p.name for p in cache.iterdir()) == before  # nothing written beside it


@pytest.mark.parametrize("args", [["index", "{root}"], ["tag", "rouge", "red", "--top", "1"]])
def test_index_and_tag_say_the_cache_is_read_only_in_one_line(read_only_cache, args):
    kind, cache, db, root, model = read_only_cache
    result = run(kind, cache, *[a.format(root=root) for a in args], "--db", str(db), "--model", str(model))
    err = result.stderr.decode()
    assert result.returncode == 4 and "Traceback" not in err, err
    assert err.strip().splitlines() == [f"Error: {db}: {READ_ONLY}; query, status and serve still answer from it. "
                                        "To index or tag, remount it read-write or fix its permissions, or copy it "
                                        "elsewhere and use --db / CLIPSEARCH_DB"], err
    assert not (root / "red.jpg.xmp").exists()


def test_serve_answers_from_a_read_only_cache(read_only_cache):
    kind, cache, db, root, model = read_only_cache
    with serving(command(kind, cache, "serve", "--port", "0", "--db", str(db), "--model", str(model))) as url:
        with urllib.request.urlopen(url + "api/search?q=blue", timeout=30) as response:
            answer = json.load(response)
    assert answer["results"][0]["path"] == str(root / "blue.jpg")
