"""`metadata.read_photo_meta` on real files written by the tests: EXIF dates with and without
offsets, GPS in all four hemispheres, camera and lens, embedded XMP and IPTC keywords, rating,
sidecars winning; and the bad cases (impossible dates, zero denominators, out-of-range
coordinates, malformed XMP, entity tricks), which leave a field empty and never raise."""
from __future__ import annotations

import io

import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from clipsearch.photos.metadata import PhotoMeta, apply_sidecar, exif_datetime, read_photo_meta, xmp_datetime

XMP = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
       '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
       'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" '
       'xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" xmlns:lr="http://ns.adobe.com/lightroom/1.0/" {attrs}>'
       '{body}</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>')


def bag(name: str, values) -> str:
    return f"<{name}><rdf:Bag>{''.join(f'<rdf:li>{v}</rdf:li>' for v in values)}</rdf:Bag></{name}>"


def jpeg(exif_tags: dict | None = None, sub: dict | None = None, gps: dict | None = None, xmp: str | None = None,
         size=(40, 30)) -> Image.Image:
    """A real JPEG written and opened again, as the indexer's worker opens it."""
    exif = Image.Exif()
    for tag, value in (exif_tags or {}).items():
        exif[tag] = value
    for tag, value in (sub or {}).items():
        exif.get_ifd(0x8769)[tag] = value
    for tag, value in (gps or {}).items():
        exif.get_ifd(0x8825)[tag] = value
    buffer = io.BytesIO()
    kwargs = {"exif": exif.tobytes()}
    if xmp is not None:
        kwargs["xmp"] = xmp.encode()
    Image.new("RGB", size, (90, 120, 200)).save(buffer, "JPEG", **kwargs)
    return Image.open(io.BytesIO(buffer.getvalue()))


def dms(degrees, minutes, seconds):
    return (IFDRational(degrees, 1), IFDRational(minutes, 1), IFDRational(int(seconds * 100), 100))


def test_capture_time_with_offset_and_subseconds_camera_and_lens():
    meta = read_photo_meta(jpeg({0x010F: "Canon", 0x0110: "Canon EOS 5D Mark IV", 0x0132: "2020:01:01 00:00:00"},
                                {0x9003: "2019:07:14 18:03:11", 0x9011: "+02:00", 0x9291: "25", 0xA434: "EF24-70mm"}),
                           (30, 40))
    assert (meta.taken_at, meta.taken_source) == ("2019-07-14T18:03:11.25+02:00", "exif:DateTimeOriginal")
    assert (meta.make, meta.model, meta.lens) == ("Canon", "Canon EOS 5D Mark IV", "EF24-70mm")
    assert (meta.width, meta.height) == (30, 40) and meta.problems == []


def test_the_date_falls_back_through_its_sources_and_never_to_the_file_time():
    assert read_photo_meta(jpeg(sub={0x9004: "2018:02:03 04:05:06"})).taken_source == "exif:CreateDate"
    assert read_photo_meta(jpeg({0x0132: "2017:02:03 04:05:06"})).taken_at == "2017-02-03T04:05:06"
    from_xmp = read_photo_meta(jpeg(xmp=XMP.format(attrs='photoshop:DateCreated="2016-05-04T03:02:01+09:00"', body="")))
    assert (from_xmp.taken_at, from_xmp.taken_source) == ("2016-05-04T03:02:01+09:00", "xmp:photoshop:DateCreated")
    assert read_photo_meta(jpeg()).taken_at is None


@pytest.mark.parametrize("bad", ["0000:00:00 00:00:00", "    :  :     :  :  ", "", "2019:13:01 10:00:00",
                                 "2019:02:30 10:00:00", "2019:01:01 25:00:00", "yesterday", "2019-07-14 18:03:11x"])
def test_impossible_dates_leave_the_field_empty(bad):
    meta = read_photo_meta(jpeg(sub={0x9003: bad, 0x9011: "+99:00"}))
    assert meta.taken_at is None
    assert exif_datetime(bad) is None


def test_an_impossible_offset_is_dropped_not_the_date():
    assert exif_datetime("2019:07:14 18:03:11", None, "+99:00") == "2019-07-14T18:03:11"
    assert exif_datetime("2019:07:14 18:03:11", "ab12", "-05:30") == "2019-07-14T18:03:11.12-05:30"


