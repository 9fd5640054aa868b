"""The ranking over the packed file as it is stored now (rows as uint8, each block the left
operand of the integer GEMM): warm answers (the server's engine) equal cold ones to the last
bit, over one database and over shards, also once an index run replaced the packed file the
engine keeps mapped; a packed file of the previous layout is rebuilt, never
misread; `serve --rank-memory` (no longer used) is accepted with a note. Real cache, real index
runs, real onnxruntime sessions."""
from __future__ import annotations

import os

from helpers import COLOURS, colour_library, write_photo

from clipsearch.cache.packed import packed_path
from clipsearch.search.query import WarmEngine, run_query


def answers(db, model, engine=None):
    return [run_query([text], db, model, 6, engine=engine).results for text in ("red", "blue", "yellow")]


def test_warm_answers_equal_cold_ones_and_follow_new_packed_files(cli, tmp_path):
    library = tmp_path / "photos"
    for i, (name, rgb) in enumerate(COLOURS.items()):
        write_photo(library / f"{name}.jpg", rgb, seed=i)
    cli("index", str(library), "--workers", "1")
    engine = WarmEngine(cli.model)
    cold = answers(cli.db, cli.model)
    assert answers(cli.db, cli.model, engine) == cold

    write_photo(library / "red_again.jpg", COLOURS["red"], seed=99)
    cli("index", str(library), "--workers", "1")  # one new row: overlaid, the packed file stays
    fresh = answers(cli.db, cli.model)
    assert any(path.endswith(b"red_again.jpg") for path, _ in fresh[0])
    assert answers(cli.db, cli.model, engine) == fresh

    # The engine keeps the packed file mapped between queries; a new file (rewritten by a
    # run, here by the next query after this one is removed) is mapped afresh, the old let go.
    (mapped_path, (identity, _, _)), = engine.scorer.matrices.mapped.items()
    assert mapped_path == packed_path(cli.db)
    os.unlink(packed_path(cli.db))
    (library / "blue.jpg").unlink()
    cli("index", str(library), "--workers", "1")  # no packed file to overlay: a new one is written
    assert os.stat(packed_path(cli.db)).st_ino != identity[1]
    after = answers(cli.db, cli.model)
    assert not any(path.endswith(b"/blue.jpg") for path, _ in after[1])
    assert answers(cli.db, cli.model, engine) == after
    (_, (renewed, _, _)), = engine.scorer.matrices.mapped.items()
    assert renewed[1] == os.stat(packed_path(cli.db)).st_ino


def test_a_packed_file_of_the_previous_layout_is_rebuilt(cli, tmp_path):
    from clipsearch.cache.packed import MAGIC

    colour_library(tmp_path / "photos", 1)
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    expected = answers(cli.db, cli.model)
    packed = packed_path(cli.db)
    data = bytearray(packed.read_bytes())
    data[:8] = b"CLSVEC03"  # what the previous release wrote (blocks transposed, int8)
    packed.write_bytes(bytes(data))
    assert answers(cli.db, cli.model) == expected
    assert packed.read_bytes()[:8] == MAGIC


def test_every_shard_answers_warm_as_cold(colour_model, tmp_path, isolated_home):
    from click.testing import CliRunner

    from clipsearch.cli.main import main

    colour_library(tmp_path / "a", 1)
    colour_library(tmp_path / "b", 1)
    result = CliRunner().invoke(main, ["index", str(tmp_path / "a"), str(tmp_path / "b"), "--model", str(colour_model)])
    assert result.exit_code == 0, result.output
    db = isolated_home / "index.db"
    engine = WarmEngine(colour_model)
    assert answers(db, colour_model, engine) == answers(db, colour_model)


def test_rank_memory_is_accepted_with_a_note(cli):
    result = cli("serve", "--rank-memory", "64", "--print-service", "systemd")
    assert "--rank-memory / CLIPSEARCH_RANK_MEMORY is no longer used" in result.stderr
    assert "rank-memory" not in result.stdout
