"""configs/trainer/slurm.yaml and scripts/slurm/train_auxseg.sbatch against Lightning's ``SLURMEnvironment`` (issue 13).

Lightning's conventions (``lightning.fabric.plugins.environments.slurm``): the job's tasks are started by ``srun``
(``SLURM_NTASKS`` set, job name not ``bash``/``interactive``); world size = ``SLURM_NTASKS``, global rank =
``SLURM_PROCID``, local rank = ``SLURM_LOCALID``, node rank = ``SLURM_NODEID``; ``--ntasks-per-node`` must equal
``trainer.devices`` and ``--nodes`` ``trainer.num_nodes`` (``validate_settings``), and ``--ntasks`` alone is refused;
the requeue signal that the plugin listens for must be the one SLURM sends (``#SBATCH --signal``), to the tasks
(not ``B:``, which signals only the batch shell). The sbatch script itself is run here with a stand-in ``srun`` that
records its arguments, and the trainer that those arguments build is checked under a fake SLURM task environment.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SBATCH = ROOT / "scripts" / "slurm" / "train_auxseg.sbatch"
SLURM_YAML = ROOT / "configs" / "trainer" / "slurm.yaml"
PLUGIN = "lightning.pytorch.plugins.environments.SLURMEnvironment"


def sbatch_options(path: Path = SBATCH) -> dict[str, str]:
    """``#SBATCH --key=value`` (or ``--flag``) lines, in order; ``sbatch`` stops reading them at the first command."""
    options = {}
    for line in path.read_text().splitlines():
        if line.startswith("#SBATCH"):
            key, _, value = line.split(maxsplit=1)[1].partition("=")
            options[key.lstrip("-")] = value.strip()
        elif line.strip() and not line.startswith("#"):
            break
    return options


def parse_signal(spec: str) -> tuple[str, signal.Signals, int]:
    """``[{R|B}:]<sig_num|name>[@sig_time]`` (sbatch --signal) → (flags, signal, seconds before the limit)."""
    match = re.fullmatch(r"(?:([RB]+):)?(\w+)(?:@(\d+))?", spec)
    assert match, f"not an sbatch --signal value: {spec!r}"
    flags, name, seconds = match.group(1) or "", match.group(2), int(match.group(3) or 60)  # SLURM's default: 60 s
    sig = (
        signal.Signals(int(name))
        if name.isdigit()
        else signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    )
    return flags, sig, seconds


def test_sbatch_signal_matches_the_requeue_plugin() -> None:
    plugins = yaml.safe_load(SLURM_YAML.read_text())["trainer"]["plugins"]
    (plugin,) = [p for p in plugins if p["class_path"] == PLUGIN]
    assert plugin["init_args"]["auto_requeue"] is True
    options = sbatch_options()
    flags, sig, seconds = parse_signal(options["signal"])
    assert sig == signal.Signals[plugin["init_args"]["requeue_signal"]] == signal.SIGUSR1  # Lightning's default too
    assert "B" not in flags, "B: sends the signal to the batch shell only; the srun tasks (Lightning) never see it"
    assert seconds >= 60, "leave time to save hpc_ckpt (a ResNet-38 checkpoint) before SLURM kills the job"
    assert "requeue" in options  # scontrol requeue needs a requeueable job

    from lightning.fabric.plugins.environments import SLURMEnvironment as FabricSLURM
    from lightning.pytorch.plugins import environments

    assert issubclass(getattr(environments, PLUGIN.rsplit(".", 1)[1]), FabricSLURM)


def test_sbatch_geometry_follows_lightning_conventions() -> None:
    """``--nodes`` / ``--ntasks-per-node`` tasks, one per GPU, no bare ``--ntasks``; the ``srun`` line hands both to the
    trainer from SLURM's variables, after ddp.yaml (which would otherwise take every visible GPU, ``devices: -1``)."""
    options = sbatch_options()
    assert "ntasks" not in options, "Lightning refuses --ntasks > 1 without --ntasks-per-node"
    gpus_per_node = int(re.fullmatch(r"gpu(?::\w+)?:(\d+)", options["gres"]).group(1))
    assert int(options["ntasks-per-node"]) == gpus_per_node, "one task per GPU"
    text = SBATCH.read_text()
    command = re.search(r"^srun (.*?)(?<!\\)$", text, re.MULTILINE | re.DOTALL)
    assert command, "the training command must be started by srun (one task per GPU)"
    line = command.group(1)
    assert line.startswith("wsss fit")
    assert '--trainer.devices "${SLURM_NTASKS_PER_NODE}"' in line
    assert '--trainer.num_nodes "${SLURM_JOB_NUM_NODES}"' in line
    configs = re.findall(r"--config (\S+)", line)
    assert configs.index("configs/trainer/ddp.yaml") < configs.index("configs/trainer/slurm.yaml")
    assert yaml.safe_load((ROOT / "configs/trainer/ddp.yaml").read_text())["trainer"]["devices"] == -1


