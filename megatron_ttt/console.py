"""What the libraries under us print before a command has said anything: Transformer Engine
and Apex absent (megatron-core), the accelerator DeepSpeed settled on, deprecations. None of it
is for the user of `mttt`, so it is hidden unless `mttt --verbose` asks for it. Our own output,
and the libraries' errors, are untouched."""

import logging
import warnings

LIBRARIES = r"(megatron|deepspeed|torch|triton|transformer_engine|apex|lm_eval|datasets|transformers)(\.|$)"
"""The modules whose warnings are hidden (a regular expression over the warning's module)."""


def quiet_libraries() -> None:
    """Hide the libraries' warnings (Python warnings and DeepSpeed's logger below ERROR), in this
    process and the data loader workers it forks. Call before the libraries are imported."""
    for category in (UserWarning, DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARIES)
    # DeepSpeed configures this logger when it is imported; a filter added now stays on it.
    logging.getLogger("DeepSpeed").addFilter(errors_only)


def errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR
