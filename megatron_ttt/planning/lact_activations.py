"""What LaCT's fast-weight op (ops/lact.py) saves for the backward, in elements of the fast
weights' dtype (fp32), per sequence and fast-weight head.

Checked against saved-tensor hooks on the op (tests/planning/test_lact.py). Notation: h the
SwiGLU width, Din and Dout the fast head's input and output widths (both D / Hf in the layer),
S = h (2 Din + Dout) the elements of one state (w0, w1, w2), R = 2 h + Dout its rows.
"""

from megatron_ttt.models.config import TTTModelConfig


def newton_schulz5_saved(rows: int, cols: int) -> int:
    """Muon on one [rows,cols] step, m <= n its sides: the step and its norm (+ eps) (m n + 2), and
    per iteration X (m n), A = X X^T, c A and b A + c A^2 (3 m^2)."""
    m, n = min(rows, cols), max(rows, cols)
    return 5 * (m * n + 3 * m * m) + m * n + 2


def step_saved(d_in: int, d_hidden: int, d_out: int, momentum: bool, muon: bool) -> int:
    """One chunk's update after the first, less its per-token terms: per weight w + step, its rows'
    norms (and + eps), the renormalised quotient and the new weights (3 S + 2 R); with momentum
    the chunk's mean coefficient and the velocity it scales (S + 1), which under Muon is the last
    step's Newton-Schulz input, kept already; with Muon Newton-Schulz on the three steps."""
    state, rows = d_hidden * (2 * d_in + d_out), 2 * d_hidden + d_out
    muon_terms = 2 * newton_schulz5_saved(d_hidden, d_in) + newton_schulz5_saved(d_out, d_hidden) if muon else 0
    velocity = (1 + (0 if muon else state)) if momentum else 0
    return 3 * state + 2 * rows + velocity + muon_terms


def saved_elements(tokens: int, stepping_tokens: int, steps: int, d_in: int, d_hidden: int, d_out: int,
                   momentum: bool, muon: bool) -> int:
    """A run of chunks: every token's apply keeps w0 q, silu of it, w2 q and their product (4 h);
    every token of a stepping chunk keeps 13 h-wide tensors of the SwiGLU's written-out gradient
    and the lr-weighted keys (2 Din); every step its state-sized terms."""
    return (tokens * 4 * d_hidden + stepping_tokens * (13 * d_hidden + 2 * d_in)
            + steps * step_saved(d_in, d_hidden, d_out, momentum, muon))


def sequence_saved(seq_len: int, chunk: int, d_in: int, d_hidden: int, d_out: int, momentum: bool,
                   muon: bool) -> int:
    """A whole sequence without time-axis checkpointing: ceil(T / C) - 1 chunks step (the last only
    applies), and the initial weights' row norms are kept once (R). With momentum the first step
    scales a velocity of zeros: it keeps them (S) but no coefficient."""
    steps = -(-seq_len // chunk) - 1
    steady = 1 + (0 if muon else d_hidden * (2 * d_in + d_out))  # a later step's velocity terms
    first = d_hidden * (2 * d_in + d_out) - steady if momentum and steps else 0
    return (saved_elements(seq_len, steps * chunk, steps, d_in, d_hidden, d_out, momentum, muon)
            + 2 * d_hidden + d_out + first)


def checkpointed_saved(seq_len: int, chunk: int, group: int, d_in: int, d_hidden: int, d_out: int,
                       momentum: bool) -> int:
    """With time-axis checkpointing (`group` chunks a group): the weights every group after the
    first starts from, the velocity every group starts from (the first one's zeros too), and the
    initial weights' row norms."""
    groups = -(-seq_len // (chunk * group))
    state = d_hidden * (2 * d_in + d_out)
    return ((groups - 1) + (groups if momentum else 0)) * state + 2 * d_hidden + d_out


def group_saved(seq_len: int, chunk: int, group: int, d_in: int, d_hidden: int, d_out: int, momentum: bool,
                muon: bool) -> int:
    """The largest group's intermediates, alive while the backward recomputes it: a whole group
    of chunks that all step, or the whole sequence when one group covers it."""
    if chunk * group >= seq_len:
        return sequence_saved(seq_len, chunk, d_in, d_hidden, d_out, momentum, muon)
    tokens = chunk * group
    return saved_elements(tokens, tokens, group, d_in, d_hidden, d_out, momentum, muon)


def fast_shape(model: TTTModelConfig) -> tuple[int, int, int]:
    """(Din, h, Dout) of a LaCT model's fast-weight heads."""
    return model.lact_head_dim, model.lact_hidden, model.lact_head_dim
