"""Domain exceptions. Each carries a one-line message that names the file and the fix;
`cli/options.py` turns them into click errors in one place."""


class ClipsearchError(Exception):
    """Base class: anything the user can act on. `exit_code` is what the CLI exits with."""

    exit_code = 1


class ModelError(ClipsearchError):
    """The model folder is missing, incomplete, altered or of an unknown format."""

    exit_code = 3


class DatabaseError(ClipsearchError):
    """The cache database is damaged, foreign, too new, read-only or on a full disk."""

    exit_code = 4


class ReadOnlyCacheError(DatabaseError):
    """`index` and `tag` write the cache; on a read-only volume or folder they cannot."""

    def __init__(self, path):
        super().__init__(f"{path}: the cache is read-only (a read-only volume, snapshot or permissions); query, "
                         "status and serve still answer from it. To index or tag, remount it read-write or fix its "
                         "permissions, or copy it elsewhere and use --db / CLIPSEARCH_DB")


class ModelMismatchError(ClipsearchError):
    """The cache was built with another model than the one loaded."""

    exit_code = 5


class EmptyFolderError(ClipsearchError):
    """A library folder that held photos is empty: likely a share that is not mounted."""

    exit_code = 6


class LockedError(ClipsearchError):
    """Another `clipsearch index` holds the library lock."""

    exit_code = 75  # EX_TEMPFAIL: cron wrappers treat it as "try later"


class UsageError(ClipsearchError):
    """A bad argument: a path that does not exist, an empty query."""

    exit_code = 2


class DownloadError(ClipsearchError):
    """A model download failed: hub unreachable, a file missing or altered, interrupted."""

    exit_code = 7


class SidecarWriteError(ClipsearchError):
    """`tag` / `untag` could write none of the sidecars it had to change."""

    exit_code = 8
