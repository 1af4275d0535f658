"""The manifest of a sharded dataset: what every shard holds, how it was made, and its hash.

Written by `mttt data shard` (one per run or per task slice, joined by `merge-manifests`) and
read by the loader. It holds no timestamps or worker counts, so the same inputs and settings
give the same manifest byte for byte however the work was split, killed or resumed.
"""

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from megatron_ttt.atomic import write_atomic
from megatron_ttt.data.errors import DataError
from megatron_ttt.data.tokenizer import TokenizerInfo, file_sha256

FORMAT = "megatron-ttt-shards"
VERSION = 1
SPLITS = ("train", "val")
SAMPLE_FIELD = "tok"
"""Each sample is one tar member `<key>.tok`: the raw little-endian token ids."""


def sample_key(task: int, sample: int) -> str:
    """The key of a task's `sample`-th sample in a split (counted over the task's shards of it)."""
    return f"t{task:05d}-{sample:09d}"


def task_marker(directory: Path, task: int) -> Path:
    """The completion marker of a task: while it exists, `mttt data shard` does not redo the task."""
    return directory / "tasks" / f"t{task:05d}.json"


@dataclass(frozen=True)
class ShardEntry:
    path: str
    """Relative to the manifest's directory."""
    samples: int
    tokens: int
    documents: int
    """Documents whose first token lies in this shard."""
    sha256: str
    task: int
    """The input task that wrote the shard."""
    size_bytes: int | None = None
    """The shard file's length, checked with a stat when training starts; None in manifests
    written before it was recorded."""


@dataclass(frozen=True)
class TaskEntry:
    """What one input file (one task) contributed, and what was wrong with it."""

    index: int
    input: str
    documents: int
    """Non-empty documents tokenized (both splits)."""
    empty: int
    """Documents with no text, skipped."""
    bad_utf8: int
    """Documents with invalid UTF-8 (replaced by U+FFFD, or skipped under --bad-utf8 skip)."""
    skipped: int
    """Malformed records skipped under --skip-bad."""
    truncated: bool
    """The compressed stream ended early; documents before the damage were kept (--skip-bad)."""
    tokens: dict[str, int]
    """Tokens packed into samples, per split."""
    dropped_tokens: dict[str, int]
    """The tail shorter than one sample at the end of the task, per split."""


@dataclass(frozen=True)
class ShardSettings:
    """Everything that decides the bytes of the shards; a resumed or sliced run must match it."""

    seq_len: int
    dtype: str
    tokenizer: TokenizerInfo
    inputs: tuple[str, ...]
    input_format: str
    text_docs: str
    text_fields: tuple[str, ...]
    """Per input: the JSON field, or the Parquet/Arrow column, holding the text."""
    val_fraction: float
    seed: int
    shard_bytes: int
    bad_utf8: str
    skip_bad: float
    """The fraction of an input's records that may be skipped as malformed (0: none)."""

    @property
    def sample_tokens(self) -> int:
        return self.seq_len + 1

    def to_dict(self) -> dict:
        return asdict(self) | {"inputs": list(self.inputs), "text_fields": list(self.text_fields)}

    @classmethod
    def from_dict(cls, d: dict) -> "ShardSettings":
        d = dict(d)
        # Manifests written before per-input fields name one field for every input, and skip_bad as
        # true (no limit) or false.
        fields = d.pop("json_field", None)
        d["text_fields"] = tuple(d.get("text_fields") or [fields] * len(d["inputs"]))
        d["skip_bad"] = float(d["skip_bad"])
        return cls(**(d | {"tokenizer": TokenizerInfo(**d["tokenizer"]), "inputs": tuple(d["inputs"])}))


