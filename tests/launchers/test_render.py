"""Rendering without a cluster: the scripts' essentials, profiles, and every bad input refused."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megatron_ttt.cli import main
from megatron_ttt.config import load_config
from megatron_ttt.errors import UserInputError
from megatron_ttt.launch import data_shard, pretrain
from megatron_ttt.launch.job import SlurmJob
from megatron_ttt.launch.profile import Profile, bundled_profiles, load_profile
from tests.launchers.jobs import assert_nothing_ran, hostile_dir


def launch(job: str, *args: str) -> int:
    """`mttt launch JOB --dry-run ARGS` (--dry-run first: data-shard passes what follows -- on)."""
    return main(["launch", job, "--dry-run", *args])


def dry_run(capsys, job: str, *args: str) -> str:
    assert launch(job, *args) == 0
    return capsys.readouterr().out


def test_dry_run_has_the_essentials(tmp_path, capsys):
    run = tmp_path / "run"
    text = dry_run(capsys, "pretrain", "--nodes", "4", "--gpus-per-node", "8", "--time", "2-00:00:00",
                   "--partition", "gpu", "--account", "lm", "--grace", "240", "--port", "29555",
                   f"run_dir={run}", "train.steps=30", "model.preset=125m", "parallel.tensor_parallel=2",
                   "parallel.context_parallel=2")
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --time=2-00:00:00",
                 "#SBATCH --partition=gpu", "#SBATCH --account=lm", "#SBATCH --requeue",
                 "#SBATCH --signal=B:USR1@240", "#SBATCH --open-mode=append"):
        assert line in text.splitlines(), line
    assert 'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in text
    assert re.search(r"^srun --ntasks-per-node=1 ", text, re.M)
    assert "--nnodes 4 --nproc-per-node 8" in text and '--rdzv-backend c10d --rdzv-endpoint "$head:29555"' in text
    assert f"pretrain --config {run}/slurm/config.yaml --resume auto" in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text and 'trap on_usr1 USR1' in text
    assert f"run_dir={run}" in text.splitlines() and 'stop_file="$run_dir/slurm/stop-$SLURM_JOB_ID-$restart"' in text
    assert "ps -o pid= --ppid" in text and '= step-00000030 ]' in text and "SLURM_RESTART_COUNT" in text
    assert not any(line.startswith("#SBATCH --gpus") for line in text.splitlines())  # cpu-test asks for no GPUs
    assert not run.exists(), "a dry run writes nothing"
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)  # valid shell


def test_gpu_profiles_request_gpus_and_set_the_nccl_block(capsys, tmp_path):
    text = dry_run(capsys, "pretrain", "--profile", "gpu-infiniband", "--nodes", "2", "--gpus-per-node", "4",
                   f"run_dir={tmp_path / 'run'}")
    assert "#SBATCH --gpus-per-node=4" in text and "#SBATCH --cpus-per-task=32" in text
    block = text.split("# ---- NCCL / network environment")[1].split("# ---- end of NCCL")[0]
    assert "export NCCL_SOCKET_IFNAME=ib0" in block and "module load" not in block
    efa = dry_run(capsys, "pretrain", "--profile", "aws-efa", f"run_dir={tmp_path / 'run'}")
    assert "export FI_PROVIDER=efa" in efa and "srun --ntasks-per-node=1" in efa
    assert "--container-image=/fsx/images/megatron-ttt.sqsh" in efa


@pytest.mark.parametrize("name", bundled_profiles())
def test_every_bundled_profile_renders_valid_shell(name, tmp_path):
    launch = pretrain.prepare(load_config(None, [f"run_dir={tmp_path}"]), SlurmJob(), load_profile(name))
    subprocess.run(["bash", "-n"], input=launch.text, text=True, check=True)


def test_a_copied_profile_is_read_from_its_file(tmp_path, capsys):
    mine = tmp_path / "my-cluster.yaml"
    mine.write_text(yaml.safe_dump({"gpus": True, "setup": "module load mpi/site", "environment": {"NCCL_DEBUG": "INFO"}}))
    text = dry_run(capsys, "pretrain", "--profile", str(mine), "--gpus-per-node", "2", f"run_dir={tmp_path / 'r'}")
    assert "module load mpi/site" in text and "export NCCL_DEBUG=INFO" in text and "#SBATCH --gpus-per-node=2" in text
    assert f"(profile {mine})" in text


def test_data_shard_renders_an_array_and_a_merge(tmp_path, capsys):
    text = dry_run(capsys, "data-shard", "--array", "3", "--time", "30", "--", "--tokenizer", "t.model",
                   "--output", str(tmp_path / "ds"), "--seq-len", "64", "--input", "a.jsonl", "b.jsonl")
    assert "#SBATCH --array=0-2" in text and "#SBATCH --time=30" in text
    assert '--task-index "$SLURM_ARRAY_TASK_ID" --num-tasks 3' in text
    assert f"output={tmp_path / 'ds'}" in text.splitlines() and 'data merge-manifests "$output"' in text


@pytest.mark.parametrize("args, message", [
    (["pretrain", "--nodes", "0"], r"--nodes 0: a job needs at least 1 node"),
    (["pretrain", "--gpus-per-node", "0"], r"--gpus-per-node 0"),
    (["pretrain", "--time", "1:2:3:4"], r"--time '1:2:3:4' is not a SLURM time limit"),
    (["pretrain", "--time", "1-2:3:4", "--grace", "0"], r"--grace 0"),
    (["pretrain", "--profile", "no-such-cluster"], r"unknown profile 'no-such-cluster'.*cpu-test"),
    (["pretrain", "train.steps=0"], r"train.steps"),
    (["pretrain", "--nodes", "2", "--gpus-per-node", "2", "parallel.context_parallel=3"],
     r"parallel.tensor_parallel=1 x parallel.context_parallel=3 does not divide the 4 processes"),
    (["pretrain", "--gpus-per-node", "3"], r"data.global_batch_tokens=8192 is not a multiple of .* 4 x 3 x 256"),
    (["data-shard", "--array", "0", "--", "--tokenizer", "t", "--output", "o", "--seq-len", "8"], r"--array 0"),
    (["data-shard", "--array", "2", "--", "--tokenizer", "t", "--output", "o", "--seq-len", "8", "--num-tasks", "2"],
     r"--task-index/--num-tasks are set per array task"),
])
def test_bad_options_are_refused_with_their_name(args, message, tmp_path, capsys):
    assert launch(*args) == 2
    assert re.search(message, capsys.readouterr().err)


def test_bad_profile_files_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpus: true\nnccl: {}\n")
    with pytest.raises(UserInputError, match=r"profile .*bad.yaml: unknown key 'nccl'"):
        load_profile(str(bad))
    bad.write_text("cpus_per_task: many\n")
    with pytest.raises(UserInputError, match=r"cpus_per_task = 'many' is not a valid value"):
        load_profile(str(bad))
    with pytest.raises(UserInputError, match=r"cannot read profile"):
        load_profile(str(tmp_path / "missing.yaml"))


def test_a_layout_the_model_cannot_take_is_refused_before_anything_is_written(tmp_path, capsys):
    run = tmp_path / "run"
    assert launch("pretrain", "--nodes", "2", "--gpus-per-node", "8", f"run_dir={run}", "model.preset=7b-hybrid",
                  "parallel.tensor_parallel=16") == 2
    assert "parallel.tensor_parallel=16 does not divide the 8 key/value heads of model.preset=7b-hybrid" in \
        capsys.readouterr().err
    assert not run.exists()


def test_a_run_dir_with_another_model_is_refused(tmp_path):
    run = tmp_path / "run"
    launch = pretrain.prepare(load_config(None, [f"run_dir={run}", "model.preset=125m-hybrid"]), SlurmJob(),
                              load_profile("cpu-test"))
    (run / "slurm").mkdir(parents=True)
    older = launch.config | {"model": {k: v for k, v in launch.config["model"].items() if k != "num_kv_heads"}}
    launch.config_path.write_text(yaml.safe_dump(older))  # as a version before the key was written it
    # The preset's key/value heads spelled out, and a longer schedule: the same model continues.
    pretrain.prepare(load_config(None, [f"run_dir={run}", "model.preset=125m-hybrid", "model.num_kv_heads=4",
                                        "train.steps=400"]), SlurmJob(), load_profile("cpu-test"))
    with pytest.raises(UserInputError, match=r"already holds a run of another model .*model.num_kv_heads: 4 there, "
                                             r"2 now"):
        pretrain.prepare(load_config(None, [f"run_dir={run}", "model.preset=125m-hybrid", "model.num_kv_heads=2"]),
                         SlurmJob(), load_profile("cpu-test"))


def sbatch_words(text: str) -> dict[str, str]:
    """The script's #SBATCH options as sbatch reads them: it splits those lines with the shell's
    quotes, expanding nothing, so (without backslashes, which the launcher refuses there) bash's
    printf of the same words gives what sbatch gets."""
    lines = [line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH ")]
    out = subprocess.run(["bash", "-c", "printf '%s\\0' " + " ".join(lines)], capture_output=True, text=True,
                         check=True)
    return dict(word.split("=", 1) for word in out.stdout.split("\0")[:-1] if "=" in word)


STUB = """#!/bin/bash
printf '%s\\0' "$@" > "$PROBE/{name}"
printf '%s\\0' "${{MTTT_STOP_FILE-}}" "${{MTTT_STATUS_PREFIX-}}" "${{MTTT_PROBE-}}" > "$PROBE/{name}.env"
"""


def stub(path: Path, name: str) -> str:
    """An executable at PATH that records its arguments (and three variables) in $PROBE/NAME."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STUB.format(name=name))
    path.chmod(0o755)
    return str(path)


