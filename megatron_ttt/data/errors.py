"""The one error type of data preparation and loading."""

from megatron_ttt.errors import UserInputError


class DataError(UserInputError):
    """Bad input data or a bad prepared dataset. The message names the file (shard, line, key)
    and says what to do."""
