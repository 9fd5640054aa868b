"""A user's first hour, on clipsearch as a user installs it: CI runs this file in a venv made
from the wheel with exactly the extras of the README's first command plus pytest, from a copy
of tests/ outside the checkout (`.ci/run`, "as a user installs it"), so every import comes
from the installed package and its declared dependencies. It runs in the developers' venvs
too, with the rest of the suite.

The library is the kind people have: phone JPEGs with the XMP that Google Camera, Apple and
Lightroom embed, a digiKam-style `photo.jpg.xmp` and an Adobe-style `photo.xmp` sidecar, an
MPO, a PNG screenshot, an iPhone HEIC (with the heic extra), a camera's RAW (with the raw
extra) and a RAW+JPEG pair, a damaged file. Then query with
filters, status, status --failed, tag, serve (page and API), models list, all through the
real CLI in subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from helpers import COLOURS, REPO, run_cli, serving, write_photo
from PIL import Image

pytestmark = pytest.mark.journey

RDF = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/" '
       'x:xmptk="XMP Core 6.0.0"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       '<rdf:Description rdf:about="" {namespaces} {attrs}>{body}</rdf:Description></rdf:RDF></x:xmpmeta>'
       '<?xpacket end="w"?>')

# What each writer puts in the XMP it embeds (namespaces and fields as they write them).
GOOGLE_CAMERA = RDF.format(
    namespaces='xmlns:GCamera="http://ns.google.com/photos/1.0/camera/" '
               'xmlns:Container="http://ns.google.com/photos/1.0/container/" '
               'xmlns:Item="http://ns.google.com/photos/1.0/container/item/"',
    attrs='GCamera:MotionPhoto="1" GCamera:MotionPhotoVersion="1" GCamera:MotionPhotoPresentationTimestampUs="968644"',
    body='<Container:Directory><rdf:Seq><rdf:li rdf:parseType="Resource"><Container:Item Item:Mime="image/jpeg" '
         'Item:Semantic="Primary" Item:Length="0" Item:Padding="0"/></rdf:li><rdf:li rdf:parseType="Resource">'
         '<Container:Item Item:Mime="video/mp4" Item:Semantic="MotionPhoto" Item:Length="1024"/></rdf:li></rdf:Seq>'
         '</Container:Directory>')
APPLE = RDF.format(
    namespaces='xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" '
               'xmlns:HDRGainMap="http://ns.apple.com/HDRGainMap/1.0/"',
    attrs='xmp:CreatorTool="17.1" xmp:CreateDate="2023-08-19T11:04:22" photoshop:DateCreated="2023-08-19T11:04:22"'
          ' HDRGainMap:HDRGainMapVersion="131072"', body="")
LIGHTROOM = RDF.format(
    namespaces='xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" '
               'xmlns:lr="http://ns.adobe.com/lightroom/1.0/" xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"',
    attrs='xmp:Rating="5" crs:Version="16.0" crs:Exposure2012="+0.35" crs:HasSettings="True"',
    body='<dc:subject><rdf:Bag><rdf:li>Lisbon</rdf:li><rdf:li>tram</rdf:li></rdf:Bag></dc:subject>'
         '<lr:hierarchicalSubject><rdf:Bag><rdf:li>Places|Portugal|Lisbon</rdf:li></rdf:Bag></lr:hierarchicalSubject>')
DIGIKAM_SIDECAR = RDF.format(
    namespaces='xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:digiKam="http://www.digikam.org/ns/1.0/"',
    attrs="", body='<dc:subject><rdf:Bag><rdf:li>holiday</rdf:li></rdf:Bag></dc:subject>'
                   '<digiKam:TagsList><rdf:Seq><rdf:li>Trips/holiday</rdf:li></rdf:Seq></digiKam:TagsList>')
ADOBE_SIDECAR = RDF.format(
    namespaces='xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"',
    attrs='xmp:Rating="3"', body='<dc:subject><rdf:Bag><rdf:li>family</rdf:li></rdf:Bag></dc:subject>')


def phone_jpeg(path: Path, colour, make: str, model: str, taken: str, xmp: str) -> Path:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = make, model
    exif.get_ifd(0x8769)[0x9003] = taken
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (400, 300), colour).save(path, "JPEG", quality=90, exif=exif.tobytes(), xmp=xmp.encode())
    return path


def raw_supported() -> bool:
    try:
        import rawpy  # noqa: F401
    except ImportError:
        return False
    return True


def heic_supported() -> bool:
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One library, cache and data dir for the whole journey (indexing it is the first step)."""
    base = tmp_path_factory.mktemp("journey")
    root = base / "Pictures"
    photos = {
        "google": phone_jpeg(root / "Camera" / "PXL_20240502_101500.jpg", COLOURS["red"], "Google", "Pixel 8",
                             "2024:05:02 10:15:00", GOOGLE_CAMERA),
        "apple": phone_jpeg(root / "Camera" / "IMG_4012.jpg", COLOURS["green"], "Apple", "iPhone 15",
                            "2023:08:19 11:04:22", APPLE),
        "lightroom": phone_jpeg(root / "Exports" / "lisbon.jpg", COLOURS["yellow"], "FUJIFILM", "X-T5",
                                "2022:04:10 17:30:00", LIGHTROOM),
        "digikam": write_photo(root / "Trips" / "dk.jpg", COLOURS["teal"]),
        "adobe": write_photo(root / "Trips" / "ad.jpg", COLOURS["magenta"]),
        "screenshot": root / "Screenshots" / "Screenshot_2024.png",
        "mpo": root / "3D" / "DSCF0001.MPO",
    }
    (root / "Trips" / "dk.jpg.xmp").write_text(DIGIKAM_SIDECAR, encoding="utf-8")
    (root / "Trips" / "ad.xmp").write_text(ADOBE_SIDECAR, encoding="utf-8")
    photos["screenshot"].parent.mkdir(parents=True)
    Image.new("RGBA", (390, 844), COLOURS["white"] + (255,)).save(photos["screenshot"])
    photos["mpo"].parent.mkdir(parents=True)
    left, right = Image.new("RGB", (320, 240), COLOURS["blue"]), Image.new("RGB", (320, 240), COLOURS["blue"])
    left.save(photos["mpo"], "MPO", save_all=True, append_images=[right])
    if heic_supported():
        import pillow_heif

        pillow_heif.register_heif_opener()
        photos["heic"] = root / "Camera" / "IMG_4013.HEIC"
        Image.new("RGB", (320, 240), COLOURS["black"]).save(photos["heic"], quality=80)
    import rawfiles

    # A Sony camera's RAW on its own (read with the raw extra) and a RAW+JPEG pair (one photo).
    sony = {"make": "SONY", "model": "ILCE-7M4", "taken": "2024:09:01 08:00:00", "lens": "FE 24-70mm F2.8 GM II"}
    if raw_supported():
        photos["raw"] = root / "Sony" / "DSC00042.ARW"
        photos["raw"].parent.mkdir(parents=True, exist_ok=True)
        photos["raw"].write_bytes(rawfiles.make_dng(Image.new("RGB", (640, 480), COLOURS["red"]),
                                                    preview=Image.new("RGB", (320, 240), COLOURS["red"]), **sony))
    photos["pair"] = phone_jpeg(root / "Sony" / "DSC00043.JPG", COLOURS["green"], "SONY", "ILCE-7M4",
                                "2024:09:01 08:00:05", APPLE)
    (root / "Sony" / "DSC00043.ARW").write_bytes(rawfiles.make_dng(
        Image.new("RGB", (640, 480), COLOURS["green"]), preview=Image.new("RGB", (320, 240), COLOURS["green"]), **sony))
    broken = root / "Camera" / "IMG_0001.jpg"  # a copy interrupted after its first bytes
    broken.write_bytes((root / "Camera" / "IMG_4012.jpg").read_bytes()[:300])
    data = base / "home"
    return {"root": root, "photos": photos, "broken": broken, "db": base / "cache" / "index.db",
            "model": REPO / "tests" / "data" / "colour-model", "env": {"CLIPSEARCH_HOME": str(data)}}


