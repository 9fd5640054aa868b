"""Metadata filters of `query` and `tag`: what `--after`, `--before`, `--camera`, `--near` +
`--within`, `--tag` and `--min-rating` mean, parsed once from the options, and the
great-circle distance the position filter needs. `search/select.matches` evaluates them; the
ranking then runs over the rows they keep only."""
from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass

from clipsearch.errors import UsageError

EARTH_RADIUS_M = 6_371_008.8
_DATE_FORMS = (("%Y-%m-%dT%H:%M:%S", "full"), ("%Y-%m-%dT%H:%M", "full"), ("%Y-%m-%d %H:%M:%S", "full"),
               ("%Y-%m-%d %H:%M", "full"), ("%Y-%m-%d", "day"), ("%Y-%m", "month"), ("%Y", "year"))


@dataclass(frozen=True)
class Filters:
    after: float | None = None  # taken_key >= (camera wall-clock seconds, see metadata.taken_key)
    before: float | None = None  # taken_key <, exclusive
    camera: str | None = None  # substring of make or model, any case
    near: tuple[float, float] | None = None
    within_m: float | None = None
    tags: tuple[str, ...] = ()  # keywords that must all be there, any case
    min_rating: int | None = None
    damaged: bool = False  # only photos indexed from the part of them that decodes

    @property
    def active(self) -> bool:
        return self.damaged or any(v not in (None, ()) for v in (self.after, self.before, self.camera, self.near,
                                                                 self.tags, self.min_rating))


def make_filters(after: str | None = None, before: str | None = None, camera: str | None = None,
                 near: str | None = None, within: str | None = None, tags=(), min_rating: int | None = None) -> Filters:
    """Filters from the command line's words; a bad value is a UsageError naming the option."""
    if within is not None and near is None:
        raise UsageError("--within needs --near LAT,LON")
    point = parse_point(near) if near is not None else None
    distance = parse_distance(within) if within is not None else (10_000.0 if point else None)
    start, end = (parse_date(after, "--after") if after else None), (parse_date(before, "--before") if before else None)
    if start is not None and end is not None and start >= end:
        raise UsageError(f"--after {after} is not before --before {before} (--before is exclusive): nothing can match")
    return Filters(start, end, camera.strip() if camera and camera.strip() else None, point, distance,
                   tuple(t.strip() for t in tags if t.strip()), min_rating)


def parse_date(text: str, option: str) -> float:
    """YYYY, YYYY-MM, YYYY-MM-DD or a full timestamp -> the start of that period, as the
    camera-clock seconds `metadata.taken_key` gives capture times."""
    for form, _ in _DATE_FORMS:
        try:
            moment = dt.datetime.strptime(text.strip(), form)
        except ValueError:
            continue
        return (moment - dt.datetime(1970, 1, 1)).total_seconds()
    raise UsageError(f"{option} {text!r}: give a date as YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]")


def parse_point(text: str) -> tuple[float, float]:
    try:
        lat, lon = (float(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--near {text!r}: give LAT,LON in decimal degrees, e.g. 38.72,-9.14") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise UsageError(f"--near {text!r}: latitude must be within -90..90, longitude within -180..180")
    return lat, lon


def parse_distance(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(km|m)\s*", text.lower())
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"--within {text!r}: give a distance such as 25km or 800m")
    return float(match.group(1)) * (1000 if match.group(2) == "km" else 1)


def bounding_box(point: tuple[float, float], metres: float) -> tuple[float, float, float, float]:
    """(lat_min, lat_max, lon_min, lon_max) holding every point within `metres` (for an index
    range first; the exact distance is checked after). Near a pole or across the date line it
    widens to all longitudes."""
    lat, lon = point
    dlat = math.degrees(metres / EARTH_RADIUS_M)
    lat_min, lat_max = max(-90.0, lat - dlat), min(90.0, lat + dlat)
    if lat_min <= -90 or lat_max >= 90:
        return lat_min, lat_max, -180.0, 180.0
    dlon = math.degrees(metres / (EARTH_RADIUS_M * math.cos(math.radians(max(abs(lat_min), abs(lat_max))))))
    if lon - dlon < -180 or lon + dlon > 180:
        return lat_min, lat_max, -180.0, 180.0
    return lat_min, lat_max, lon - dlon, lon + dlon


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine) in metres."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))
