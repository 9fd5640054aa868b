"""`clipsearch duplicates`: groups of photos that are the same picture, from what the index
already holds, best copy first, with the evidence for every member. Nothing here deletes or
moves a file; `--tag` hands the non-best members to the tag machinery as a keyword.

Three kinds, each a pass over columns of the cache (never all pairs of the library):
- exact: byte-identical files. Candidates share size and content fingerprint (`index/embed`:
  sha256 of size, first and last 64 KiB); each candidate group is confirmed by hashing the
  files whole.
- same: the same picture re-encoded, resized, converted, turned, lightly cropped or toned
  (`photos/prints.py`). Candidates share one of the print's exact keys (`prints.keys`), for
  each of the 8 turns and mirrors; a key value shared by more than `BUCKET_CAP` photos is not
  a candidate source on its own (the other keys still are). A candidate pair is kept when the
  signs of at most `SAME_SHARE` of the coefficients strong in both differ.
  Flat pictures (a grey square, a black frame) have no print worth comparing: exact only.
- burst: frames of one moment: the same camera, taken at most `BURST_SECONDS` apart, and
  close in the model's space (cosine at least the model's measured `burst_cosine`, from its
  manifest or `--burst-cosine`). A model without one (random weights, a model nobody
  measured) has no burst groups, and the report says so.
Groups are the connected parts of the kept pairs of one kind; a photo in an exact or same
group is not also put in a burst group.
`find_duplicates` reads a whole library (`cache/library.Library`: every shard's columns
together, members by global id) or one database alike.

The thresholds and their measured precision and recall: docs/design.md "Duplicates".
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

from clipsearch.photos import prints

BUCKET_CAP = 64
SAME_SHARE = 0.2  # docs/design.md "Duplicates": measured
BURST_SECONDS = 10.0
BURST_WINDOW = 60  # frames compared at most after each, in time order (a 20 fps burst: 3 s)
KINDS = ("exact", "same", "burst")
# Formats a camera or phone writes (the original) rather than a conversion or an export.
ORIGINAL_FORMATS = {b".jpg", b".jpeg", b".heic", b".heif", b".hif", b".mpo"}


@dataclass
class Group:
    kind: str
    members: list[int]  # row ids, best first
    evidence: dict[int, dict] = field(default_factory=dict)  # member -> how it relates to the best


@dataclass
class Report:
    groups: list[Group]
    notes: list[str]
    details: dict[int, dict]  # row id -> path, size, pixels, ... (`store.duplicate_details`)


def find_duplicates(store, kinds=KINDS, under: list[bytes] | None = None, burst_cosine: float | None = None) -> Report:
    columns = store.print_columns(under)
    notes: list[str] = []
    groups: list[Group] = []
    taken: set[int] = set()
    exact = exact_groups(store, columns) if "exact" in kinds or "same" in kinds else []
    identical = {m: n for n, g in enumerate(exact) for m in g.members}  # member -> its exact group
    if "same" in kinds:
        unprinted = int(len(columns["id"]) - columns["has_print"].sum())
        if unprinted:
            notes.append(f"{unprinted} photos have no print yet: run `clipsearch index` once (it decodes them, "
                         "never re-embeds) to compare them too")
        same = same_groups(columns)
        # Byte-identical copies of a picture found in other forms too are one group of it.
        inside = {m for g in same for m in g.members}
        exact = [g for g in exact if not set(g.members) <= inside]
        groups += same
    if "exact" in kinds:
        groups += exact
    for group in groups:
        taken.update(group.members)
    if "burst" in kinds:
        if burst_cosine is None:
            notes.append("no burst groups: this model has no measured burst threshold (its manifest's "
                         "`burst_cosine`); give one with --burst-cosine")
        else:
            groups += burst_groups(store, burst_cosine, taken, set(columns["id"].tolist()) if under else None)
    details = store.duplicate_details(sorted({m for g in groups for m in g.members}))
    companions = store.companions_of(list(details))
    for group in groups:
        group.members = [m for m in group.members if m in details]
        group.members.sort(key=lambda m: best_key(details[m], m in companions))
        if group.members:
            relate_to_best(group, identical)
    groups = [g for g in groups if len(g.members) > 1]
    groups.sort(key=lambda g: (KINDS.index(g.kind), os.fsdecode(details[g.members[0]]["path"])))
    return Report(groups, notes, details)


def best_key(detail: dict, has_raw: bool) -> tuple:
    """Largest picture first, then an original format (a RAW beside it counts) over a derived
    one, then the one that says most about itself, then the oldest file."""
    pixels = (detail["width"] or 0) * (detail["height"] or 0)
    original = has_raw or os.path.splitext(detail["path"])[1].lower() in ORIGINAL_FORMATS
    return (-pixels, not original, -detail["facts"], detail["mtime_ns"], detail["path"])


# -- exact -------------------------------------------------------------------------------------

def exact_groups(store, columns) -> list[Group]:
    sizes, heads, ids = columns["size"], columns["head"], columns["id"]
    order = np.lexsort((heads, sizes))
    keys = np.stack([sizes[order], heads[order]], axis=1)
    starts = np.flatnonzero(np.r_[True, np.any(keys[1:] != keys[:-1], axis=1)])
    ends = np.r_[starts[1:], len(order)]
    groups = []
    for start, end in zip(starts, ends):
        if end - start < 2:
            continue
        candidates = [int(i) for i in ids[order[start:end]]]
        by_content: dict[bytes, list[int]] = {}
        paths = store.paths_of(candidates)
        for row_id in candidates:
            digest = whole_file_digest(paths.get(row_id))
            if digest is not None:
                by_content.setdefault(digest, []).append(row_id)
        groups += [Group("exact", members) for members in by_content.values() if len(members) > 1]
    return groups


def whole_file_digest(path: bytes | None) -> bytes | None:
    if path is None:
        return None
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.digest()


# -- same --------------------------------------------------------------------------------------

def same_groups(columns) -> list[Group]:
    ids = columns["id"]
    usable = columns.pop("has_print") & ~prints.is_flat(columns["print"])
    # The prints leave `columns` here: nothing after this pass needs them (a million photos: 64 MB).
    table = columns.pop("print")
    if not usable.all():
        ids, table = ids[usable], table[usable]
    if len(ids) < 2:
        return []
    i, j, turn, share = matching_pairs(table)
    found = stars(i, j)
    evidence = {}
    for a, b, k, d in zip(i, j, turn, share):
        evidence.setdefault(int(a), {})[int(b)] = (round(float(d), 3), int(k))
        evidence.setdefault(int(b), {})[int(a)] = (round(float(d), 3), int(k))
    groups = []
    for members in found:
        group = Group("same", [int(ids[m]) for m in members])
        group.evidence = {"_pairs": {(int(ids[a]), int(ids[b])): value for a in members
                                     for b, value in evidence.get(a, {}).items()}}
        groups.append(group)
    return groups


CHUNK = 32768  # photos whose turned prints are made at once: bounds the memory of a pass


def matching_pairs(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, turn, share) for the photos i whose print turned by `turn` shares an exact key
    with photo j's and differs from it by at most SAME_SHARE. Candidates are checked as they
    are found, chunk by chunk, turn by turn: only the matches are kept (a million photos make
    tens of millions of candidates)."""
    base_keys = prints.keys(table)
    tables = []
    for t in range(base_keys.shape[1]):
        order = np.argsort(base_keys[:, t], kind="stable").astype(np.int32)
        tables.append((order, base_keys[order, t]))
    found = []
    for turn in range(8):
        for start in range(0, len(table), CHUNK):
            turned = prints.dihedral(table[start : start + CHUNK], (turn,))[0]
            turned_keys = prints.keys(turned)
            candidates = []
            for t, (order, sorted_keys) in enumerate(tables):
                candidates.append(key_matches(turned_keys[:, t], order, sorted_keys) + np.array([start, 0]))
            pairs = np.concatenate(candidates)
            code = np.unique(pairs[:, 0] * len(table) + pairs[:, 1])  # one row per pair, sorted
            i, j = np.divmod(code, len(table))
            keep = (i < j) if turn == 0 else (i != j)
            i, j = i[keep], j[keep]
            share = prints.distance(turned[i - start], table[j])
            close = share <= SAME_SHARE
            found.append((i[close], j[close], np.full(int(close.sum()), turn), share[close]))
    i, j, turn, share = (np.concatenate(part) for part in zip(*found))
    if not len(i):  # no copies at all (a library without duplicates)
        return i, j, turn, share
    # One turn per pair: the closest.
    order = np.lexsort((share, np.maximum(i, j), np.minimum(i, j)))
    i, j, turn, share = i[order], j[order], turn[order], share[order]
    first = np.r_[True, (np.minimum(i, j)[1:] != np.minimum(i, j)[:-1]) | (np.maximum(i, j)[1:] != np.maximum(i, j)[:-1])]
    return i[first], j[first], turn[first], share[first]


