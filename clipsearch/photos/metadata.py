"""What a photo already says about itself: capture time (and where that came from), camera
make and model, lens, GPS position, upright size, keywords and rating, read from an image
Pillow has opened from bytes already in memory (EXIF, embedded XMP, IPTC: no second read of
the file, no other process), then from its XMP sidecars, whose keywords and rating win.

Everything here is untrusted input written by every kind of software: a value that is absent,
malformed or out of range leaves its field empty (and is named in `problems`), never an
exception, never a guess. The file's mtime is never taken for a capture time. XMP is parsed by
`sidecars.py` (defusedxml: no DTDs, entities or external references; size capped).
`photo_record` never raises: whatever goes wrong (a hostile packet, an unreadable sidecar, a
reader that cannot be imported) leaves fields empty and a line in `problems`, which the cache
keeps with the readers' versions so the photo's metadata is read again when they change. A
photo's vector never depends on its metadata.

The indexing worker reads it with each photo it embeds (and, for photos cached before,
from their headers alone); the cache keeps it in `photo_meta` with the file and sidecar
versions it came from (`sidecar_stamp`), so a sidecar that changes alone is read again.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

EXIF_IFD, GPS_IFD = 0x8769, 0x8825
MAKE, MODEL, DATETIME = 0x010F, 0x0110, 0x0132
DATETIME_ORIGINAL, CREATE_DATE, OFFSET_ORIGINAL, OFFSET_CREATE, OFFSET_DATETIME = 0x9003, 0x9004, 0x9011, 0x9012, 0x9010
SUBSEC_ORIGINAL, SUBSEC_CREATE, SUBSEC_DATETIME = 0x9291, 0x9292, 0x9290
LENS_MODEL = 0xA434
MAX_TEXT = 200  # a camera or lens name, a keyword: longer is not a name

_EXIF_DATE = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})$")
_XMP_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
                       r"(Z|[+-]\d{2}:\d{2})?)?)?)?$")
_OFFSET = re.compile(r"^[+-](\d{2}):(\d{2})$")


@dataclass
class PhotoMeta:
    taken_at: str | None = None  # ISO 8601, local time of the camera, "+hh:mm" when known
    taken_source: str | None = None  # which field it came from, e.g. "exif:DateTimeOriginal"
    make: str | None = None
    model: str | None = None
    lens: str | None = None
    lat: float | None = None
    lon: float | None = None
    width: int | None = None  # after the EXIF orientation
    height: int | None = None
    keywords: list[str] = field(default_factory=list)
    rating: int | None = None  # xmp:Rating, -1 (rejected) to 5
    problems: list[str] = field(default_factory=list)  # fields left empty for a bad value


def read_photo_meta(img, upright_size: tuple[int, int] | None = None) -> PhotoMeta:
    """Everything the opened image's own headers say (never raises)."""
    meta = PhotoMeta()
    if upright_size:
        meta.width, meta.height = upright_size
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001 - a damaged EXIF block is simply absent
        exif = {}
        meta.problems.append("EXIF unreadable")
    _read_exif(exif, meta)
    xmp = _embedded_xmp(img)
    if xmp:
        apply_xmp(meta, xmp, "xmp")
    if not meta.keywords:
        meta.keywords = _iptc_keywords(img)
    return meta


def apply_sidecar(meta: PhotoMeta, sidecar_bytes: bytes) -> None:
    """A sidecar's keywords and rating replace the embedded ones; its date fills a gap only."""
    apply_xmp(meta, sidecar_bytes, "sidecar", sidecar_wins=True)


# -- EXIF --------------------------------------------------------------------------------------

