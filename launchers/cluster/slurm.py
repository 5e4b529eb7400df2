"""A Slurm batch script that runs a sweep on a Ray cluster spanning the job's nodes.

The script (``templates/slurm.sbatch.txt``) follows Ray's documented Slurm recipe: one
``ray start --head --block`` on the first node and one ``ray start --address=HEAD --block`` on
every other node, each as a background ``srun`` step; it waits until ``ray status`` lists every
node, runs ``specbench sweep CONFIG --address HEAD:PORT``, and stops Ray by terminating the srun
steps. Token authentication is on (a fresh token per job), the dashboard binds to the head's
loopback, and Ray uses a per-job temp dir and a per-job block of ports, so that it never meets
another job's Ray on a shared node. Re-submitting the script resumes the sweep.

Targets: Slurm 22.05 or later (``srun --overlap``, ``--gpus-per-node``; the steps follow
26.05's rule that ``--gpus-per-node`` and ``--gres=gpu`` are mutually exclusive) and Ray 2.60
(every ``ray start`` port flag set per job; token auth needs Ray ≥ 2.52).
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

#: awk program printing the first routable address among the words it reads: the first IPv4
#: one, else the first IPv6 one (zone id dropped, no brackets). Loopback (127/8, ::1, and
#: v4-mapped loopback), "this network" (0/8, ::), link-local (169.254/16, fe80::/10) addresses
#: and host names are skipped: another node cannot reach the head at any of them, and stock
#: Debian/Ubuntu map the machine's own name to 127.0.1.1 in /etc/hosts.
ROUTABLE_ADDRESS_AWK = (
    '{for (i = 1; i <= NF; i++) {a = tolower($i); sub(/%.*/, "", a);'
    " if (a ~ /^[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+$/) {"
    'if (v4 == "" && a !~ /^(127|0)[.]/ && a !~ /^169[.]254[.]/) v4 = a}'
    " else if (a ~ /^[0-9a-f:.]+$/ && a ~ /:/) {"
    'if (v6 == "" && a != "::1" && a != "::" && a !~ /^fe[89ab][0-9a-f]:/'
    " && a !~ /^::ffff:(127|0)[.]/) v6 = a}}}"
    ' END {if (v4 != "") print v4; else if (v6 != "") print v6}'
)

#: Ports at the start of a job's block, before its worker range: the head's GCS, dashboard and
#: client-server ports, the metrics ports of its dashboard and autoscaler, and the six service
#: ports of every node (offsets 0-10 in the template). Ray 2.60 has fixed defaults for some of
#: them (6379, 8265, 10001, 44227, 44217, 52365, workers 10002-19999) and random ones for the
#: rest; setting every one keeps two jobs on one node apart and gives a firewall a known list.
SERVICE_PORTS = 11
#: Job port blocks stay below Linux's default ephemeral range (32768-60999), from which the
#: kernel picks client-side ports, so a block's ports are free unless a server holds them.
PORT_LIMIT = 32768
#: Fraction of a node's memory request given to Ray's object store: Ray's own default share.
OBJECT_STORE_FRACTION = 0.3

#: Slurm --time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
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
#: Slurm memory sizes: an integer with an optional unit K, M, G or T (binary; default M).
_MEM = re.compile(r"^(\d+)([KMGT]?)$", re.IGNORECASE)
_MEM_UNITS = {"K": 2**10, "": 2**20, "M": 2**20, "G": 2**30, "T": 2**40}
#: sbatch flags the script sets from its own arguments (and the Ray settings that follow from
#: them): given again as an extra option they would contradict it, so they are refused.
_OWN_FLAGS = {
    "--exclusive": "exclusive", "--oversubscribe": "exclusive", "-s": "exclusive",
    "--mem": "mem", "--mem-per-cpu": "mem", "--mem-per-gpu": "mem",
    "--gres": "gpus_per_node", "--gpus": "gpus_per_node", "-G": "gpus_per_node",
    "--gpus-per-node": "gpus_per_node", "--gpus-per-task": "gpus_per_node", "--gpus-per-socket": "gpus_per_node",
    "--cpus-per-task": "cpus_per_node", "-c": "cpus_per_node", "--cpus-per-gpu": "cpus_per_node",
    "--nodes": "nodes", "-N": "nodes", "--ntasks": "nodes", "-n": "nodes", "--ntasks-per-node": "nodes",
}  # fmt: skip


def parse_time(time: str) -> int:
    """Seconds in a Slurm ``--time`` value, or ValueError naming the accepted formats."""
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
        f"time {text!r} is not a Slurm time limit; use minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS "
        "(e.g. 90, 04:00:00, 1-12:00:00)"
    )


def parse_mem(mem: str) -> int:
    """Bytes in a Slurm ``--mem`` value (``64G``, ``500000`` = MiB; units are binary), or ValueError."""
    m = _MEM.match(str(mem).strip())
    if not m:
        raise ValueError(f"mem {mem!r} is not a Slurm memory size; use a number with K, M, G or T (e.g. 64G)")
    return int(m.group(1)) * _MEM_UNITS[m.group(2).upper()]


def worker_ports(cpus_per_node: int) -> int:
    """Ports of a job's worker range on each node: twice its CPUs, at least 100.

    Every Ray worker process (a task worker or an actor) holds one port of the range while it
    lives; Ray keeps about one idle worker per CPU and each actor (a trial, its training ranks)
    adds one, so twice the CPUs leaves room for the actors of every trial the node can hold.
    """
    return max(100, 2 * cpus_per_node)


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
    """``--qos=high`` or ``#SBATCH --qos=high`` → ``#SBATCH --qos=high``; flags the script sets
    itself (resources, ``--exclusive``, ``--mem``) are refused with the argument to use instead."""
    text = _one_line("extra_sbatch option", option).strip()
    if text.startswith("#SBATCH"):
        text = text[len("#SBATCH") :].strip()
    if not text.startswith("-"):
        raise ValueError(f"extra_sbatch option {option!r} must be an sbatch flag such as --qos=high")
    flag = re.split(r"[=\s]", text, maxsplit=1)[0]
    if flag in _OWN_FLAGS:
        raise ValueError(
            f"extra_sbatch option {option!r}: the script sets {flag} itself; use its {_OWN_FLAGS[flag]} argument"
        )
    return f"#SBATCH {text}"


def _memory_directives(exclusive: bool, mem: str | None) -> tuple[list[str], str]:
    """The memory/exclusivity ``#SBATCH`` lines and the ``ray start`` memory flags.

    Ray sizes its object store (30 % of memory) and its ``memory`` resource from the memory it
    sees on the node, not from the job's share. A whole node (``--exclusive --mem=0``) is all
    the job's, so Ray's own sizing is right; a memory request ``M`` instead gives Ray exactly
    ``--object-store-memory = 0.3 M`` and ``--memory = M - 0.3 M``, so the job stays within
    what Slurm granted on a node it shares.
    """
    if mem is None:
        if not exclusive:
            raise ValueError(
                "a job sharing its nodes (exclusive=False, --no-exclusive) needs a memory request: "
                "give mem (--mem), e.g. 64G, or keep whole nodes"
            )
        return ["#SBATCH --exclusive", "#SBATCH --mem=0"], ""
    text = str(mem).strip().upper()
    total = parse_mem(text)
    lines = (["#SBATCH --exclusive"] if exclusive else []) + [f"#SBATCH --mem={text}"]
    if total == 0:  # --mem=0: all of each node's memory, as for an exclusive job
        return lines, ""
    if total < 2**30:
        raise ValueError(f"mem {mem!r} is too small for a Ray node; give at least 1G")
    store = int(total * OBJECT_STORE_FRACTION)
    return lines, f" --memory={total - store} --object-store-memory={store}"


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
    port: int = 20000,
    exclusive: bool = True,
    mem: str | None = None,
    extra_sbatch: Sequence[str] = (),
    node_timeout_s: int = 600,
) -> str:
    """An sbatch script that runs ``specbench sweep config_path`` on a Ray cluster over ``nodes``.

    Args:
        config_path: the sweep YAML (must exist; a relative path is used relative to the
            directory ``sbatch`` is run from, like ``storage`` and ``venv``).
        nodes: nodes of the allocation (≥ 1); the first hosts the Ray head and the driver, and
            every node contributes workers.
        gpus_per_node: GPUs per node (0 for CPU nodes); requested with ``--gpus-per-node`` for the
            job and for each Ray step (never also ``--gres=gpu``).
        cpus_per_node: CPUs per node given to Ray (``--cpus-per-task`` of the single task per node).
        time: Slurm time limit (``90``, ``04:00:00``, ``1-12:00:00``, ...).
        partition: Slurm partition.
        storage: results root on a filesystem every node sees (``--storage`` of the sweep).
        name: sweep name (``--name``; also the job name).
        account: Slurm account to charge, if the cluster needs one.
        venv: the virtual environment holding specbench (activated on every node).
        port: first port of the job port blocks. A job uses the block ``port + (job id mod
            slots) × block`` of ``SERVICE_PORTS + worker_ports(cpus_per_node)`` ports, with as
            many slots as fit below :data:`PORT_LIMIT`.
        exclusive: whole nodes (``--exclusive``; default). False shares them and needs ``mem``.
        mem: memory per node (Slurm units: ``480G``); default with ``exclusive`` all of it
            (``--mem=0``). Ray's object store and memory resource are sized from it.
        extra_sbatch: further sbatch flags, one per item (``--qos=high``, ``--constraint=h100``).
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
    block = SERVICE_PORTS + worker_ports(cpus_per_node)
    port = _positive_int("port", port, 1024)
    if port + block > PORT_LIMIT:
        raise ValueError(
            f"port must be at most {PORT_LIMIT - block}, not {port}: a job's {block} Ray ports must fit "
            f"below {PORT_LIMIT}, where Linux's ephemeral port range starts"
        )
    slots = (PORT_LIMIT - port) // block
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
                f"{label} {value!r} must be a Slurm name (letters, digits, '_', '.', '-', ',', '+')"
            )
    storage = _one_line("storage", storage)
    venv = _one_line("venv", venv)
    if isinstance(extra_sbatch, str):
        raise ValueError("extra_sbatch must be a list of flags, not one string")
    memory_lines, ray_memory = _memory_directives(bool(exclusive), mem)

    directives = [
        f"#SBATCH --job-name={name}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --cpus-per-task={cpus_per_node}",
        *([f"#SBATCH --gpus-per-node={gpus_per_node}"] if gpus_per_node else []),
        *memory_lines,
        f"#SBATCH --time={str(time).strip()}",
        f"#SBATCH --partition={partition}",
        f"#SBATCH --output={name}-%j.out",
        *([f"#SBATCH --account={account}"] if account else []),
        *[_sbatch_option(opt) for opt in extra_sbatch],
    ]

    from launchers.cluster import load_template

    return load_template("slurm.sbatch.txt").substitute(
        directives="\n".join(directives),
        config=shlex.quote(str(config)),
        storage=shlex.quote(storage),
        name=shlex.quote(str(name)),
        venv=shlex.quote(venv),
        port_base=port,
        port_block=block,
        port_slots=slots,
        nodes=nodes,
        cpus_per_node=cpus_per_node,
        gpus_per_node=gpus_per_node,
        node_timeout_s=node_timeout_s,
        # The step asks for the job's GPUs with the option sbatch already exported as
        # SLURM_GPUS_PER_NODE: srun reads that variable as --gpus-per-node, and Slurm 26.05
        # refuses --gres=gpu next to it.
        srun_gpus=' --gpus-per-node="$GPUS_PER_NODE"' if gpus_per_node else "",
        ray_memory=ray_memory,
        count_awk=shlex.quote(ALIVE_NODES_AWK),
        routable_awk=shlex.quote(ROUTABLE_ADDRESS_AWK),
    )