def key_matches(wanted: np.ndarray, order: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """[m, 2] (row of `wanted`, photo) for every photo whose key equals the wanted one, in
    buckets of at most BUCKET_CAP photos."""
    left = np.searchsorted(sorted_keys, wanted, "left")
    right = np.searchsorted(sorted_keys, wanted, "right")
    width = right - left
    hit = np.flatnonzero((width > 0) & (width <= BUCKET_CAP))
    if not len(hit):
        return np.empty((0, 2), dtype=np.int64)
    counts = width[hit]
    rows = np.repeat(hit, counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.stack([rows, order[np.repeat(left[hit], counts) + offsets]], axis=1).astype(np.int64)


def stars(a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    """Groups without chaining: the photo with the most matches leads a group of its own
    matches, and so on with the photos left. Connected parts would let a chain of near pairs
    (every photo with the same white border, say) join pictures that are nothing alike
    (measured: precision over grouped pairs 0.48 as connected parts on the public photos)."""
    neighbours: dict[int, set[int]] = {}
    for x, y in zip(a.tolist(), b.tolist()):
        neighbours.setdefault(x, set()).add(y)
        neighbours.setdefault(y, set()).add(x)
    placed: set[int] = set()
    groups = []
    for leader in sorted(neighbours, key=lambda node: (-len(neighbours[node]), node)):
        if leader in placed:
            continue
        members = [leader] + sorted(neighbours[leader] - placed)
        placed.update(members)
        if len(members) > 1:
            groups.append(members)
    return groups


def components(n: int, a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    """The connected parts (of two or more) of the graph on n nodes with edges a-b."""
    parent = np.arange(n)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a.tolist(), b.tolist()):
        rx, ry = root(x), root(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    parts: dict[int, list[int]] = {}
    for x in np.unique(np.concatenate([a, b])).tolist():
        parts.setdefault(root(x), []).append(x)
    return [members for members in parts.values() if len(members) > 1]


# -- burst -------------------------------------------------------------------------------------

def burst_groups(store, threshold: float, taken: set[int], allowed: set[int] | None) -> list[Group]:
    columns = store.burst_columns()
    ids, times, cameras = columns["id"], columns["time"], columns["camera"]
    pairs = []
    for offset in range(1, BURST_WINDOW + 1):
        if offset >= len(ids):
            break
        close = (times[offset:] - times[:-offset] <= BURST_SECONDS) & (cameras[offset:] == cameras[:-offset])
        if not close.any():
            break
        hit = np.flatnonzero(close)
        pairs.append(np.stack([hit, hit + offset], axis=1))
    if not pairs:
        return []
    pairs = np.concatenate(pairs)
    keep = [k for k, (a, b) in enumerate(pairs.tolist())
            if ids[a] not in taken and ids[b] not in taken and (allowed is None or (ids[a] in allowed and ids[b] in allowed))]
    pairs = pairs[keep]
    if not len(pairs):
        return []
    vectors = store.unit_vectors(sorted({int(ids[x]) for x in pairs.reshape(-1)}))
    cosines = np.array([float(vectors[int(ids[a])] @ vectors[int(ids[b])]) for a, b in pairs.tolist()])
    close = cosines >= threshold
    groups = []
    for members in components(len(ids), pairs[close, 0], pairs[close, 1]):
        group = Group("burst", [int(ids[m]) for m in members])
        group.evidence = {"_pairs": {(int(ids[a]), int(ids[b])): (round(float(c), 4), round(float(times[b] - times[a]), 2))
                                     for (a, b), c in zip(pairs[close].tolist(), cosines[close])
                                     if a in members}}
        groups.append(group)
    return groups


def relate_to_best(group: Group, identical: dict[int, int]) -> None:
    """Evidence per member against the best copy: what the pair that joined them showed."""
    pairs = group.evidence.pop("_pairs", {})
    best = group.members[0]
    evidence = {best: {"best": True}}
    for member in group.members[1:]:
        if group.kind == "exact" or identical.get(member, -1) == identical.get(best, -2):
            evidence[member] = {"identical_bytes": True}
            continue
        # Its link to the best copy, or (joined through another member) its own link.
        found = pairs.get((best, member)) or pairs.get((member, best)) or next(
            v for (a, b), v in pairs.items() if member in (a, b))
        if group.kind == "same":
            evidence[member] = {"print_difference": found[0], "turned": TURN_NAMES[found[1]]}
        else:
            evidence[member] = {"cosine": found[0], "seconds_apart": abs(found[1])}
    group.evidence = evidence


TURN_NAMES = ("no", "90°", "180°", "90°", "mirrored", "mirrored", "90° and mirrored", "90° and mirrored")
