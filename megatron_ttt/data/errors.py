"""The error types of data preparation and loading."""

from megatron_ttt.errors import UserInputError


class DataError(UserInputError):
    """Bad input data or a bad prepared dataset. The message names the file (shard, line, key)
    and says what to do."""


class ShardReadError(DataError):
    """A shard sample that could not be read during training: the rank that read it reports it
    (the others, which read other samples, did not meet it)."""

    every_rank_finds_it = False
