"""The cache's tables, version by version: each upgrade step takes a database from version n
to n + 1 and runs in one transaction with the `user_version` bump (`store.Store` runs them), so
a kill mid-upgrade leaves the old version intact and the next run simply upgrades again."""
from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 7
# A path's last four bytes as lower-case text (".nef"): what RAW files are counted by.
SUFFIX = "lower(CAST(substr(filepath, -4) AS TEXT))"
# Readers (query, status) open any version from this one on without upgrading: later steps
# only add what writers use (v2: the keywords `tag` wrote; v3: what photos say about themselves;
# v4: what a failure or a metadata problem depended on; v5: the RAW file paired with a photo; v6: perceptual prints, damage; v7: the shards a library lists).
READABLE_FROM = 1


def _v1(db: sqlite3.Connection) -> None:
    # v1: the seed schema (images: id, deleted, filepath UNIQUE, modified_at, size, vector),
    # with paths as bytes, int8 vectors + scale, the decode error of failed files, a content
    # fingerprint for move detection and a change counter (seq) that the packed vector file
    # follows.
    # Statement by statement: executescript() would COMMIT the surrounding transaction.
    script = (
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE images (
            id INTEGER PRIMARY KEY,
            filepath BLOB NOT NULL UNIQUE,
            dir BLOB NOT NULL,
            modified_at INTEGER NOT NULL,
            size INTEGER NOT NULL,
            fingerprint BLOB,
            vector BLOB,
            scale REAL,
            error TEXT,
            deleted INTEGER NOT NULL DEFAULT 0,
            deleted_at REAL,
            seq INTEGER NOT NULL,
            indexed_at REAL NOT NULL
        );
        CREATE INDEX images_dir ON images(dir);
        CREATE INDEX images_content ON images(size, fingerprint);
        CREATE INDEX images_seq ON images(seq);
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            started_at REAL NOT NULL,
            finished_at REAL,
            roots TEXT NOT NULL,
            status TEXT NOT NULL,
            summary TEXT
        );
        INSERT INTO meta (key, value) VALUES ('seq', '0')
        """
    )
    for statement in script.split(";"):
        db.execute(statement)


def _v2(db: sqlite3.Connection) -> None:
    # v2: which keyword values `clipsearch tag` added to which sidecar field of which photo, so
    # `untag` removes exactly those and never one a person wrote.
    db.execute("""
        CREATE TABLE keywords_added (
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            keyword TEXT NOT NULL,
            sidecar BLOB NOT NULL,
            field TEXT NOT NULL,
            value TEXT NOT NULL,
            added_at REAL NOT NULL,
            PRIMARY KEY (image_id, keyword, sidecar, field, value)
        )""")
    db.execute("CREATE INDEX keywords_added_keyword ON keywords_added(keyword)")


def _v3(db: sqlite3.Connection) -> None:
    # v3: what each photo says about itself (`photos/metadata.py`), and which file and sidecar versions
    # it was read from, so a changed sidecar alone is noticed. Rows indexed before v3 have none
    # until the next `index` reads their headers (no re-embedding).
    db.execute("""
        CREATE TABLE photo_meta (
            image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
            read_size INTEGER NOT NULL,
            read_mtime INTEGER NOT NULL,
            sidecars TEXT NOT NULL,
            taken_at TEXT,
            taken_key REAL,
            taken_source TEXT,
            make TEXT,
            model TEXT,
            lens TEXT,
            lat REAL,
            lon REAL,
            width INTEGER,
            height INTEGER,
            rating INTEGER,
            keywords TEXT NOT NULL DEFAULT '[]'
        )""")
    db.execute("CREATE INDEX photo_meta_taken ON photo_meta(taken_key)")
    db.execute("CREATE INDEX photo_meta_camera ON photo_meta(make, model)")  # filters match the few distinct ones
    db.execute("CREATE INDEX photo_meta_position ON photo_meta(lat, lon)")
    db.execute("CREATE INDEX photo_meta_rating ON photo_meta(rating)")
    # One row per photo and keyword (any case), so `--tag` is an index lookup, not a JSON scan.
    db.execute("""
        CREATE TABLE photo_keywords (
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            keyword TEXT NOT NULL COLLATE NOCASE,
            PRIMARY KEY (image_id, keyword)
        )""")
    db.execute("CREATE INDEX photo_keywords_keyword ON photo_keywords(keyword)")


def _v4(db: sqlite3.Connection) -> None:
    # v4: what a failed file's failure depended on (`photos/readers.py`: decoder versions, a missing
    # module, the worker bound it hit), so a changed environment retries it by itself; and
    # the problems met reading a photo's metadata with the readers' versions, so it is read
    # again when they change. Old rows have neither: their failures wait for
    # `index --retry-failed` or a change of the file, as before.
    for table, column in (("images", "failure"), ("photo_meta", "problems"), ("photo_meta", "readers")):
        # A cache taken back to an older version by hand keeps its columns: add only what is missing.
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
    db.execute("CREATE INDEX IF NOT EXISTS images_failed ON images(error) WHERE error IS NOT NULL")


def _v5(db: sqlite3.Connection) -> None:
    # v5: the RAW file of a RAW+JPEG pair (same name, same folder), kept on the row of the photo
    # that stands for both (`photos/walk.py`), so query, serve and tag can name and reach it, and
    # a JPEG deleted later hands its row to the RAW without embedding anything again.
    if "companion" not in {row[1] for row in db.execute("PRAGMA table_info(images)")}:
        db.execute("ALTER TABLE images ADD COLUMN companion BLOB")
    db.execute("CREATE INDEX IF NOT EXISTS images_companion ON images(companion) WHERE companion IS NOT NULL")


def _v6(db: sqlite3.Connection) -> None:
    # v6: each photo's perceptual print (`photos/prints.py`, 64 bytes; b"" when none could be
    # made), which `duplicates` compares. Rows indexed before have none until an `index` run
    # decodes them for it (never the model), resumably, as the metadata fill does.
    # And what is missing from a photo indexed from the part of it that decodes (a file cut
    # short): `status --damaged`, `query --damaged`.
    columns = {row[1] for row in db.execute("PRAGMA table_info(images)")}
    for column, kind in (("print", "BLOB"), ("damage", "TEXT")):
        if column not in columns:
            db.execute(f"ALTER TABLE images ADD COLUMN {column} {kind}")
    db.execute("CREATE INDEX IF NOT EXISTS images_damaged ON images(id) WHERE damage IS NOT NULL")
    # RAW files are counted by extension for `status`: a scan of 1.28M paths took 1.2 s, the
    # index answers at once (building it: 1.9 s at 1.28M photos, once).
    db.execute(f"CREATE INDEX IF NOT EXISTS images_suffix ON images({SUFFIX})")


def _v7(db: sqlite3.Connection) -> None:
    # v7: the shards of a library (`cache/library.py`): the library database lists the other
    # databases that hold its folders, one per folder given to `index` (in the data dir, or on
    # the disk itself with `--shard-on-disk`), and how many photos each held at its last run
    # (what a query says it leaves out while one is unplugged).
    db.execute("""
        CREATE TABLE IF NOT EXISTS shards (
            number INTEGER PRIMARY KEY,
            root BLOB NOT NULL UNIQUE,
            location TEXT NOT NULL,
            portable INTEGER NOT NULL DEFAULT 0,
            photos INTEGER NOT NULL DEFAULT 0,
            uuid TEXT NOT NULL,
            added_at REAL NOT NULL
        )""")


# Upgrade steps: MIGRATIONS[n] takes a database at version n to n + 1. Each runs in one
# transaction together with the user_version bump, so a kill mid-upgrade leaves the old
# version intact and the next run simply upgrades again.
MIGRATIONS = {0: _v1, 1: _v2, 2: _v3, 3: _v4, 4: _v5, 5: _v6, 6: _v7}