def run_script(text: str, tmp_path, **slurm: str) -> tuple[str, dict[str, list[str]]]:
    """Runs a rendered script under bash as a SLURM job starts it, srun and scontrol stubbed (the
    node is node0); its output and what each stub recorded, by name."""
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    for earlier in probe.iterdir():  # a previous run's records
        earlier.unlink()
    stub(tmp_path / "bin" / "srun", "srun")
    (tmp_path / "bin" / "scontrol").write_text("#!/bin/bash\necho node0\n")
    (tmp_path / "bin" / "scontrol").chmod(0o755)
    (tmp_path / "job.sbatch").write_text(text)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "PROBE": str(probe), **slurm}
    out = subprocess.run(["/bin/bash", str(tmp_path / "job.sbatch")], env=env, capture_output=True, text=True)
    recorded = {p.name: p.read_text().split("\0")[:-1] for p in probe.iterdir()}
    return out.stdout + out.stderr, recorded


def test_hostile_run_dir_and_profile_values_reach_the_job_as_written(tmp_path, monkeypatch):
    """Spaces, quotes, % and commands in the run directory and the profile's values: each comes
    out of bash (and sbatch) as the very string given, and no command in them runs."""
    monkeypatch.chdir(tmp_path)  # a path quoted twice would make its `'` directory here
    run, markers = hostile_dir(tmp_path)
    profile = Profile(python=str(run / "bin" / "python"), environment={"MTTT_PROBE": f"$(touch {markers[0]}) 'x'"},
                      srun_options=["--container-mounts=/a b:/c", f"--comment=`touch {markers[1]}`"],
                      wrapper='env MTTT_WRAPPED="x y"')  # shell code: its quotes are the shell's
    launch = pretrain.prepare(load_config(None, [f"run_dir={run}", "train.steps=30"]),
                              SlurmJob(partition="a b", account="it's"), profile)
    assert launch.config["run_dir"] == str(run)
    logs = run / "slurm" / "logs"
    pattern = str(logs).replace("%", "%%")  # SLURM's escape: %% is one %, so %j stays %j
    options = sbatch_words(launch.text)
    assert options["--output"] == f"{pattern}/%x-%j.out"
    assert options["--partition"] == "a b" and options["--account"] == "it's"
    # What the node-outcome, checkpoint and metrics lines read, at their paths under RUN.
    logs.mkdir(parents=True)
    (logs / "train-7-r0-node0.log").write_text("Signal 9 (SIGKILL) received\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "latest").write_text("step-00000003")
    (run / "metrics.jsonl").write_text('{"step": 5, "loss": 1.0}\n')
    output, recorded = run_script(launch.text, tmp_path, SLURM_JOB_ID="7", SLURM_JOB_NUM_NODES="1",
                                  SLURM_JOB_NODELIST="node0")
    assert recorded["srun"] == [
        "--ntasks-per-node=1", "--kill-on-bad-exit=0", f"--output={pattern}/train-%j-r0-node%n.log",
        "--container-mounts=/a b:/c", f"--comment=`touch {markers[1]}`", "env", "MTTT_WRAPPED=x y",
        "bash", "-c", 'run_node "$@"', "run_node", profile.python, "-m", "torch.distributed.run", "--nnodes", "1",
        "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "node0:29500", "--rdzv-id", "7",
        "--max-restarts", "0", "--shutdown-timeout", "300", "-m", "megatron_ttt.cli", "pretrain", "--config", str(launch.config_path),
        "--resume", "auto"], output
    assert recorded["srun.env"] == [f"{run}/slurm/stop-7-0", f"{run}/slurm/status-7-0-node",
                                    profile.environment["MTTT_PROBE"]]
    assert "failed after step 5, the last logged (latest checkpoint: step-00000003)" in output, output
    assert "node0: a rank was killed (Signal 9 (SIGKILL) received)" in output, output
    assert_nothing_ran(tmp_path, markers)


def test_hostile_data_shard_paths_reach_the_jobs_as_written(tmp_path, monkeypatch):
    """The output, inputs and Python at such paths: the array task and the merge job get exactly
    those arguments, and nothing in them runs."""
    monkeypatch.chdir(tmp_path)
    output, markers = hostile_dir(tmp_path / "out")
    inputs, input_markers = hostile_dir(tmp_path / "in")
    python = stub(inputs / "bin" / "python", "python")  # the job's Python, at a hostile path too
    shard_args = ["--tokenizer", "t.model", "--output", str(output), "--seq-len", "64", "--input",
                  str(inputs / "a.jsonl"), str(inputs / "b c.jsonl")]
    launch = data_shard.prepare(SlurmJob(), Profile(python=python), 2, shard_args)
    pattern = str(output / "slurm" / "logs").replace("%", "%%")
    assert sbatch_words(launch.array_text)["--output"] == f"{pattern}/%x-%A-%a.out"
    assert sbatch_words(launch.merge_text)["--output"] == f"{pattern}/%x-%j.out"
    _, recorded = run_script(launch.array_text, tmp_path, SLURM_ARRAY_JOB_ID="9", SLURM_ARRAY_TASK_ID="1")
    absolute = [str(Path(a).resolve()) if i in (1, 3, 7, 8) else a for i, a in enumerate(shard_args)]
    assert recorded["python"] == ["-m", "megatron_ttt.cli", "data", "shard", *absolute, "--quiet",
                                  "--task-index", "1", "--num-tasks", "2"]
    merged, recorded = run_script(launch.merge_text, tmp_path)
    assert recorded["python"] == ["-m", "megatron_ttt.cli", "data", "merge-manifests", str(output)]
    assert f"wrote {output}/manifest.json" in merged
    assert_nothing_ran(tmp_path, markers + input_markers)


@pytest.mark.parametrize("args, message", [
    (["pretrain", "--partition", "gpu\n#SBATCH --x"], r"--partition 'gpu\\n#SBATCH --x' holds a line break"),
    (["pretrain", "--account", "lm\r"], r"--account 'lm\\r' holds a line break"),
    (["pretrain", "--partition", "a\\b"], r"--partition 'a\\\\b' holds a backslash"),
    (["pretrain", "--time", "10\n"], r"--time '10\\n' is not a SLURM time limit"),
    (["pretrain", "--job-name", "job\n"], r"--job-name 'job\\n'"),
    (["data-shard", "--array", "2", "--", "--tokenizer", "t", "--output", "o\nx", "--seq-len", "8"],
     r"--output '.*o\\nx' holds a line break"),
])
def test_values_that_would_add_lines_to_sbatch_are_refused(args, message, tmp_path, capsys):
    assert launch(*args) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("name, message", [("a\nb", "holds a line break"), ("a\\b", "holds a backslash")])
def test_a_run_dir_sbatch_cannot_log_to_is_refused(name, message, tmp_path):
    config = load_config(None, [])
    config.run_dir = str(tmp_path / name)
    with pytest.raises(UserInputError, match=rf"^run_dir '.*' {message}"):
        pretrain.prepare(config, SlurmJob(), load_profile("cpu-test"))


def test_profile_values_are_checked(tmp_path, capsys):
    mine = tmp_path / "my-cluster.yaml"
    mine.write_text(yaml.safe_dump({"sbatch_options": ["--qos=high\n--exclusive"]}))
    assert launch("pretrain", "--profile", str(mine), f"run_dir={tmp_path / 'run'}") == 2
    assert "sbatch_options item '--qos=high\\n--exclusive' holds a line break" in capsys.readouterr().err
    mine.write_text(yaml.safe_dump({"setup": "if true; then\n  module load x\n"}))
    assert main(["launch", "pretrain", "--profile", str(mine), f"run_dir={tmp_path / 'run'}"]) == 2  # not a dry run
    assert re.search(r"the rendered pretrain.sbatch is not valid bash \(.*syntax error.*\): check the profile's "
                     r"setup and wrapper", capsys.readouterr().err)
    assert not (tmp_path / "run").exists(), "nothing is written"


def test_missing_sbatch_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without SLURM's commands
    launch = pretrain.prepare(load_config(None, [f"run_dir={tmp_path / 'run'}"]), SlurmJob(), load_profile("cpu-test"))
    with pytest.raises(UserInputError, match=r"sbatch is not on PATH"):
        pretrain.submit(launch)
    assert launch.script.exists() and launch.config_path.exists(), "the script is kept for a later sbatch"


def test_data_shard_checks_its_arguments_as_mttt_data_shard_does(tmp_path):
    with pytest.raises(SystemExit):  # argparse: --seq-len is required
        data_shard.prepare(SlurmJob(), load_profile("cpu-test"), 2, ["--tokenizer", "t", "--output", str(tmp_path)])


def test_the_templates_are_installed_package_data():
    out = subprocess.run([sys.executable, "-c", "from importlib import resources; r = resources.files("
                          "'megatron_ttt.launchers'); print(sorted(p.name for p in (r / 'templates').iterdir()))"],
                         capture_output=True, text=True, check=True)
    assert "pretrain.sbatch" in out.stdout and "data_shard.sbatch" in out.stdout and shutil.which("bash")
