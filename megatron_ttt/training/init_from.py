"""A run that starts from another model's weights (train.init_from): a stage of a campaign (a
longer context, another blend, an annealing schedule) or continued pretraining of a converted
model. The new run is at step 0 with its own schedule, data and layout.

The source is a run directory (its newest intact checkpoint), a training checkpoint or a model
directory. It is verified against its checksums, its model compared with the one the config
describes, and its weights loaded by the path eval and convert use (model_dir.load_weights, at
any TP size), before DeepSpeed takes the model over; under ZeRO or bf16 the exact fp32 masters
are then set from the same files. Only a run without a checkpoint of its own reads the source:
the resume plan (training/checkpointing.plan_resume) comes first, so --resume auto continues
the new run itself once it has saved.
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from megatron_ttt.atomic import write_atomic
from megatron_ttt.checkpoint import layout_free, sealing
from megatron_ttt.checkpoint.checksums import summary, weights_checksum
from megatron_ttt.checkpoint.model_dir import tokenizer_of
from megatron_ttt.checkpoint.run_dir import (
    CHECKPOINTS,
    INIT_FROM,
    MODEL_CONFIG,
    RUN_CONFIG,
    latest_pointer,
    latest_tag,
    read_model_config,
    resolve_model_source,
)
from megatron_ttt.config import PretrainConfig, to_dict
from megatron_ttt.config.model import model_differences, trained_model
from megatron_ttt.data.tokenizer import file_sha256
from megatron_ttt.errors import UserInputError
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.training import zero_state
from megatron_ttt.training.adam_history import replay_bias_correction
from megatron_ttt.training.checkpointing import ResumePlan, intact_checkpoint
from megatron_ttt.training.data import TrainingData
from megatron_ttt.training.muon import Muon

MAY_DIFFER = ("rope_theta",)
"""The model key a stage may change: RoPE's base, raised for the attention layers of a hybrid
at a context-extension stage."""
NOT_READ_BY_THE_FORWARD = ("init_std", "bos_token_id")
"""Model config keys that do not change what loaded weights compute (initialization only, a
token id nothing reads): the run's own are kept."""


class InitError(UserInputError):
    pass


@dataclass(frozen=True)
class InitPlan:
    given: str
    """train.init_from as written."""
    path: Path
    """The training checkpoint or model directory the weights come from."""
    model: TTTModelConfig
    """The source's model (its padded vocabulary is kept)."""
    step: int | None
    """The step the source checkpoint was saved at; None for a model directory."""
    weights_checksum: str | None
    """checksums.weights_checksum of the source; None where it records no checksums."""
    optimizer: bool
    """AdamW's moments and step count come from the source too (train.init_optimizer)."""

    def record(self) -> dict:
        return {"init_from": self.given, "path": str(self.path.resolve()), "step": self.step,
                "weights_checksum": self.weights_checksum, "optimizer": "source" if self.optimizer else "fresh"}

    def describe(self) -> str:
        step = f"step {self.step}" if self.step is not None else "a model directory"
        checksum = f"weights checksum {self.weights_checksum}" if self.weights_checksum else "no checksums"
        optimizer = "AdamW's moments and step count from it" if self.optimizer else "a fresh optimizer state"
        return f"initialized from {self.path} ({step}, {checksum}): its weights, {optimizer}; training from step 0"


def plan_init(config: PretrainConfig, resume: ResumePlan | None, data: TrainingData,
              tensor_parallel: int) -> InitPlan | None:
    """Where the run's first weights come from: None when it resumes (`resume`, its own
    checkpoint) or has no train.init_from. Checks the source and its model against the config;
    collective (the ranks share the reading of the checksummed files)."""
    given = config.train.init_from
    if not given or resume is not None:
        return None
    path = source_directory(Path(given))
    model = read_model_config(path)
    if config.train.init_optimizer and not layout_free.present(path):
        raise InitError(f"train.init_from={given}: train.init_optimizer=true takes AdamW's moments from {path}, "
                        "which holds none (a model directory, or a checkpoint of an older version): set "
                        "train.init_optimizer=false for a fresh optimizer state, or start from a training checkpoint")
    check_model(config, path, model, data, tensor_parallel)
    step = layout_free.read_trainer_state(path)["step"] if layout_free.present(path) else None
    return InitPlan(given, path, model, step, weights_checksum(path), config.train.init_optimizer)