def _read_exif(exif, meta: PhotoMeta) -> None:
    try:
        sub = exif.get_ifd(EXIF_IFD) if hasattr(exif, "get_ifd") else {}
    except Exception:  # noqa: BLE001
        sub = {}
    meta.make = _text(exif.get(MAKE))
    meta.model = _text(exif.get(MODEL))
    meta.lens = _text(sub.get(LENS_MODEL))
    for tag, subsec, offset, source in ((DATETIME_ORIGINAL, SUBSEC_ORIGINAL, OFFSET_ORIGINAL, "exif:DateTimeOriginal"),
                                        (CREATE_DATE, SUBSEC_CREATE, OFFSET_CREATE, "exif:CreateDate")):
        taken = exif_datetime(sub.get(tag), sub.get(subsec), sub.get(offset))
        if taken:
            meta.taken_at, meta.taken_source = taken, source
            break
        if sub.get(tag) not in (None, "") and not _blank_date(sub.get(tag)):
            meta.problems.append(f"{source} {str(sub.get(tag))[:40]!r} is not a date")
    else:
        taken = exif_datetime(exif.get(DATETIME), sub.get(SUBSEC_DATETIME), sub.get(OFFSET_DATETIME))
        if taken:
            meta.taken_at, meta.taken_source = taken, "exif:DateTime"
    try:
        gps = exif.get_ifd(GPS_IFD) if hasattr(exif, "get_ifd") else {}
    except Exception:  # noqa: BLE001
        gps = {}
    if gps:
        lat, lon = _coordinate(gps.get(2), gps.get(1), "NS", 90), _coordinate(gps.get(4), gps.get(3), "EW", 180)
        if lat is not None and lon is not None:
            meta.lat, meta.lon = lat, lon
        elif gps.get(2) is not None or gps.get(4) is not None:
            meta.problems.append("GPS position unreadable or out of range")


def exif_datetime(value, subsec=None, offset=None) -> str | None:
    """EXIF "YYYY:MM:DD HH:MM:SS" (+ sub-seconds, + "+hh:mm") -> ISO 8601, or None."""
    text = _text(value)
    match = _EXIF_DATE.match(text or "")
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    if not _valid(year, month, day, hour, minute, second):
        return None
    iso = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    digits = re.sub(r"\D", "", _text(subsec) or "")[:6]
    if digits:
        iso += "." + digits
    return iso + (_offset(_text(offset)) or "")


def _blank_date(value) -> bool:
    text = (_text(value) or "").strip(" :0")
    return not text


def _valid(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> bool:
    import calendar

    if not (1800 <= year <= 2200 and 1 <= month <= 12 and 0 <= hour <= 23 and 0 <= minute <= 59 and 0 <= second <= 60):
        return False
    return 1 <= day <= calendar.monthrange(year, month)[1]


def _offset(text: str | None) -> str | None:
    match = _OFFSET.match(text or "")
    if match and int(match.group(1)) <= 14 and int(match.group(2)) < 60:
        return text
    return None


def _coordinate(value, ref, hemispheres: str, limit: float) -> float | None:
    """Degrees, minutes, seconds as rationals (+ N/S or E/W) -> signed decimal degrees."""
    try:
        parts = [float(part) for part in value]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    # Exactly 60 minutes or seconds is a rounding artefact of real cameras and apps (41/1 8/1
    # 60/1): normalised as ExifTool does (41 9 0), not a reason to drop the position.
    if len(parts) != 3 or not all(math.isfinite(p) and p >= 0 for p in parts) or parts[1] > 60 or parts[2] > 60:
        return None
    degrees = parts[0] + parts[1] / 60 + parts[2] / 3600
    ref = (_text(ref) or "").upper()[:1]
    if ref not in hemispheres or degrees > limit:
        return None
    return round(-degrees if ref == hemispheres[1] else degrees, 7)


def _text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value[:MAX_TEXT] or None


# -- XMP and IPTC ------------------------------------------------------------------------------

def _embedded_xmp(img) -> bytes | None:
    for key in ("xmp", "XML:com.adobe.xmp"):
        data = img.info.get(key)
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        if isinstance(data, bytes) and data:
            return data
    return None


def apply_xmp(meta: PhotoMeta, data: bytes, where: str, sidecar_wins: bool = False) -> None:
    from .sidecars import NS, SidecarError, parse_xmp

    try:
        xmp = parse_xmp(data)
    except SidecarError as exc:
        meta.problems.append(f"{where} XMP ignored: {exc}")
        return
    except ImportError as exc:  # defusedxml broken or removed: the photo keeps its vector
        meta.problems.append(f"{where} XMP not read ({type(exc).__name__}: {exc})")
        return
    keywords = _dedupe(xmp.keywords("dc:subject")
                       + [k.replace("|", "/") for k in xmp.keywords("lr:hierarchicalSubject")]
                       + xmp.keywords("digiKam:TagsList"))
    if keywords and (sidecar_wins or not meta.keywords):
        meta.keywords = keywords
    rating = _rating(xmp.value(NS["xmp"], "Rating"))
    if rating is not None and (sidecar_wins or meta.rating is None):
        meta.rating = rating
    if meta.taken_at is None:
        for uri, name, source in ((NS["photoshop"], "DateCreated", "photoshop:DateCreated"),
                                  (NS["xmp"], "CreateDate", "xmp:CreateDate")):
            taken = xmp_datetime(xmp.value(uri, name))
            if taken:
                meta.taken_at, meta.taken_source = taken, f"{where}:{source}"
                break


def xmp_datetime(value: str | None) -> str | None:
    """XMP dates ("2019", "2019-07", "2019-07-14", "2019-07-14T18:03[:11[.25]][Z|+02:00]") ->
    ISO 8601 as given (a partial date stays partial), or None."""
    match = _XMP_DATE.match((value or "").strip())
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    if not _valid(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0)):
        return None
    if zone and zone != "Z" and not _offset(zone):
        return None
    return value.strip()


