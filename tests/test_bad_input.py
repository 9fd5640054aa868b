"""Every surprise in a real library gets its documented policy: indexed, failed with one
warning naming the file (and remembered), or skipped. Nothing cached is lost."""
from __future__ import annotations

import os
import sqlite3
import time

import corpus
import pytest
from helpers import run_cli, run_cli_measured, run_unprivileged, write_photo
from PIL import Image

from clipsearch.index.embed import EmbedWorker
from clipsearch.model.encoders import ImageEncoder
from clipsearch.model.manifest import load_manifest


def indexed_paths(db) -> set[bytes]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT filepath FROM images WHERE vector IS NOT NULL AND deleted = 0")}


def failed_paths(db) -> set[bytes]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT filepath FROM images WHERE error IS NOT NULL AND deleted = 0")}


@pytest.mark.parametrize("follow", [False, True])
def test_corpus_policies(tmp_path, colour_model, follow):
    root = tmp_path / "library"
    policy = corpus.build(root)
    db = tmp_path / "index.db"
    args = ["index", str(root), "--db", str(db), "--model", str(colour_model), "--workers", "2"]
    started = time.monotonic()
    result, peak_mb = run_cli_measured(*args, *(["--follow-links"] if follow else []), timeout=120)
    print(f"hostile corpus: {len(policy)} files in {time.monotonic() - started:.1f} s, peak RSS {peak_mb:.0f} MB")
    err = result.stderr
    assert result.returncode == 0, err
    # The colour model's worker holds ~70 MB; the strips took one to 9 GB, the 16-bit scan to 1.2 GB.
    assert peak_mb < 500, peak_mb
    assert b"Traceback" not in err
    # nothing but our own one-line messages (no Python warnings from the decoders, say)
    assert all(line.startswith((b"warning: ", b"indexed: ")) for line in err.splitlines()), err
    expected_indexed = {p for p, k in policy.items() if k == "indexed"}
    expected_failed = {p for p, k in policy.items() if k == "failed"}
    if follow:
        expected_indexed.add(os.fsencode(root / "link-to-ordinary.jpg"))  # a link to a file is a file
    assert indexed_paths(db) == expected_indexed
    assert failed_paths(db) == expected_failed
    warnings = [line for line in err.splitlines() if line.startswith(b"warning:")]
    for path in expected_failed:
        assert sum(path in line for line in warnings) == 1, path
    assert all(line.count(b"\n") == 0 for line in warnings)
    # second run: nothing retried, nothing warned, nothing lost
    again = run_cli(*args, *(["--follow-links"] if follow else []))
    assert b"warning" not in again.stderr and indexed_paths(db) == expected_indexed