def source_directory(given: Path) -> Path:
    """The checkpoint or model directory `given` names, verified: a run directory stands for its
    newest intact checkpoint (damaged ones passed over with a warning); a damaged checkpoint or
    model directory named directly is refused, naming the file."""
    run_dir = given.parent if given.name == CHECKPOINTS else given
    try:
        if latest_pointer(run_dir).is_file():
            return intact_checkpoint(run_dir, latest_tag(run_dir))
        path = resolve_model_source(given)
    except UserInputError as exc:
        raise InitError(f"train.init_from={given}: {exc}") from None
    found = sealing.damage(path)
    if found:
        raise InitError(f"train.init_from={given} is damaged: {summary(found)}. Copy it again, or start from another "
                        f"checkpoint (`mttt checkpoint verify {path}` lists every damaged file)")
    if found is None and dist.get_rank() == 0:
        print(f"note: {path} carries no checksums (written before they existed); its weights load unverified",
              file=sys.stderr, flush=True)
    return path


def model_mismatches(config: PretrainConfig, path: Path, model: TTTModelConfig, data: TrainingData) -> list[str]:
    """How the source's model differs from the config's, key by key (model.rope_theta aside): by
    the model section where the source is a training checkpoint, else by the model config."""
    if (path / RUN_CONFIG).exists():
        saved = json.loads((path / RUN_CONFIG).read_text())
        differ = [d for d in model_differences(saved, to_dict(config))
                  if d.split(":")[0] not in (f"model.{key}" for key in MAY_DIFFER)]
        if differ:
            return differ
    ours = trained_model(config, data.tokenizer_vocab, data.eos_id, model.vocab_size).to_dict()
    return [f"{key}: {value!r} there, {ours[key]!r} here" for key, value in model.to_dict().items()
            if key not in MAY_DIFFER + NOT_READ_BY_THE_FORWARD and ours[key] != value]


def check_model(config: PretrainConfig, path: Path, model: TTTModelConfig, data: TrainingData,
                tensor_parallel: int) -> None:
    """The source must hold the model the config describes, with a vocabulary that covers the
    data's tokenizer, splits over TP, and (where it carries one) the data's tokenizer."""
    where = f"train.init_from={config.train.init_from}"
    if differ := model_mismatches(config, path, model, data):
        raise InitError(f"{where}: {path} holds another model than the config describes ({'; '.join(differ)}). Set "
                        f"the model section to the source's (its {RUN_CONFIG} or {MODEL_CONFIG}); only "
                        "model.rope_theta may differ")
    if data.tokenizer_vocab > model.vocab_size:
        raise InitError(f"{where}: the data's tokenizer has {data.tokenizer_vocab} pieces, more than the "
                        f"{model.vocab_size} of {path}'s model: train on data sharded with the source's tokenizer")
    if model.vocab_size % tensor_parallel:
        raise InitError(f"{where}: its model's vocabulary of {model.vocab_size} does not split over "
                        f"parallel.tensor_parallel={tensor_parallel}; choose a TP size dividing it")
    tokenizer, info = tokenizer_of(path), data.manifests[0].settings.tokenizer
    if tokenizer is not None and file_sha256(tokenizer) != info.sha256:
        raise InitError(f"{where}: {path} was trained with another tokenizer ({tokenizer}) than the data "
                        f"({info.path}, named by {data.manifests[0].directory / 'manifest.json'}): shard the data "
                        f"with {tokenizer}")


def record(run_dir: Path, plan: InitPlan) -> None:
    """Where the run came from, in its run directory (rank 0)."""
    write_atomic(run_dir / INIT_FROM, json.dumps(plan.record(), indent=1) + "\n")


def initialize(engine, plan: InitPlan, muon: Muon | None = None) -> None:
    """After DeepSpeed took over the model (whose module holds the source's weights already):
    the exact fp32 masters, and with plan.optimizer AdamW's moments and step count (and Muon's
    momentum, where both runs use Muon)."""
    if plan.optimizer:
        state = zero_state.load(engine, plan.path, muon)
        replay_bias_correction(zero_state.base_optimizer(engine.optimizer), state["adam_step"])
    else:
        zero_state.load_weights(engine, plan.path)
    if dist.get_rank() == 0:
        print(plan.describe(), flush=True)
