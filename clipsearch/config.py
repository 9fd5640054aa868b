"""Where things live: the data dir, the database, the model folder, and the environment
variables (`CLIPSEARCH_*`) that override them. pathlib is imported inside the functions: a
warm `clipsearch query` finds its server's socket through `home_dir` and `default_db_file`
before anything else is loaded (pathlib and what it imports cost 4-8 ms of a ~55 ms process)."""
from __future__ import annotations

import os
import sys

DEFAULT_MODEL_NAME = "openai-vit-b-32"


def available_cores() -> int:
    """Cores this process may run on: honours taskset, cgroup cpusets and `bench --cores`."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_memory_mb() -> int | None:
    """MemAvailable from /proc/meminfo (what can be used without swapping), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def home_dir() -> str:
    """`CLIPSEARCH_HOME`, else the platform's user data dir (~/.local/share/clipsearch)."""
    env = os.environ.get("CLIPSEARCH_HOME")
    if env:
        return os.path.expanduser(env)
    if sys.platform == "linux":
        # platformdirs' rule for Linux, without importing it and the pathlib it loads (10 ms of
        # a warm query's ~55 ms); tests/test_local_query.py checks both agree.
        return os.path.join(os.environ.get("XDG_DATA_HOME", "").strip() or os.path.expanduser("~/.local/share"),
                            "clipsearch")
    import platformdirs

    return platformdirs.user_data_dir("clipsearch", appauthor=False)


def home() -> Path:
    from pathlib import Path

    return Path(home_dir())


def models_dir() -> Path:
    return home() / "models"


def default_db_file() -> str:
    env = os.environ.get("CLIPSEARCH_DB")
    return os.path.expanduser(env) if env else os.path.join(home_dir(), "index.db")


def default_db_path() -> Path:
    from pathlib import Path

    return Path(default_db_file())


def default_model_dir() -> Path:
    """`CLIPSEARCH_MODEL`, else models/<default name>, else the only model folder there is
    (not counting the `-fp32` twins that `python -m export --keep-fp32` writes)."""
    from pathlib import Path

    env = os.environ.get("CLIPSEARCH_MODEL")
    if env:
        return Path(env).expanduser()
    base = models_dir()
    preferred = base / DEFAULT_MODEL_NAME
    if preferred.is_dir():
        return preferred
    if base.is_dir():
        found = sorted(p for p in base.iterdir() if (p / "manifest.json").is_file() and not p.name.endswith("-fp32")
                       and not _text_only(p))
        if len(found) == 1:
            return found[0]
    return preferred


def text_model_dir(value: str | None) -> Path | None:
    """`--text-model` / `CLIPSEARCH_TEXT_MODEL`: a folder, or the name of one in the models folder."""
    from pathlib import Path

    if not value:
        return None
    path = Path(value).expanduser()
    if os.sep in value or (path / "manifest.json").is_file():
        return path
    return models_dir() / value


def _text_only(folder: Path) -> bool:
    """A text-only model (`models pull multilingual`) is never the default: it cannot index."""
    import json

    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("kind") == "text"
    except (OSError, ValueError, AttributeError):
        return False


def hub_endpoint() -> str:
    """The model hub (`HF_ENDPOINT`, as for Hugging Face's own tools: a mirror, or a local hub)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_token() -> str | None:
    """`HF_TOKEN`, for gated or private repos."""
    return os.environ.get("HF_TOKEN") or None


def catalogue_path() -> Path:
    """`CLIPSEARCH_CATALOGUE` (a catalogue of your own), else the one shipped in the package."""
    from pathlib import Path

    env = os.environ.get("CLIPSEARCH_CATALOGUE")
    return Path(env).expanduser() if env else Path(__file__).resolve().parent / "model" / "catalogue.json"
