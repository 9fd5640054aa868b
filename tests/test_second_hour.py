"""The second hour with clipsearch: the small things that go wrong once it is part of the
house (issue 23). Real files, real CLI."""
from __future__ import annotations

import json
import os
import re
import shutil

import pytest

import clipsearch.errors as errors
from helpers import COLOURS, DATA, run_cli, run_unprivileged, write_photo
from test_metadata import dms, jpeg
from test_metadata_index import dated_photo


def test_gps_seconds_of_exactly_60_are_normalised_not_dropped():
    from PIL.TiffImagePlugin import IFDRational

    from clipsearch.photos.metadata import read_photo_meta

    gps = {1: "N", 2: (IFDRational(41, 1), IFDRational(8, 1), IFDRational(60, 1)),
           3: "W", 4: (IFDRational(8, 1), IFDRational(36, 1), IFDRational(60, 1))}
    meta = read_photo_meta(jpeg(gps=gps))
    assert meta.lat == pytest.approx(41.15) and meta.lon == pytest.approx(-8.6166667) and meta.problems == []
    beyond = {**gps, 2: (IFDRational(41, 1), IFDRational(8, 1), IFDRational(61, 1))}
    assert read_photo_meta(jpeg(gps=beyond)).lat is None
    assert read_photo_meta(jpeg(gps={**gps, 2: dms(41, 8, 59.5)})).lat == pytest.approx(41.1498611)


def test_the_help_lists_every_exit_code():
    codes = {cls.exit_code for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.ClipsearchError)} | {0, 130}
    text = " ".join(run_cli("--help", check=True).stdout.decode().split())
    listed = {int(code) for code in re.findall(r"\b(\d+) [a-z]", text.split("Exit codes:", 1)[1])}
    assert codes <= listed, codes - listed


def test_tag_exits_non_zero_when_no_sidecar_could_be_written(tmp_path, cli):
    root = tmp_path / "photos"
    for name in ("red", "blue"):
        write_photo(root / f"{name}.jpg", COLOURS[name])
    cli("index", str(root), "--workers", "1")
    root.chmod(0o555)  # a read-only folder: no sidecar can be created
    try:
        result = run_unprivileged("tag", "colour", "red", "--top", "2", "--db", str(cli.db), "--model", str(cli.model),
                                  env={})
    finally:
        root.chmod(0o755)
    err = result.stderr.decode()
    assert result.returncode == 8 and "Traceback" not in err, err
    assert "none of the 2 sidecars could be written" in err


def test_models_list_shows_installed_models_outside_the_catalogue(isolated_home):
    shutil.copytree(DATA / "colour-model", isolated_home / "models" / "my-colours")
    rows = [json.loads(line) for line in run_cli("models", "list", "--json", check=True).stdout.splitlines()]
    mine = next(row for row in rows if row["name"] == "my-colours")
    assert mine["installed"] and "not in the catalogue" in mine["source"]


def test_several_models_and_no_default_names_them(isolated_home, tmp_path):
    for name in ("colours-a", "colours-b"):
        shutil.copytree(DATA / "colour-model", isolated_home / "models" / name)
    dated_photo(tmp_path / "photos" / "a.jpg", COLOURS["red"])
    result = run_cli("index", str(tmp_path / "photos"))
    err = result.stderr.decode()
    assert result.returncode == 3, err
    assert f"installed in {isolated_home / 'models'}: colours-a, colours-b" in err and "--model" in err


def test_a_failed_pull_leaves_no_hidden_download_folder_and_names_the_models_folder(tmp_path, isolated_home):
    pytest.importorskip("onnx", reason="pulling quantizes with onnx: pip install 'clipsearch[models]'")
    import hubserver

    hub = hubserver.Hub(tmp_path / "hub")
    try:
        folder = hubserver.transformers_js_repo(hub.repo("Xenova/tiny-clip", hubserver.COMMIT))
        pins = hubserver.pinned_files(folder, ["onnx/vision_model.onnx", "onnx/text_model.onnx", "tokenizer.json",
                                               "preprocessor_config.json", "config.json"])
        catalogue = hubserver.catalogue(tmp_path / "catalogue.json",
                                        {"tiny": ("Xenova/tiny-clip", hubserver.COMMIT, "transformers.js", pins)})
        (folder / "tokenizer.json").write_text("{}")  # altered: nothing to resume from
        env = {"CLIPSEARCH_CATALOGUE": str(catalogue), "HF_ENDPOINT": hub.endpoint}
        result = run_cli("models", "pull", "tiny", env=env)
        assert result.returncode == 7 and b"altered" in result.stderr
        assert not [p for p in os.listdir(isolated_home / "models") if p.startswith(".")]
    finally:
        hub.close()
    unreachable = run_cli("models", "pull", "tiny", env=dict(env, HF_ENDPOINT="http://127.0.0.1:9"))
    assert unreachable.returncode == 7 and str(isolated_home / "models").encode() in unreachable.stderr


