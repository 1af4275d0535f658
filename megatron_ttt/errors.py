"""The base of errors in what a user gave us (files, configs, checkpoints): the command line
prints their message, which names the offending thing and what to do, without a traceback."""


class UserInputError(ValueError):
    pass
