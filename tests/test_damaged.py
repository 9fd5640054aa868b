"""Damaged photos (a copy cut short, a disk's bad stretch at the end of a file): indexed from
what decodes when most of the picture is there, marked with what is missing, listed by
`status --damaged` and found by `query --damaged`; a file with too little left is a failure as
before. Real JPEG and PNG files cut at known places, the real CLI, real caches."""
from __future__ import annotations

import io
import json

from test_duplicates import save, scene


def cut(path, share: float):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * share)])
    return path


def test_a_photo_cut_short_is_indexed_from_what_is_there_and_marked(tmp_path, cli):
    root = tmp_path / "photos"
    whole = save(scene(1), root / "whole.jpg", quality=90)
    jpeg = cut(save(scene(1), root / "cut.jpg", quality=90), 0.7)
    png = cut(save(scene(2), root / "cut.png"), 0.75)
    progressive = cut(save(scene(3), root / "progressive.jpg", quality=90, progressive=True), 0.6)
    hopeless = cut(save(scene(4), root / "hopeless.jpg", quality=90), 0.2)
    result = cli("index", str(root), "--workers", "1")
    assert "4 new" in result.stderr and "1 failed" in result.stderr and "3 damaged" in result.stderr, result.stderr
    assert f"warning: {jpeg}: damaged (truncated: the bottom " in result.stderr
    assert f"warning: {hopeless}: cannot decode (truncated: only 2" in result.stderr  # 20% of the bytes: 22% of the rows
    listed = {row["path"]: row["damage"] for row in map(json.loads, cli("status", "--damaged", "--json").stdout.splitlines())}
    assert set(listed) == {str(jpeg), str(png), str(progressive)}
    missing = {path: int(text.split("bottom ")[1].split("%")[0]) for path, text in listed.items() if "bottom" in text}
    assert 15 <= missing[str(jpeg)] <= 45 and 15 <= missing[str(png)] <= 35, missing
    assert listed[str(progressive)] == "truncated: the file ends early; the picture is there with less detail"
    assert "3 damaged photos" in cli("status", "--damaged").stderr
    assert set(cli("query", "--damaged", "--paths", "--no-server").stdout.split()) == set(listed)
    assert json.loads(cli("status", "--json").stdout)["damaged"] == 3
    # The intact photo is the damaged copy's nearest neighbour: what is there still says what it shows.
    nearest = cli("query", "--like", str(jpeg), "--paths", "--no-server", "-n", "2").stdout.split()
    assert set(nearest) == {str(jpeg), str(whole)}, nearest


def test_a_damaged_photo_restored_from_a_backup_is_no_longer_damaged(tmp_path, cli):
    root = tmp_path / "photos"
    photo = save(scene(5), root / "photo.jpg", quality=90)
    whole = photo.read_bytes()
    cut(photo, 0.7)
    cli("index", str(root), "--workers", "1")
    assert cli("status", "--damaged", "--json").stdout.strip()
    photo.write_bytes(whole)
    result = cli("index", str(root), "--workers", "1")
    assert "1 updated" in result.stderr and "damaged" not in result.stderr
    assert cli("status", "--damaged", "--json").stdout == ""


def test_the_missing_share_is_measured_on_the_rows_the_decoder_left_flat():
    from PIL import Image

    from clipsearch.photos.preprocess import decode_image

    buffer = io.BytesIO()
    scene(6, (640, 480)).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    shares = []
    for keep in (0.55, 0.7, 0.85):
        decoded = decode_image(io.BytesIO(data[: int(len(data) * keep)]), 224)
        shares.append(int(decoded.damage.split("bottom ")[1].split("%")[0]))
    assert shares == sorted(shares, reverse=True) and all(5 <= s <= 50 for s in shares), shares
    assert decode_image(io.BytesIO(data), 224).damage is None
    assert Image.open(io.BytesIO(data)).size == (640, 480)


def test_a_heic_cut_short_fails_in_one_line(tmp_path, cli):
    import pytest

    from clipsearch.photos import formats

    if not formats.heif_available():
        pytest.skip("pillow-heif (the heic extra) not installed")
    formats.prepare_decoders()
    root = tmp_path / "photos"
    photo = cut(save(scene(7), root / "IMG_0001.HEIC", quality=80), 0.8)
    result = cli("index", str(root), "--workers", "1")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(photo) in warnings[0] and "1 failed" in result.stderr, result.stderr
    assert "Unexpected end of file" in warnings[0]