def slurm_job_env(options: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """What ``sbatch`` sets for the batch script of a job with these ``#SBATCH`` options."""
    nodes, per_node = int(options["nodes"]), int(options["ntasks-per-node"])
    return {
        "SLURM_JOB_ID": "424242",
        "SLURM_JOB_NAME": options["job-name"],
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NNODES": str(nodes),
        "SLURM_NTASKS": str(nodes * per_node),
        "SLURM_NTASKS_PER_NODE": str(per_node),
        "SLURM_CPUS_PER_TASK": options["cpus-per-task"],
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "SLURM_NODELIST": "gpu[07-08]" if nodes == 2 else "gpu07",
    }


def task_env(job: dict[str, str], node: int, local: int) -> dict[str, str]:
    """What ``srun`` adds for the task ``local`` on node ``node``."""
    per_node = int(job["SLURM_NTASKS_PER_NODE"])
    return {**job, "SLURM_PROCID": str(node * per_node + local), "SLURM_LOCALID": str(local), "SLURM_NODEID": str(node)}


def srun_arguments(tmp_path: Path, env: dict[str, str]) -> list[str]:
    """Run the sbatch script with ``srun`` replaced by a function that records its arguments (NUL-separated)."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the script cds to SLURM_SUBMIT_DIR
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "activate").write_text("")
    record = tmp_path / "srun.args"
    shell = f'srun() {{ printf "%s\\0" "$@" > {record}; }}; export -f srun; exec bash {SBATCH}'
    full_env = {
        **env,
        "VENV": str(venv.parent),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    result = subprocess.run(["bash", "-c", shell], env=full_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return record.read_text().split("\0")[:-1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_trainer_from_the_sbatch_line_takes_ranks_from_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sbatch script's own srun arguments build, in one task of its 2 x 4 job, a DDP trainer whose world size and
    ranks are SLURM's, with auto-requeue on SIGUSR1; a devices/--ntasks-per-node mismatch is refused."""
    # Building a trainer inside this fake task sets Lightning's process-global rank (6 here); keep it from leaking
    # into later tests, where a non-zero rank turns every logger into a no-op.
    import lightning.fabric.utilities.rank_zero as fabric_rank_zero
    import lightning.pytorch.utilities.rank_zero as pl_rank_zero
    import lightning_utilities.core.rank_zero as utilities_rank_zero
    from lightning.pytorch.plugins.environments import SLURMEnvironment
    from lightning.pytorch.strategies import DDPStrategy

    for module in (fabric_rank_zero, pl_rank_zero, utilities_rank_zero):
        monkeypatch.setattr(module.rank_zero_only, "rank", getattr(module.rank_zero_only, "rank", 0))

    options = sbatch_options()
    job = slurm_job_env(options, tmp_path)
    args = srun_arguments(tmp_path, {**job, "DATA": str(tmp_path / "VOC2012"), "RUN": str(tmp_path / "run")})
    assert args[:2] == ["wsss", "fit"]
    nodes, per_node = int(options["nodes"]), int(options["ntasks-per-node"])
    assert args[args.index("--trainer.devices") + 1] == str(per_node)
    assert args[args.index("--trainer.num_nodes") + 1] == str(nodes)

    node, local = nodes - 1, per_node - 2  # a task on the last node, not local rank 0
    env = task_env(job, node, local)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("MASTER_ADDR", "MASTER_PORT"):  # SLURMEnvironment writes them: set first, so they are undone
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)
    assert SLURMEnvironment.detect()
    environment = SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1)
    assert environment.world_size() == nodes * per_node
    assert environment.global_rank() == node * per_node + local
    assert (environment.local_rank(), environment.node_rank()) == (local, node)
    assert environment.main_address == "gpu07"  # the first node of SLURM_NODELIST
    assert environment.main_port == 15000 + int(env["SLURM_JOB_ID"][-4:])  # same port on every task
    environment.validate_settings(num_devices=per_node, num_nodes=nodes)
    with pytest.raises(ValueError, match="ntasks-per-node"):
        environment.validate_settings(num_devices=per_node * 2, num_nodes=nodes)
    with pytest.raises(ValueError, match="nodes"):
        environment.validate_settings(num_devices=per_node, num_nodes=1)

    from wsss_lightning.cli import _cli_class

    # The demo's method config (the VOC one needs its weights file); CPU for CI; everything else is the srun line.
    method = args.index("--config") + 1
    args[method] = str(ROOT / "configs" / "demo_auxseg.yaml")
    trainer = _cli_class()([*args[2:], "--trainer.accelerator", "cpu", "--trainer.logger", "false"], run=False).trainer
    assert isinstance(trainer.strategy, DDPStrategy)
    cluster = trainer.strategy.cluster_environment
    assert isinstance(cluster, SLURMEnvironment)
    assert cluster.auto_requeue is True and cluster.requeue_signal == signal.SIGUSR1
    assert trainer.num_nodes == nodes and trainer.num_devices == per_node
    assert trainer.world_size == nodes * per_node
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank) == (node * per_node + local, local, node)