@dataclass
class Manifest:
    settings: ShardSettings
    tasks: list[TaskEntry]
    shards: dict[str, list[ShardEntry]]
    """Per split, in task order then write order: the order that defines global sample ids."""
    slice: tuple[int, int] | None = None
    """(index, count) for the manifest of one task slice; None once complete."""
    directory: Path = field(default=Path("."), compare=False)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.settings.dtype)

    def entries(self) -> list[ShardEntry]:
        """Every shard of every split."""
        return [e for split in SPLITS for e in self.shards[split]]

    def tokenizer_problem(self) -> str | None:
        """Why the tokenizer these shards were made with cannot be read here (its file missing or
        changed: the manifest keeps its path as given then, and its sha256); None when it can."""
        info = self.settings.tokenizer
        path = Path(info.path)
        if not path.is_file():
            return f"names the tokenizer {path}, which does not exist here"
        if file_sha256(path) != info.sha256:
            return f"names the tokenizer {path}, which differs from the one its shards were made with (sha256)"
        return None

    def repair_hint(self, entries: list[ShardEntry]) -> str:
        """What to do about damaged or missing shards: a task redone from scratch writes the same
        bytes, so deleting its marker and re-running the same command restores its shards."""
        tasks = sorted({e.task for e in entries})
        markers = " ".join(str(task_marker(self.directory, t)) for t in tasks)
        which = f"task {tasks[0]}'s shards" if len(tasks) == 1 else f"the shards of tasks {', '.join(map(str, tasks))}"
        return (f"restore {'it' if len(entries) == 1 else 'them'} from a copy, or delete {markers} and re-run the "
                f"same `mttt data shard` command (the slice holding the task, for a sliced job) to rewrite {which}; "
                f"then run `mttt data verify {self.directory}`")

    def samples(self, split: str) -> int:
        return sum(s.samples for s in self.shards[split])

    def totals(self) -> dict:
        return {split: {"shards": len(entries), "samples": self.samples(split),
                        "tokens": sum(s.tokens for s in entries), "documents": sum(s.documents for s in entries)}
                for split, entries in self.shards.items()}

    def to_json(self) -> str:
        body = {"format": FORMAT, "version": VERSION, "slice": list(self.slice) if self.slice else None,
                "settings": self.settings.to_dict(), "totals": self.totals(),
                "tasks": [asdict(t) for t in self.tasks],
                "shards": {split: [asdict(s) for s in entries] for split, entries in self.shards.items()}}
        return json.dumps(body, indent=1) + "\n"

    def write(self, path: Path) -> None:
        """Atomically: a reader sees the old manifest or the new one, never half of one."""
        write_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        if path.is_dir():
            path = path / "manifest.json"
        try:
            body = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"manifest {path} does not exist; write one with `mttt data shard`") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"manifest {path} is not valid JSON: {exc}") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT or body.get("version") != VERSION:
            raise DataError(f"{path} is not a {FORMAT} manifest of version {VERSION}")
        try:
            return cls(settings=ShardSettings.from_dict(body["settings"]),
                       tasks=[TaskEntry(**t) for t in body["tasks"]],
                       shards={split: [ShardEntry(**s) for s in body["shards"][split]] for split in SPLITS},
                       slice=tuple(body["slice"]) if body["slice"] else None, directory=path.parent)
        except (KeyError, TypeError) as exc:
            raise DataError(f"manifest {path} is missing or has a malformed field: {exc}") from None


def source_names(manifests: list[Manifest]) -> list[str]:
    """A short name for each of several sources: its directory's name, with its position where two
    share a name."""
    names = [m.directory.name or str(m.directory) for m in manifests]
    return [f"{name}-{i}" if names.count(name) > 1 else name for i, name in enumerate(names)]


def check_one_tokenizer(manifests: list[Manifest], where: str) -> None:
    """Sources read together (a blend) must share the tokenizer: the same model file, wherever it
    was read from."""
    first = manifests[0].settings.tokenizer
    for manifest in manifests[1:]:
        mine = manifest.settings.tokenizer
        if replace(mine, path=first.path) != first:
            raise DataError(f"{where}: {manifest.directory} was tokenized with {mine.path} (sha256 "
                            f"{mine.sha256[:12]}, {mine.vocab_size} pieces), {manifests[0].directory} with "
                            f"{first.path} (sha256 {first.sha256[:12]}, {first.vocab_size} pieces); a blend needs "
                            "one tokenizer")