def _rating(value: str | None) -> int | None:
    try:
        rating = int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None
    return rating if -1 <= rating <= 5 else None


def _iptc_keywords(img) -> list[str]:
    """IPTC-IIM keywords (2:25), the field older tools wrote."""
    try:
        from PIL import IptcImagePlugin

        info = IptcImagePlugin.getiptcinfo(img) or {}
    except Exception:  # noqa: BLE001 - damaged IPTC is simply absent
        return []
    raw = info.get((2, 25))
    values = raw if isinstance(raw, list) else [raw] if raw else []
    return _dedupe([_text(value) for value in values])


def _dedupe(values) -> list[str]:
    seen, out = set(), []
    for value in values:
        value = _text(value)
        if value and value.lower() not in seen:
            seen.add(value.lower())
            out.append(value)
    return out


def embedded_keyword_fields(photo: bytes) -> dict[str, list[str]]:
    """The keywords a photo carries inside itself, field by field (`sidecars.FIELDS`; IPTC
    keywords count as dc:subject), read from its headers without decoding pixels. What a
    sidecar `tag` creates must carry too: a sidecar wins over the photo, so one holding only
    the new keyword would hide the photo's own. Unreadable headers: nothing (never raises)."""
    import warnings

    from PIL import Image

    from .formats import photo_formats, prepare_decoders
    from .sidecars import FIELDS, SidecarError, parse_xmp

    found: dict[str, list[str]] = {}
    prepare_decoders()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(photo, formats=photo_formats()) as img:
                xmp = _embedded_xmp(img)
                if xmp:
                    try:
                        packet = parse_xmp(xmp)
                        found = {field: _dedupe(packet.keywords(field)) for field in FIELDS}
                    except (SidecarError, ImportError):
                        found = {}
                iptc = _iptc_keywords(img)
        except Exception:  # noqa: BLE001 - an unreadable photo has no keywords to carry over
            return {}
    if iptc:
        found["dc:subject"] = _dedupe([*found.get("dc:subject", []), *iptc])
    return {field: values for field, values in found.items() if values}