@pytest.mark.parametrize("lat_ref,lon_ref,sign", [("N", "E", (1, 1)), ("N", "W", (1, -1)), ("S", "E", (-1, 1)),
                                                  ("S", "W", (-1, -1))])
def test_gps_in_all_four_hemispheres(lat_ref, lon_ref, sign):
    meta = read_photo_meta(jpeg(gps={1: lat_ref, 2: dms(38, 43, 12.0), 3: lon_ref, 4: dms(9, 8, 24.0)}))
    assert meta.lat == pytest.approx(sign[0] * (38 + 43 / 60 + 12 / 3600))
    assert meta.lon == pytest.approx(sign[1] * (9 + 8 / 60 + 24 / 3600))


@pytest.mark.parametrize("gps", [
    {1: "N", 2: (IFDRational(38, 0), IFDRational(1, 1), IFDRational(1, 1)), 3: "E", 4: dms(9, 8, 24)},  # 0 denominator
    {1: "N", 2: dms(95, 0, 0), 3: "E", 4: dms(9, 8, 24)},  # latitude over 90
    {1: "N", 2: dms(38, 0, 0), 3: "E", 4: dms(181, 0, 0)},  # longitude over 180
    {1: "X", 2: dms(38, 0, 0), 3: "E", 4: dms(9, 0, 0)},  # no hemisphere
    {1: "N", 2: dms(38, 75, 0), 3: "E", 4: dms(9, 0, 0)},  # 75 minutes
])
def test_bad_gps_leaves_the_position_empty(gps):
    meta = read_photo_meta(jpeg(gps=gps))
    assert (meta.lat, meta.lon) == (None, None) and "GPS" in " ".join(meta.problems)


def test_keywords_and_rating_from_embedded_xmp_and_the_sidecar_wins():
    body = bag("dc:subject", ["beach", "Beach", "family"]) + bag("lr:hierarchicalSubject", ["places|Lisbon"])
    meta = read_photo_meta(jpeg(xmp=XMP.format(attrs='xmp:Rating="3"', body=body)))
    assert meta.keywords == ["beach", "family", "places/Lisbon"] and meta.rating == 3
    apply_sidecar(meta, XMP.format(attrs='xmp:Rating="5"', body=bag("dc:subject", ["sunset"])).encode())
    assert meta.keywords == ["sunset"] and meta.rating == 5


def test_iptc_keywords_when_there_is_no_xmp(tmp_path):
    from PIL import IptcImagePlugin  # noqa: F401 - the reader under test

    # An APP13 Photoshop block holding IPTC 2:25 twice, as older tools wrote it.
    records = b"".join(b"\x1c\x02\x19" + len(k).to_bytes(2, "big") + k for k in (b"holiday", b"Portugal"))
    resource = b"8BIM\x04\x04\x00\x00" + len(records).to_bytes(4, "big") + records
    app13 = b"Photoshop 3.0\x00" + resource
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buffer, "JPEG")
    data = buffer.getvalue()
    data = data[:2] + b"\xff\xed" + (len(app13) + 2).to_bytes(2, "big") + app13 + data[2:]
    meta = read_photo_meta(Image.open(io.BytesIO(data)))
    assert meta.keywords == ["holiday", "Portugal"]


@pytest.mark.parametrize("xmp", [
    "<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF",  # cut short
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><x>&b;</x>',
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
    "\udcff not text",
])
def test_hostile_xmp_is_ignored_with_a_note(xmp):
    meta = read_photo_meta(jpeg({0x010F: "Nikon"}, xmp=xmp.encode("utf-8", "surrogateescape").decode("utf-8", "replace")))
    assert meta.make == "Nikon" and meta.keywords == [] and meta.rating is None
    assert any("XMP ignored" in problem for problem in meta.problems)


def test_megabytes_of_xmp_are_refused_without_parsing():
    meta = PhotoMeta()
    apply_sidecar(meta, XMP.format(attrs="", body="<dc:description>" + "x" * (9 << 20) + "</dc:description>").encode())
    assert any("over the 8 MB" in problem for problem in meta.problems)


@pytest.mark.parametrize("value,expected", [("2019", "2019"), ("2019-07", "2019-07"), ("2019-07-14T18:03Z", "2019-07-14T18:03Z"),
                                            ("2019-13", None), ("2019-07-14T18:03:11+25:00", None), ("0000", None)])
def test_xmp_dates(value, expected):
    assert xmp_datetime(value) == expected
