"""The base of errors in what a user gave us (files, configs, checkpoints): the command line
prints their message, which names the offending thing and what to do, without a traceback."""


class UserInputError(ValueError):
    every_rank_finds_it = True
    """Whether every rank of a job raises it alike (a config, a checkpoint, a manifest): then rank
    0 alone reports it. An error one rank may meet alone (a damaged shard it read) sets this
    False, and each rank that meets it reports it, naming itself."""