LIGHTROOM_XMP = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
    '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
    'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:lr="http://ns.adobe.com/lightroom/1.0/">'
    "<dc:subject><rdf:Bag><rdf:li>grandma</rdf:li><rdf:li>Ana</rdf:li></rdf:Bag></dc:subject>"
    "<lr:hierarchicalSubject><rdf:Bag><rdf:li>People|grandma</rdf:li><rdf:li>People|Ana</rdf:li></rdf:Bag>"
    "</lr:hierarchicalSubject></rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end=\"w\"?>")


def embedded_keywords_photo(path, colour):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), colour).save(path, "JPEG", xmp=LIGHTROOM_XMP.encode())
    return path


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="ExifTool not installed (apt-get install libimage-exiftool-perl)")
def test_tag_keeps_the_photos_own_keywords_visible(tmp_path, cli):
    from test_tags import as_list, exiftool

    root = tmp_path / "photos"
    photo = embedded_keywords_photo(root / "lightroom.jpg", COLOURS["blue"])
    write_photo(root / "other.jpg", COLOURS["red"])
    cli("index", str(root), "--workers", "1")
    cli("tag", "sea", "blue", "--top", "1")
    sidecar = root / "lightroom.jpg.xmp"
    (read,) = exiftool(sidecar)
    assert sorted(as_list(read["XMP-dc:Subject"])) == ["Ana", "grandma", "sea"]
    assert sorted(as_list(read["XMP-lr:HierarchicalSubject"])) == ["People|Ana", "People|grandma", "clipsearch|sea"]
    cli("index", str(root), "--workers", "1")  # the sidecar now wins: it must not hide grandma
    found = lambda *tags: cli("query", "--paths", *[a for t in tags for a in ("--tag", t)]).stdout.split()  # noqa: E731
    assert found("grandma") == [str(photo)] and found("sea") == [str(photo)]
    run_cli("untag", "sea", "--db", str(cli.db), check=True)
    (read,) = exiftool(sidecar)
    assert sorted(as_list(read["XMP-dc:Subject"])) == ["Ana", "grandma"]  # only what tag added is gone
    cli("index", str(root), "--workers", "1")
    assert found("grandma") == [str(photo)] and found("sea") == []


def test_a_tag_finds_the_keywords_under_it_and_an_exact_one_only_itself(tmp_path, cli):
    root = tmp_path / "photos"
    lightroom = embedded_keywords_photo(root / "lightroom.jpg", COLOURS["blue"])
    digikam = write_photo(root / "digikam.jpg", COLOURS["red"])
    (root / "digikam.jpg.xmp").write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:digiKam="http://www.digikam.org/ns/1.0/"><digiKam:TagsList><rdf:Seq>'
        "<rdf:li>People/Ana</rdf:li><rdf:li>People</rdf:li></rdf:Seq></digiKam:TagsList></rdf:Description></rdf:RDF>"
        "</x:xmpmeta>", encoding="utf-8")
    write_photo(root / "plain.jpg", COLOURS["green"])
    cli("index", str(root), "--workers", "1")
    found = lambda tag: set(cli("query", "--paths", "--tag", tag).stdout.split())  # noqa: E731
    assert found("People") == found("people") == {str(lightroom), str(digikam)}
    assert found("People/Ana") == found("People|Ana") == {str(lightroom), str(digikam)}
    assert found("=People") == {str(digikam)}  # that keyword itself, not what is under it
    assert found("Peop") == set()  # a prefix of a name is not a parent
    assert found("Ana") == {str(lightroom)}  # Lightroom's leaf in dc:subject


def test_a_listing_without_text_lists_every_match_unless_top_says(tmp_path, cli):
    root = tmp_path / "photos"
    for i in range(14):
        dated_photo(root / f"p{i:02d}.jpg", (10 * i, 90, 90), when=f"2021:03:{i + 1:02d} 10:00:00")
    cli("index", str(root), "--workers", "1")
    listed = cli("query", "--after", "2021", "--paths").stdout.split()
    assert len(listed) == 14 and listed[0].endswith("p13.jpg")  # all of them, newest first, not 10
    assert len(cli("query", "--after", "2021", "--paths", "--top", "3").stdout.split()) == 3
