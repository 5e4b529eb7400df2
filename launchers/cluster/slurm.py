"""A SLURM batch script that runs a sweep on a Ray cluster spanning the job's nodes.

The script (``templates/slurm.sbatch.txt``) follows Ray's documented SLURM recipe: one
``ray start --head --block`` on the first node and one ``ray start --address=HEAD --block`` on
every other node, each as a background ``srun`` step; it waits until ``ray status`` lists every
node, runs ``specbench sweep CONFIG --address HEAD:PORT``, and stops Ray by terminating the srun
steps. Token authentication is on (a fresh token per job), the dashboard binds to the head's
loopback, and Ray uses a per-job temp dir so that it never meets another job's Ray on a shared
node. Re-submitting the script resumes the sweep.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

#: awk program counting the alive nodes in ``ray status`` output (lines naming a node under
#: "Active:", up to "Pending:"): the readiness check of the script, shared with the tests.
ALIVE_NODES_AWK = (
    "/^Active:/ {a = 1; next} /^(Pending|Recent failures):/ {a = 0} a && /node_/ {n++} END {print n + 0}"
)

#: SLURM --time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
#: days-hours:minutes, days-hours:minutes:seconds.
_TIME_FORMS = [
    r"(?P<m>\d+)",
    r"(?P<m>\d+):(?P<s>\d{1,2})",
    r"(?P<h>\d+):(?P<m>\d{1,2}):(?P<s>\d{1,2})",
    r"(?P<d>\d+)-(?P<h>\d{1,2})",
    r"(?P<d>\d+)-(?P<h>\d{1,2}):(?P<m>\d{1,2})",
    r"(?P<d>\d+)-(?P<h>\d{1,2}):(?P<m>\d{1,2}):(?P<s>\d{1,2})",
]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SLURM_WORD = re.compile(r"^[A-Za-z0-9_.,+-]+$")


def parse_time(time: str) -> int:
    """Seconds in a SLURM ``--time`` value, or ValueError naming the accepted formats."""
    text = str(time).strip()
    for form in _TIME_FORMS:
        m = re.fullmatch(form, text)
        if not m:
            continue
        parts = {k: int(v) for k, v in m.groupdict().items() if v is not None}
        # Seconds always below 60; minutes below 60 when hours are given; hours below 24 with days.
        limits = [
            ("s", "seconds", 60, True),
            ("m", "minutes", 60, "h" in parts),
            ("h", "hours", 24, "d" in parts),
        ]
        for key, word, limit, applies in limits:
            if applies and parts.get(key, 0) >= limit:
                raise ValueError(f"time {text!r}: {word} must be below {limit}")
        seconds = (
            parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)
        )
        if seconds <= 0:
            raise ValueError(f"time {text!r} is zero; give the job a positive time limit")
        return seconds
    raise ValueError(
        f"time {text!r} is not a SLURM time limit; use minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS "
        "(e.g. 90, 04:00:00, 1-12:00:00)"
    )


def _positive_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value


def _one_line(name: str, value: object) -> str:
    text = str(value)
    if not text.strip():
        raise ValueError(f"{name} must not be empty")
    if any(c in text for c in "\n\r\0"):
        raise ValueError(f"{name} must be a single line")
    return text


def _sbatch_option(option: str) -> str:
    """``--qos=high`` or ``#SBATCH --qos=high`` → ``#SBATCH --qos=high``."""
    text = _one_line("extra_sbatch option", option).strip()
    if text.startswith("#SBATCH"):
        text = text[len("#SBATCH") :].strip()
    if not text.startswith("-"):
        raise ValueError(
            f"extra_sbatch option {option!r} must be an sbatch flag such as --qos=high or --exclusive"
        )
    return f"#SBATCH {text}"