def clipsearch(home, *args, check=True) -> subprocess.CompletedProcess:
    result = run_cli(*args, "--db", str(home["db"]), "--model", str(home["model"]), env=home["env"])
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    if check:
        assert result.returncode == 0, err
    return result


@pytest.fixture(scope="module")
def indexed(home):
    result = clipsearch(home, "index", str(home["root"]), "--workers", "1")
    return home, result.stderr.decode()


def paths(result) -> set[str]:
    return set(result.stdout.decode().split("\n")) - {""}


def test_runs_the_installed_package_when_ci_says_so():
    """In CI's user-install stage, `clipsearch` must come from the wheel, not the checkout."""
    where = subprocess.run([sys.executable, "-c", "import clipsearch; print(clipsearch.__file__)"],
                           capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()
    if os.environ.get("CLIPSEARCH_TEST_INSTALLED"):
        assert "site-packages" in where and not (Path(where).parents[1] / "pyproject.toml").exists(), where


def test_index_a_real_library_fails_only_the_damaged_file(indexed):
    home, err = indexed
    expected = len(home["photos"])
    assert f"{expected} new, 0 updated, 0 moved, 0 removed, 1 failed" in err, err
    assert "ModuleNotFoundError" not in err and "metadata partly unread" not in err, err
    assert err.count("warning:") == 1 and f"warning: {home['broken']}:" in err, err
    if not heic_supported():
        pytest.skip("HEIC indexed only with the heic extra (pip install 'clipsearch[heic]')")


def test_query_with_and_without_filters(indexed):
    home, _ = indexed
    photos = home["photos"]
    top = clipsearch(home, "query", "red", "-n", "1", "--no-server").stdout.decode().split("\t")[1].strip()
    assert top == str(photos["google"])
    listing = ("query", "--paths", "--no-server")
    assert paths(clipsearch(home, *listing, "--camera", "pixel")) == {str(photos["google"])}
    assert paths(clipsearch(home, *listing, "--tag", "lisbon")) == {str(photos["lightroom"])}
    assert paths(clipsearch(home, *listing, "--tag", "Places/Portugal/Lisbon")) == {str(photos["lightroom"])}
    assert paths(clipsearch(home, *listing, "--tag", "holiday")) == {str(photos["digikam"])}
    assert paths(clipsearch(home, *listing, "--tag", "family")) == {str(photos["adobe"])}
    assert paths(clipsearch(home, *listing, "--min-rating", "4")) == {str(photos["lightroom"])}
    assert paths(clipsearch(home, *listing, "--after", "2023", "--before", "2024")) == {str(photos["apple"])}
    record = json.loads(clipsearch(home, "query", "yellow", "-n", "1", "--json", "--no-server").stdout)
    assert record["rating"] == 5 and record["make"] == "FUJIFILM" and record["taken_at"] == "2022-04-10T17:30:00"


def test_raw_photos_and_raw_jpeg_pairs(indexed):
    home, _ = indexed
    photos = home["photos"]
    listing = paths(clipsearch(home, "query", "--paths", "--no-server", "--camera", "ILCE-7M4"))
    assert listing == {str(photos["pair"])} | ({str(photos["raw"])} if "raw" in photos else set())
    pair = json.loads(clipsearch(home, "query", "--json", "--no-server", "--after", "2024-09-01T08:00:03").stdout)
    assert pair["path"] == str(photos["pair"]) and pair["raw"] == str(photos["pair"].with_suffix(".ARW"))
    if "raw" not in photos:
        pytest.skip("RAW files on their own are indexed only with the raw extra (pip install 'clipsearch[raw]')")
    record = json.loads(clipsearch(home, "query", "--json", "--no-server", "--before", "2024-09-01T08:00:03",
                                   "--after", "2024-08-31").stdout)
    assert record["path"] == str(photos["raw"]) and record["lens"] == "FE 24-70mm F2.8 GM II"
    assert record["width"] == 640 and record["raw"] is None


def test_status_and_the_failed_list(indexed):
    home, _ = indexed
    report = json.loads(clipsearch(home, "status", "--json").stdout)
    assert report["indexed"] == len(home["photos"]) and report["failed"] == 1
    assert report["metadata"]["read"] == len(home["photos"])
    failed = clipsearch(home, "status", "--failed")
    assert failed.stdout.decode().startswith(f"{home['broken']}: ") and b"1 failed file" in failed.stderr


def test_tag_writes_a_sidecar_the_next_index_reads(indexed):
    home, _ = indexed
    target = home["photos"]["mpo"]
    tagged = clipsearch(home, "tag", "stereo", "blue", "--top", "1")
    assert Path(f"{target}.xmp").is_file() or target.with_suffix(".xmp").is_file(), tagged.stderr
    clipsearch(home, "index", str(home["root"]), "--workers", "1", "-q")
    assert paths(clipsearch(home, "query", "--paths", "--no-server", "--tag", "stereo")) == {str(target)}


def test_serve_gives_the_page_and_answers_the_api(indexed):
    home, _ = indexed
    command = [sys.executable, "-m", "clipsearch", "serve", "--port", "0", "--db", str(home["db"]),
               "--model", str(home["model"])]
    with serving(command, home["env"]) as url:
        for page, marker in (("", b"<html"), ("app.js", b"fetch"), ("app.css", b"{")):
            with urllib.request.urlopen(url + page, timeout=30) as response:
                assert response.status == 200 and marker in response.read()
        with urllib.request.urlopen(url + "api/search?q=green", timeout=30) as response:
            answer = json.load(response)
    assert answer["results"][0]["path"] == str(home["photos"]["apple"])


def test_the_model_catalogue_ships_with_the_package(home):
    listed = run_cli("models", "list", "--json", env=home["env"], check=True)
    rows = [json.loads(line) for line in listed.stdout.decode().splitlines()]
    default = next(row for row in rows if row["default"])
    assert default["name"] == "openai-vit-b-32" and default["pinned"], default


def test_an_extra_that_is_not_installed_is_named(home, tmp_path):
    try:
        import distributed  # noqa: F401
    except ImportError:
        result = run_cli("index", str(tmp_path), "--cluster", "tcp://127.0.0.1:8786", "--db", str(home["db"]),
                         "--model", str(home["model"]), env=home["env"])
        assert result.returncode == 2 and b"pip install 'clipsearch[cluster]'" in result.stderr, result.stderr
    else:
        pytest.skip("distributed is installed here: the --cluster extra's absence is checked where it is not")
