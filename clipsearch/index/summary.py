"""What an index run did (`Summary`: its counts, what `index` prints and `runs` records) and
the one line about library folders it had to leave alone (`kept_empty_error`, exit 6).
Kept apart from the indexer, which fills it: the command line and the status read it too."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from clipsearch.errors import EmptyFolderError


@dataclass
class Summary:
    new: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    failed: int = 0
    unchanged: int = 0
    skipped: int = 0  # failed before and unchanged since, or no decoder installed for the format
    vanished: int = 0
    missing_decoders: dict[str, int] = field(default_factory=dict)
    pending_total: int | None = None
    kept_empty: list[bytes] = field(default_factory=list)  # empty folders whose photos were kept
    kept_empty_photos: int = 0
    started: float = field(default_factory=time.monotonic)
    embedded: int = 0
    headers_read: int = 0  # photos cached before whose metadata was read (nothing re-embedded)
    printed: int = 0  # photos cached before decoded for their perceptual print (nothing re-embedded)
    damaged: int = 0  # photos indexed from the part of them that decodes
    retried: int = 0  # remembered failures tried again (--retry-failed, or their environment changed)
    meta_problems: int = 0  # photos indexed whose metadata could not (all) be read
    absent: list[bytes] = field(default_factory=list)  # library folders given that are gone (disk unplugged)
    cluster_workers: int | None = None  # Dask workers that embedded photos, with --cluster

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def done(self) -> int:
        return self.new + self.updated + self.failed + self.vanished

    def as_dict(self) -> dict:
        elapsed = self.elapsed
        return {"new": self.new, "updated": self.updated, "moved": self.moved, "removed": self.removed,
                "failed": self.failed, "skipped": self.skipped, "unchanged": self.unchanged,
                "vanished": self.vanished, "retried": self.retried, "meta_problems": self.meta_problems,
                "missing_decoders": dict(self.missing_decoders), "absent": [os.fsdecode(f) for f in self.absent],
                "kept_empty": [os.fsdecode(f) for f in self.kept_empty], "headers_read": self.headers_read,
                "printed": self.printed, "damaged": self.damaged,
                "elapsed_s": round(elapsed, 2), "images_per_s": round(self.embedded / elapsed, 2) if elapsed else 0.0,
                **({"cluster_workers": self.cluster_workers} if self.cluster_workers is not None else {})}


def kept_empty_error(summary: "Summary") -> EmptyFolderError | None:
    """The run's one line about library folders it had to leave alone (exit 6), or None."""
    lines = []
    if summary.absent:
        folders = ", ".join(os.fsdecode(f) for f in summary.absent)
        lines.append(f"{folders}: not there (disk unplugged, share not mounted?); its cached photos were kept and the "
                     "other folders indexed. Run again once it is back")
    if summary.kept_empty:
        folders = ", ".join(os.fsdecode(f) for f in summary.kept_empty)
        lines.append(f"{folders}: empty, but the cache holds {summary.kept_empty_photos} photos from there; is the "
                     "share or disk mounted? They were kept. If you emptied it on purpose, run "
                     "`clipsearch index --allow-empty` on it once")
    return EmptyFolderError("; ".join(lines)) if lines else None
