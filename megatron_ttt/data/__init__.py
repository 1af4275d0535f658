"""Reading prepared data: the tokenizer wrapper, the shard manifest and (in `loader`, which needs
torch) the resumable loader. This package imports without torch, so data preparation workers
start fast."""

from megatron_ttt.data.errors import DataError
from megatron_ttt.data.manifest import Manifest, ShardEntry
from megatron_ttt.data.tokenizer import Tokenizer

__all__ = ["DataError", "Manifest", "ShardEntry", "Tokenizer"]
