"""A photo's perceptual print: what `duplicates` compares to find the same picture in another
file (re-encoded, resized, converted, turned by metadata or in its pixels, lightly cropped or
toned), computed from the pixels the embedding pass already holds.

The print is made from the 16 x 16 lowest-frequency DCT coefficients of the upright picture in
grey, shrunk to 64 x 64: their signs (32 bytes) and which of them are strong, at least the
median magnitude (32 bytes). Signs, not a threshold at the median as pHash takes: a
brightness offset moves only the DC coefficient and a contrast or exposure gain scales every
coefficient, so neither changes a sign; and a picture turned by 90 degrees or mirrored has the
transposed coefficients with the signs of the odd rows or columns flipped, so the print of
every turn and mirror is computed from the stored bits alone (`dihedral`), and a copy turned in
its pixels is found without storing eight prints. Two prints are compared on the coefficients
strong in both (`distance`, a fraction): a weak coefficient's sign is noise that a re-encode
flips (measured on public photos: comparing all 255 signs, a JPEG re-encode differed by up to
92 bits, the same as unrelated pictures; on the strong ones by at most 21%, against 32% or
more for another shot of the same scene). The DC sign (always +) holds instead whether the
picture is flat (`is_flat`): a grey square, a black frame, a picture whose structure is below
`FLAT_CONTRAST` grey levels has no print worth comparing (a library of a hundred thousand grey
squares must not become one group).

Candidates are found through exact keys (`keys`): the signs of the 21 lowest frequencies read
at three thresholds (0 and plus or minus the median magnitude, so a coefficient near one of
them leaves the other two keys alone), and the signs of the next 42 in two slices.
docs/design.md "Duplicates" has the measured recall and precision; the cost is about 0.2 ms a
photo (`bench/duplicates.py`), well under 1% of indexing one.
"""
from __future__ import annotations

import functools

import numpy as np

SIDE = 64  # the grey picture the DCT runs on
BLOCK = 16  # the print holds the BLOCK x BLOCK lowest frequencies
BITS = BLOCK * BLOCK
BYTES = 2 * BITS // 8  # signs, then strengths
FLAT_CONTRAST = 2.0  # std of the 64 x 64 grey picture (levels) under which a picture is flat
VERSION = "dct16-signs-strength-v1"  # kept with the prints: another version is made again


@functools.cache
def _dct_matrix() -> np.ndarray:
    """The first BLOCK rows of the orthonormal DCT-II matrix of size SIDE."""
    k = np.arange(BLOCK)[:, None]
    n = np.arange(SIDE)[None, :]
    matrix = np.cos(np.pi * (2 * n + 1) * k / (2 * SIDE)) * np.sqrt(2.0 / SIDE)
    matrix[0] /= np.sqrt(2.0)
    return matrix.astype(np.float32)


def print_of(image) -> bytes:
    """The 64-byte print of an upright PIL image (any mode)."""
    from PIL import Image

    grey = image.convert("L").resize((SIDE, SIDE), Image.Resampling.BOX, reducing_gap=None)
    pixels = np.asarray(grey, dtype=np.float32)
    dct = _dct_matrix()
    coefficients = (dct @ (pixels - pixels.mean()) @ dct.T).reshape(-1)
    magnitude = np.abs(coefficients[1:])
    signs = coefficients > 0
    strong = np.r_[False, magnitude >= np.median(magnitude)]
    signs[0] = float(pixels.std()) < FLAT_CONTRAST  # the DC place holds the flat mark
    return np.packbits(np.r_[signs, strong]).tobytes()


def as_array(prints: list[bytes] | bytes) -> np.ndarray:
    data = b"".join(prints) if isinstance(prints, list) else prints
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, BYTES)


def is_flat(prints: np.ndarray) -> np.ndarray:
    """Which of these prints ([n, 64] uint8) belong to flat pictures."""
    return (prints[:, 0] & 0x80) != 0


# Each of the 8 turns and mirrors of a picture as (transpose, flip rows, flip columns): the
# DCT of a picture flipped along an axis has the signs of that axis's odd frequencies flipped.
DIHEDRAL = ((False, False, False), (True, True, False), (False, True, True), (True, False, True),
            (False, False, True), (False, True, False), (True, False, False), (True, True, True))


def dihedral(prints: np.ndarray, turns=range(8)) -> np.ndarray:
    """[len(turns), n, 64] uint8: the prints of these turns and mirrors of each picture (turn
    0: as is; `DIHEDRAL` lists them)."""
    bits = np.unpackbits(prints, axis=1).reshape(-1, 2, BLOCK, BLOCK)
    signs, strong = bits[:, 0], bits[:, 1]
    odd = (np.arange(BLOCK) % 2).astype(np.uint8)
    out = []
    for transpose, flip_rows, flip_columns in (DIHEDRAL[turn] for turn in turns):
        s = signs.transpose(0, 2, 1) if transpose else signs
        m = strong.transpose(0, 2, 1) if transpose else strong
        if flip_rows:  # the picture mirrored top to bottom: odd vertical frequencies change sign
            s = s ^ odd[None, :, None]
        if flip_columns:
            s = s ^ odd[None, None, :]
        s = s.copy()
        s[:, 0, 0] = signs[:, 0, 0]  # the flat mark is not a coefficient
        out.append(np.packbits(np.concatenate([s.reshape(len(prints), -1), m.reshape(len(prints), -1)], axis=1),
                               axis=1))
    return np.stack(out)


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The share of the coefficients strong in both prints whose signs differ (0 to 1)."""
    half = BYTES // 2
    both = np.bitwise_and(a[..., half:], b[..., half:])
    differ = np.bitwise_and(np.bitwise_xor(a[..., :half], b[..., :half]), both)
    shared = _POPCOUNT[both].sum(axis=-1, dtype=np.int32)
    return _POPCOUNT[differ].sum(axis=-1, dtype=np.int32) / np.maximum(shared, 1)


# The coefficients by frequency (zigzag order, DC left out): keys read the lowest ones.
ZIGZAG = np.array([r * BLOCK + c for _, r, c in sorted((r + c, r, c) for r in range(BLOCK) for c in range(BLOCK))][1:])
KEY_BITS = 21
TABLES = 5


def keys(prints: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """[n, TABLES] int32 exact keys of KEY_BITS bits: the 21 lowest frequencies' signs at
    thresholds 0, +median and -median magnitude, then the next 21 and the 21 after, by sign.
    Made `chunk` prints at a time (the bits of a million prints unpacked would take 650 MB)."""
    out = np.empty((len(prints), TABLES), dtype=np.int32)
    low, next1, next2 = ZIGZAG[:KEY_BITS], ZIGZAG[KEY_BITS:2 * KEY_BITS], ZIGZAG[2 * KEY_BITS:3 * KEY_BITS]
    for start in range(0, len(prints), chunk):
        bits = np.unpackbits(prints[start : start + chunk], axis=1).view(bool)
        signs, strong = bits[:, :BITS], bits[:, BITS:]
        tables = (signs[:, low], signs[:, low] & strong[:, low], signs[:, low] | ~strong[:, low],
                  signs[:, next1], signs[:, next2])
        for t, table in enumerate(tables):
            packed = np.packbits(table, axis=1, bitorder="big")  # 21 bits -> 3 bytes, the last 3 bits 0
            out[start : start + chunk, t] = (packed[:, 0].astype(np.int32) << 13 | packed[:, 1].astype(np.int32) << 5
                                             | packed[:, 2].astype(np.int32) >> 3)
    return out