def test_unreadable_file(tmp_path, colour_model):
    root = tmp_path / "library"
    write_photo(root / "fine.jpg", (200, 0, 0))
    secret = write_photo(root / "secret.jpg", (0, 200, 0))
    os.chmod(secret, 0)
    db = tmp_path / "index.db"
    args = ("index", str(root), "--db", str(db), "--model", str(colour_model), "--workers", "1")
    result = run_unprivileged(*args, env={"CLIPSEARCH_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr
    assert f"warning: {secret}: cannot read (Permission denied)".encode() in result.stderr
    assert indexed_paths(db) == {os.fsencode(root / "fine.jpg")}
    # still unreadable: remembered as failed, not retried or warned about again
    again = run_unprivileged(*args, env={"CLIPSEARCH_HOME": str(tmp_path / "home")})
    assert again.returncode == 0 and b"warning" not in again.stderr, again.stderr
    assert indexed_paths(db) == {os.fsencode(root / "fine.jpg")}


def test_a_folder_that_turns_unreadable_keeps_its_cached_photos(tmp_path, colour_model):
    root = tmp_path / "library"
    write_photo(root / "top.jpg", (200, 0, 0))
    write_photo(root / "trip" / "beach.jpg", (0, 0, 200))
    write_photo(root / "trip" / "day2" / "dune.jpg", (200, 200, 0))
    db = tmp_path / "index.db"
    args = ("index", str(root), "--db", str(db), "--model", str(colour_model), "--workers", "1")
    assert run_unprivileged(*args, env={"CLIPSEARCH_HOME": str(tmp_path / "home")}).returncode == 0
    everything = indexed_paths(db)
    assert len(everything) == 3
    os.chmod(root / "trip", 0)
    try:
        result = run_unprivileged(*args, env={"CLIPSEARCH_HOME": str(tmp_path / "home")})
    finally:
        os.chmod(root / "trip", 0o755)
    message = result.stderr.decode()
    assert result.returncode == 0 and "Traceback" not in message, message
    assert f"{root / 'trip'}" in message and "warning" in message, message
    assert "0 removed" in message, message
    assert indexed_paths(db) == everything


def test_file_deleted_or_rewritten_during_the_run(tmp_path, colour_model):
    """The worker reads each file once: a vanished file is reported, a rewritten one is stored
    with the size and mtime of the bytes actually embedded (so the next run sees no change)."""
    worker = EmbedWorker(ImageEncoder(load_manifest(colour_model)))
    gone = write_photo(tmp_path / "gone.jpg", (1, 2, 3))
    stat_gone = gone.stat()
    gone.unlink()
    rewritten = write_photo(tmp_path / "rewritten.jpg", (200, 0, 0))
    old = rewritten.stat()
    write_photo(rewritten, (0, 0, 200), size=(500, 300))
    os.utime(rewritten, ns=(old.st_atime_ns, old.st_mtime_ns + 5_000_000_000))
    results = [worker.embed_one((bytes(gone), stat_gone.st_size, stat_gone.st_mtime_ns)),
               worker.embed_one((bytes(rewritten), old.st_size, old.st_mtime_ns))]
    assert results[0].vanished and results[0].vector is None
    new = rewritten.stat()
    assert (results[1].size, results[1].mtime_ns) == (new.st_size, new.st_mtime_ns) and results[1].vector


def test_nothing_cached_is_lost_when_files_turn_bad(tmp_path, colour_model):
    root = tmp_path / "library"
    good = [write_photo(root / f"g{i}.jpg", (200, 20 * i, 0)) for i in range(5)]
    db = tmp_path / "index.db"
    run_cli("index", str(root), "--db", str(db), "--model", str(colour_model), check=True)
    good[0].write_bytes(b"corrupted by a bad disk")
    result = run_cli("index", str(root), "--db", str(db), "--model", str(colour_model))
    assert result.returncode == 0 and f"warning: {good[0]}".encode() in result.stderr
    assert indexed_paths(db) == {bytes(p) for p in good[1:]}


def test_huge_files_are_not_read_into_memory_whole(tmp_path, colour_model):
    root = tmp_path / "library"
    root.mkdir()
    with open(root / "video-misnamed.jpg", "wb") as f:  # sparse: 512 MB that take no disk
        f.truncate(512 * 1024 * 1024)
    # An image above the whole-read limit must still be decoded (from disk) and fingerprinted
    # exactly as the move detection does it.
    from clipsearch.index.embed import WHOLE_READ_LIMIT

    width = 5000
    height = WHOLE_READ_LIMIT // (width * 3) + 16
    Image.new("RGB", (width, height), (220, 20, 20)).save(root / "scan.bmp")
    assert (root / "scan.bmp").stat().st_size > WHOLE_READ_LIMIT
    db = tmp_path / "index.db"
    result, peak_mb = run_cli_measured("index", str(root), "--db", str(db), "--model", str(colour_model),
                                       "--workers", "1")
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 0, lines
    assert any("video-misnamed.jpg" in line and "not a recognised image format" in line for line in lines), lines
    assert indexed_paths(db) == {os.fsencode(root / "scan.bmp")}
    # the decoded 5000x4476 scan needs ~70 MB, the misnamed file 512 MB if it were read whole
    assert peak_mb < 400, f"peak RSS {peak_mb:.0f} MB"
    (root / "scan.bmp").rename(root / "renamed-scan.bmp")
    again = run_cli("index", str(root), "--db", str(db), "--model", str(colour_model), "--workers", "1")
    assert b"1 moved" in again.stderr and b"0 new" in again.stderr, again.stderr


def test_postscript_named_jpg_is_never_handed_to_ghostscript(tmp_path):
    """Pillow's EPS plugin would run Ghostscript (`{} loop` hangs it); only photo formats are tried."""
    from clipsearch.photos.preprocess import ImageDecodeError, open_image

    eps = tmp_path / "poster.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n{} loop\nshowpage\n")
    with pytest.raises(ImageDecodeError, match="not a recognised image format"):
        open_image(eps, 224)