def photo_record(img, upright_size: tuple[int, int] | None, photo: bytes, sidecars=None,
                 companion: bytes | None = None) -> tuple[dict, str]:
    """The cache's record of a photo (its own headers, then its sidecars and those of the RAW
    it is paired with), and the stamp of the sidecars it read. `sidecars`: (path, size,
    mtime_ns, bytes or None) read already (on the machine that has the files); by default they
    are found and read here."""
    from dataclasses import asdict

    found: list = []
    try:
        meta = read_photo_meta(img, upright_size)
        if sidecars is None:
            sidecars = read_sidecars(photo, companion)
        found = [(path, size, mtime) for path, size, mtime, _ in sidecars]
        for path, _, _, data in sidecars:
            if not isinstance(data, bytes):
                meta.problems.append(f"sidecar {_name(path)} unreadable ({data or 'read error'})")
            else:
                apply_sidecar(meta, data)
    except Exception as exc:  # noqa: BLE001 - whatever breaks here, the photo keeps its vector
        meta = PhotoMeta()
        if upright_size:
            meta.width, meta.height = upright_size
        meta.problems.append(f"metadata not read ({type(exc).__name__}: {str(exc)[:200]})")
    record = asdict(meta)
    record["taken_key"] = taken_key(meta.taken_at)
    if meta.problems:
        from .readers import metadata_readers

        record["readers"] = metadata_readers()
    return record, sidecar_stamp(found)


def _name(path: bytes) -> str:
    import os

    return os.path.basename(path).decode("utf-8", "replace")


MAX_SIDECAR_READ = 8 << 20


def read_sidecars(photo: bytes, companion: bytes | None = None) -> list[tuple]:
    """(path, size, mtime_ns, bytes) of the photo's sidecars, read once (up to one byte over the
    limit, so an oversized one is refused without reading it all); an unreadable one carries
    the reason (a str) instead of its bytes. Here, or where the files are for a cluster run."""
    sidecars = []
    for path, size, mtime in sidecar_files(photo, companion):
        try:
            with open(path, "rb") as f:
                sidecars.append((path, size, mtime, f.read(MAX_SIDECAR_READ + 1)))
        except OSError as exc:
            sidecars.append((path, size, mtime, exc.strerror or "read error"))
    return sidecars


def sidecar_files(photo: bytes, companion: bytes | None = None) -> list[tuple[bytes, int, int]]:
    """(path, size, mtime_ns) of the photo's sidecars (and its paired RAW's), the Adobe name
    first, so a digiKam/darktable name (`photo.jpg.xmp`, what Immich prefers too) is applied
    later and wins; the RAW's own (`IMG_0001.CR2.xmp`) last, where a photographer's edits live."""
    import os

    from .sidecars import sidecar_paths

    paths = list(sidecar_paths(photo))
    if companion:
        paths += [path for path in sidecar_paths(companion) if path not in paths]

    def order(path: bytes) -> int:
        lower = path.lower()
        if companion and lower.endswith(os.path.basename(companion).lower() + b".xmp"):
            return 2
        return int(lower.endswith(os.path.basename(photo).lower() + b".xmp"))

    found = []
    for path in sorted(paths, key=order):
        try:
            st = os.stat(path)
        except OSError:
            continue
        found.append((path, st.st_size, st.st_mtime_ns))
    return found


def sidecar_stamp(found) -> str:
    """Which sidecar versions a record was read from: names, sizes, mtimes ("" for none)."""
    import os

    # Lower-cased names: the walk and the worker must agree on a case-insensitive share too.
    return ";".join(sorted(f"{os.path.basename(path).lower().decode('utf-8', 'replace')}:{size}:{mtime}"
                           for path, size, mtime in found))


def taken_key(taken_at: str | None) -> float | None:
    """A sortable number for a capture time: its wall-clock time on the camera as seconds since
    1970 (the offset is left out, so "the photos of Christmas Eve" mean the camera's evening)."""
    if not taken_at:
        return None
    import datetime as dt

    text = re.sub(r"(Z|[+-]\d{2}:\d{2})$", "", taken_at)
    for form in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d", "%Y-%m", "%Y"):
        try:
            moment = dt.datetime.strptime(text, form)
        except ValueError:
            continue
        return (moment - dt.datetime(1970, 1, 1)).total_seconds()
    return None
