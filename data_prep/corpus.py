"""The bundled default corpus: the Python language reference that every Python ships.

`pydoc_data.topics` holds about 0.5 MB of English (79 topics). It is written as JSON Lines, one
topic per document, spread over a few files so that sharding it has tasks to run in parallel.
"""

import json
import os
from pathlib import Path

from pydoc_data.topics import topics

from megatron_ttt.atomic import write_atomic

BUNDLED_FILES = 4


def default_cache_dir() -> Path:
    """Where prepared defaults (the bundled corpus, its tokenizer and shards) are kept."""
    return Path(os.environ.get("MTTT_CACHE", Path.home() / ".cache" / "megatron-ttt"))


def bundled_corpus(directory: Path, files: int = BUNDLED_FILES) -> list[Path]:
    """Write the corpus under `directory` (once; the files are rewritten only if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(topics)
    paths = [directory / f"python-reference-{i:02d}.jsonl" for i in range(files)]
    for i, path in enumerate(paths):
        if not path.exists():
            lines = (json.dumps({"id": name, "text": topics[name]}) for name in names[i::files])
            write_atomic(path, "\n".join(lines) + "\n")
    return paths