def render_sbatch(
    config_path: str | Path,
    *,
    nodes: int,
    gpus_per_node: int,
    cpus_per_node: int,
    time: str,
    partition: str,
    storage: str,
    name: str,
    account: str | None = None,
    venv: str = ".venv",
    port: int = 6379,
    extra_sbatch: Sequence[str] = (),
    node_timeout_s: int = 600,
) -> str:
    """An sbatch script that runs ``specbench sweep config_path`` on a Ray cluster over ``nodes``.

    Args:
        config_path: the sweep YAML (must exist; a relative path is used relative to the
            directory ``sbatch`` is run from, like ``storage`` and ``venv``).
        nodes: nodes of the allocation (≥ 1); the first hosts the Ray head and the driver, and
            every node contributes workers.
        gpus_per_node: GPUs per node (0 for CPU nodes); requested with ``--gpus-per-node``.
        cpus_per_node: CPUs per node given to Ray (``--cpus-per-task`` of the single task per node).
        time: SLURM time limit (``90``, ``04:00:00``, ``1-12:00:00``, ...).
        partition: SLURM partition.
        storage: results root on a filesystem every node sees (``--storage`` of the sweep).
        name: sweep name (``--name``; also the job name).
        account: SLURM account to charge, if the cluster needs one.
        venv: the virtual environment holding specbench (activated on every node).
        port: the Ray head's GCS port.
        extra_sbatch: further sbatch flags, one per item (``--exclusive``, ``--mem=0``, ``--qos=high``).
        node_timeout_s: how long the script waits for all nodes to join before giving up.

    Raises:
        ValueError: an argument is out of range or malformed (the message names it).
    """
    config = Path(config_path)
    if not config.is_file():
        raise ValueError(f"config {config} does not exist (give the sweep YAML file)")
    nodes = _positive_int("nodes", nodes, 1)
    gpus_per_node = _positive_int("gpus_per_node", gpus_per_node, 0)
    cpus_per_node = _positive_int("cpus_per_node", cpus_per_node, 1)
    port = _positive_int("port", port, 1024)
    if port > 65535:
        raise ValueError(f"port must be at most 65535, not {port}")
    node_timeout_s = _positive_int("node_timeout_s", node_timeout_s, 1)
    parse_time(time)
    if not _NAME.match(str(name)):
        raise ValueError(
            f"name {name!r} must start with a letter or digit and use only letters, digits, '_', '.', '-'"
        )
    for label, value in (("partition", partition), ("account", account)):
        if value is None and label == "account":
            continue
        if not _SLURM_WORD.match(str(value or "")):
            raise ValueError(
                f"{label} {value!r} must be a SLURM name (letters, digits, '_', '.', '-', ',', '+')"
            )
    storage = _one_line("storage", storage)
    venv = _one_line("venv", venv)
    if isinstance(extra_sbatch, str):
        raise ValueError("extra_sbatch must be a list of flags, not one string")

    directives = [
        f"#SBATCH --job-name={name}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --cpus-per-task={cpus_per_node}",
        f"#SBATCH --time={str(time).strip()}",
        f"#SBATCH --partition={partition}",
        f"#SBATCH --output={name}-%j.out",
    ]
    if gpus_per_node:
        directives.insert(4, f"#SBATCH --gpus-per-node={gpus_per_node}")
    if account:
        directives.append(f"#SBATCH --account={account}")
    directives += [_sbatch_option(opt) for opt in extra_sbatch]

    from launchers.cluster import load_template

    return load_template("slurm.sbatch.txt").substitute(
        directives="\n".join(directives),
        config=shlex.quote(str(config)),
        storage=shlex.quote(storage),
        name=shlex.quote(str(name)),
        venv=shlex.quote(venv),
        port=port,
        nodes=nodes,
        cpus_per_node=cpus_per_node,
        gpus_per_node=gpus_per_node,
        node_timeout_s=node_timeout_s,
        srun_gpus=f" --gres=gpu:{gpus_per_node}" if gpus_per_node else "",
        count_awk=shlex.quote(ALIVE_NODES_AWK),
    )
