"""What a failed file's failure depended on, and when the environment has changed enough to
try it again by itself; likewise for the readers of a photo's metadata.

A file that cannot be decoded is remembered and not retried until it changes: a nightly run
must not spend minutes on the same broken files. But some failures are the installation's,
not the file's: a decoder or module that is missing (the first trial of the README's install
refused 42 of 426 photos for a module only an extra brought, and no later run tried them
again), a Pillow release that could not read a variant, a worker bound (`--file-timeout`,
`--worker-memory`) set too tight. So each failure records the versions of the code that read
the file, the module it missed and the bound it hit (`record`), and the walk retries it once
that changed (`retry_due`): a newer clipsearch, Pillow or pillow-heif, the missing module now
importable, a larger bound. `index --retry-failed` retries regardless.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import re

_MISSING_MODULE = re.compile(r"No module named '([\w.]+)'")
# The words `workers.py` uses for a file stopped at a bound.
_BOUNDS = {"timeout": "(--file-timeout)", "memory": "(--worker-memory)"}


@functools.cache
def decoder_versions() -> dict[str, str | None]:
    """The versions of what reads a photo's pixels and headers (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("clipsearch", "pillow", "pillow-heif", "rawpy", "defusedxml"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def record(error: str, bounds: dict[str, float]) -> str:
    """The JSON kept beside a failure: versions, and the missing module or the bound it hit.
    `bounds`: the run's {"timeout": s, "memory": MB} (empty on a cluster)."""
    depended: dict = {"versions": decoder_versions()}
    missing = _MISSING_MODULE.search(error)
    if missing:
        depended["module"] = missing.group(1)
    for bound, words in _BOUNDS.items():
        if words in error and bound in bounds:
            depended["bound"] = [bound, bounds[bound]]
    return json.dumps(depended, sort_keys=True)


def retry_due(failure: str | None, bounds: dict[str, float]) -> str | None:
    """Why a remembered failure should be tried again now, or None. Failures recorded before
    clipsearch kept what they depended on (`failure` None) wait for a change or --retry-failed."""
    if not failure:
        return None
    try:
        depended = json.loads(failure)
    except ValueError:
        return None
    then, now = depended.get("versions") or {}, decoder_versions()
    changed = [name for name in sorted(now) if name in then and then[name] != now[name]]
    if changed:
        return f"{', '.join(changed)} changed"
    module = depended.get("module")
    if module and _importable(module):
        return f"{module} is installed now"
    bound = depended.get("bound")
    if bound and bound[0] in bounds and bounds[bound[0]] > bound[1]:
        return f"the {bound[0]} bound was raised"
    return None


@functools.cache
def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def metadata_readers() -> str:
    """What read a photo's metadata, kept with a record that had problems: when it differs
    (an upgrade, defusedxml installed), that photo's metadata is read again (headers only)."""
    versions = decoder_versions()
    # defusedxml counts as missing when it cannot be imported, whatever its metadata says.
    try:
        import defusedxml.ElementTree  # noqa: F401
        xml = versions["defusedxml"]
    except ImportError:
        xml = None
    return f"clipsearch {versions['clipsearch']}; pillow {versions['pillow']}; defusedxml {xml}"
