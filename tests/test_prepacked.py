"""The server's ranking with pre-packed blocks (`search/rank.PrepackedScorer`): the same
answers, to the last bit, as the plain ranking of a cold query, before and after its sessions
are built; a new packed file (an index run) retires the old sessions; a budget of 0 keeps
none. Real cache, real index runs, real onnxruntime sessions."""
from __future__ import annotations

from helpers import COLOURS, write_photo

from clipsearch.search.query import WarmEngine, run_query


def answers(cli, engine=None):
    return [run_query([text], cli.db, cli.model, 6, engine=engine).results for text in ("red", "blue", "yellow")]


def test_prepacked_blocks_rank_exactly_as_the_plain_path_and_follow_new_packed_files(cli, tmp_path):
    library = tmp_path / "photos"
    for i, (name, rgb) in enumerate(COLOURS.items()):
        write_photo(library / f"{name}.jpg", rgb, seed=i)
    cli("index", str(library), "--workers", "1")
    engine = WarmEngine(cli.model, rank_memory_mb=64)
    cold = answers(cli)
    assert answers(cli, engine) == cold  # the plain path, while the sessions are built
    engine.scorer.wait()
    built = dict(engine.scorer.sessions)
    assert built and all(value is not None for value in built.values())
    assert answers(cli, engine) == cold  # now through the pre-packed sessions

    write_photo(library / "red_again.jpg", COLOURS["red"], seed=99)
    cli("index", str(library), "--workers", "1")  # one new row: overlaid, the packed file stays
    fresh = answers(cli)
    assert any(path.endswith(b"red_again.jpg") for path, _ in fresh[0])
    assert answers(cli, engine) == fresh
    assert set(engine.scorer.sessions) == set(built)

    from clipsearch.cache.packed import write_packed
    from clipsearch.cache.store import Store

    store = Store(cli.db)
    try:
        write_packed(store, 3)  # what an index run does once the overlay is large: a new packed file
    finally:
        store.close()
    assert answers(cli, engine) == fresh
    engine.scorer.wait()
    assert not set(engine.scorer.sessions) & set(built)  # the old file's sessions are gone
    assert answers(cli, engine) == fresh

    none = WarmEngine(cli.model, rank_memory_mb=0)
    assert answers(cli, none) == fresh
    none.scorer.wait()
    assert not none.scorer.sessions


def test_every_shard_keeps_its_pre_packed_blocks(colour_model, tmp_path, isolated_home):
    from click.testing import CliRunner
    from helpers import colour_library

    from clipsearch.cli.main import main

    colour_library(tmp_path / "a", 1)
    colour_library(tmp_path / "b", 1)
    result = CliRunner().invoke(main, ["index", str(tmp_path / "a"), str(tmp_path / "b"), "--model", str(colour_model)])
    assert result.exit_code == 0, result.output
    db = isolated_home / "index.db"
    engine = WarmEngine(colour_model, rank_memory_mb=64)
    cold = run_query(["red"], db, colour_model, 6).results
    for _ in range(2):
        assert run_query(["red"], db, colour_model, 6, engine=engine).results == cold
        engine.scorer.wait()
    assert {key[0].parent.name for key in engine.scorer.sessions} == {"index.db.shards"}
    assert len({key[0] for key in engine.scorer.sessions}) == 2  # one shard's file never retires the other's
