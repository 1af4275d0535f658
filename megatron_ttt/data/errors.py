"""The one error type of data preparation and loading."""


class DataError(ValueError):
    """Bad input data or a bad prepared dataset. The message names the file (shard, line, key)
    and says what to do; the command line prints it without a traceback."""
