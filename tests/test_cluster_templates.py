"""launchers.cluster: the Slurm batch script and the KubeRay RayJob manifest.

The sbatch script is checked three ways: ``bash -n``; the order of its commands; and a run
under stand-ins for ``srun``, ``scontrol``, ``getent``, ``hostname``, ``ray`` and ``specbench``
(a fake 3-node allocation on this machine), which exercises its control flow: choosing the
head's address, the Ray ports, waiting for the nodes, the sweep's exit status, and stopping Ray
on every path. The stand-in ``srun`` refuses ``--gres=gpu`` next to ``--gpus-per-node`` (or the
``SLURM_GPUS_PER_NODE`` that sbatch exports), as Slurm 26.05 does. The awk that counts nodes in
``ray status`` output is checked against real output in tests/test_multinode.py.

Each RayJob manifest is validated against tests/data/rayjob_schema.json, a hand-written JSON
Schema of the part of KubeRay's ray.io/v1 API (v1.5.1 to v1.7.0) the generator writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import tiny_sweep

from launchers.cluster import render_rayjob, render_sbatch
from launchers.cluster.kuberay import RAY_VERSION, block_scalar, k8s_name
from launchers.cluster.slurm import (
    ALIVE_NODES_AWK,
    OBJECT_STORE_FRACTION,
    PORT_LIMIT,
    ROUTABLE_ADDRESS_AWK,
    SERVICE_PORTS,
    parse_mem,
    parse_time,
    worker_ports,
)

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def _sbatch(**overrides) -> str:
    args = dict(
        nodes=3, gpus_per_node=4, cpus_per_node=32, time="1-00:00:00", partition="gpu",
        storage="/shared/results dir", name="quickstart", venv=".venv", port=6380,
    )  # fmt: skip
    args.update(overrides)
    return render_sbatch(args.pop("config_path", QUICKSTART), **args)


# ------------------------------------------------------------------------------------ Slurm
def test_sbatch_passes_bash_syntax_check(tmp_path):
    script = tmp_path / "job.sh"
    script.write_text(_sbatch(account="proj-1", extra_sbatch=["--constraint=h100", "#SBATCH --qos=high"]))
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def _code(text: str) -> str:
    """The script's commands and directives, without its comments."""
    return "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#") or line.startswith("#SBATCH")
    )


def test_sbatch_directives():
    text = _sbatch(account="proj-1", extra_sbatch=["--constraint=h100", "#SBATCH --qos=high"])
    assert _directives(text) == [
        "#SBATCH --job-name=quickstart",
        "#SBATCH --nodes=3",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=32",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --exclusive",
        "#SBATCH --mem=0",
        "#SBATCH --time=1-00:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --output=quickstart-%j.out",
        "#SBATCH --account=proj-1",
        "#SBATCH --constraint=h100",
        "#SBATCH --qos=high",
    ]
    # sbatch stops reading directives at the first command: all of them must come first.
    first_command = next(i for i, line in enumerate(text.splitlines()) if line and not line.startswith("#"))
    last_directive = max(i for i, line in enumerate(text.splitlines()) if line.startswith("#SBATCH"))
    assert last_directive < first_command
    cpu_only = _code(_sbatch(gpus_per_node=0))
    assert "--gpus-per-node" not in cpu_only and "--gres" not in cpu_only and "--account" not in cpu_only


def test_sbatch_asks_for_gpus_one_way_only():
    """(a) The job asks with --gpus-per-node, which sbatch exports as SLURM_GPUS_PER_NODE and
    srun reads back as --gpus-per-node; --gres=gpu next to it is refused by Slurm >= 26.05."""
    text = _code(_sbatch())
    assert "--gres" not in text
    steps = [
        line for line in text.splitlines() if line.lstrip().startswith("srun ") and "--cpus-per-task" in line
    ]
    assert len(steps) == 2 and all('--gpus-per-node="$GPUS_PER_NODE"' in line for line in steps)


def test_sbatch_memory_request():
    """(c) Whole nodes with all their memory by default; a shared node gets a memory request,
    and Ray is told that request (object store 30 %, memory resource the rest)."""
    whole = _code(_sbatch())
    assert {"#SBATCH --exclusive", "#SBATCH --mem=0"} <= set(_directives(whole))
    assert "--object-store-memory" not in whole  # Ray sizes itself from a node that is all the job's
    shared = _code(_sbatch(exclusive=False, mem="64g"))
    assert "#SBATCH --mem=64G" in _directives(shared) and "#SBATCH --exclusive" not in shared
    store = int(64 * 2**30 * OBJECT_STORE_FRACTION)
    flags = f"--memory={64 * 2**30 - store} --object-store-memory={store}"
    assert shared.count(flags) == 2  # the head and the workers
    both = _sbatch(mem="500G")
    assert {"#SBATCH --exclusive", "#SBATCH --mem=500G"} <= set(_directives(both)) and "--memory=" in both
    assert "--memory=" not in _sbatch(exclusive=False, mem="0")  # --mem=0: all of each node's memory


@pytest.mark.parametrize(
    ("text", "size"),
    [("64G", 64 * 2**30), ("64g", 64 * 2**30), ("2048", 2 * 2**30), ("1T", 2**40), ("512K", 2**19)],
)
def test_parse_mem(text, size):
    assert parse_mem(text) == size


def test_sbatch_commands_in_order():
    text = _sbatch()
    steps = [
        "source .venv/bin/activate",
        "export RAY_AUTH_MODE=token",
        "JOB_PORT=$((PORT_BASE + (${SLURM_JOB_ID:-0} % PORT_SLOTS) * PORT_BLOCK))",
        "HEAD_IP=\"${SPECBENCH_HEAD_IP:-$(head_addresses",
        "ray start --head --node-ip-address=\"$HEAD_IP\" \"${HEAD_PORTS[@]}\" \"${NODE_PORTS[@]}\"",
        "--dashboard-host=127.0.0.1",
        "ray start --address=\"$ADDRESS\" \"${NODE_PORTS[@]}\"",
        "until [ \"$(ray_nodes_alive)\" -ge \"$NUM_NODES\" ]",
        "specbench sweep \"$CONFIG\" --address \"$ADDRESS\" --storage \"$STORAGE\" --name \"$NAME\"",
        "exit \"$status\"",
    ]  # fmt: skip
    positions = [text.index(s) for s in steps]
    assert positions == sorted(positions)
    assert "--block &" in text and '--num-cpus="$CPUS_PER_NODE" --num-gpus="$GPUS_PER_NODE"' in text
    assert "PORT_BASE=6380" in text and "CONFIG=" + str(QUICKSTART) in text
    assert "STORAGE='/shared/results dir'" in text  # shell-quoted
    assert "trap stop_ray EXIT" in text
    assert "resumes the sweep" in text  # the resume note for the person who re-submits it
    assert "\nray stop" not in text and " ray stop " not in text  # would kill other jobs' Ray
    assert "Slurm 22.05" in text and "Ray 2.60" in text  # the versions it targets


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nodes": 0}, "nodes must be at least 1"),
        ({"nodes": 2.5}, "nodes must be an integer"),
        ({"nodes": True}, "nodes must be an integer"),
        ({"gpus_per_node": -1}, "gpus_per_node must be at least 0"),
        ({"cpus_per_node": 0}, "cpus_per_node must be at least 1"),
        ({"time": "four hours"}, "not a Slurm time limit"),
        ({"time": "1:75:00"}, "minutes must be below 60"),
        ({"time": "2-25"}, "hours must be below 24"),
        ({"time": "0"}, "zero"),
        ({"partition": "gpu; rm -rf /"}, "partition"),
        ({"partition": ""}, "partition"),
        ({"account": "a b"}, "account"),
        ({"name": "-bad"}, "name"),
        ({"name": "two words"}, "name"),
        ({"port": 80}, "port must be at least 1024"),
        ({"port": 32700}, "port must be at most 32657"),  # 11 service + 100 worker ports below 32768
        ({"storage": ""}, "storage must not be empty"),
        ({"storage": "a\nb"}, "storage must be a single line"),
        ({"exclusive": False}, "needs a memory request"),
        ({"mem": "lots"}, "not a Slurm memory size"),
        ({"mem": "64GB"}, "not a Slurm memory size"),
        ({"mem": "512M"}, "too small for a Ray node"),
        ({"extra_sbatch": ["qos=high"]}, "must be an sbatch flag"),
        ({"extra_sbatch": "--exclusive"}, "list of flags"),
        ({"extra_sbatch": ["--x\n#SBATCH --y"]}, "single line"),
        ({"extra_sbatch": ["--exclusive"]}, "sets --exclusive itself; use its exclusive argument"),
        ({"extra_sbatch": ["--mem=100G"]}, "use its mem argument"),
        ({"extra_sbatch": ["#SBATCH --gres=gpu:8"]}, "use its gpus_per_node argument"),
        ({"config_path": "no/such/sweep.yaml"}, "does not exist"),
    ],
)
def test_sbatch_refuses_bad_arguments(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _sbatch(**overrides)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 5400), ("30:15", 1815), ("04:00:00", 14400), ("2-12", 216000), ("1-00:30", 88200),
     ("1-00:00:01", 86401)],
)  # fmt: skip
def test_parse_time(text, seconds):
    assert parse_time(text) == seconds


# A fake Slurm allocation: the stand-ins log what they are asked to do, `ray start --block`
# sleeps until terminated (as the real one does), `ray status` prints real-format output with one
# node per `ray start` seen so far. `srun` applies Slurm 26.05's rule on GPU options; `scontrol
# show node`, `getent` and `hostname` answer from FAKE_* variables (a stock Debian node by default).
FAKE_TOOLS = {
    "scontrol": """
        #!/bin/bash
        case "$1 $2" in
          "show hostnames") printf '%s\\n' $FAKE_NODES ;;
          "show node") printf 'NodeName=%s Arch=x86_64 CoresPerSocket=32\\n   NodeAddr=%s NodeHostName=%s\\n' "$3" "$FAKE_NODE_ADDR" "$3" ;;
          *) exit 9 ;;
        esac
    """,
    "getent": """
        #!/bin/bash
        [ "$1" = "ahosts" ] && [ -n "${FAKE_GETENT:-}" ] || exit 2
        for a in $FAKE_GETENT; do printf '%s       STREAM %s\\n' "$a" "$2"; done
    """,
    "srun": """
        #!/bin/bash
        node=""; opts=""; gres=""; gpus="${SLURM_GPUS_PER_NODE:-}"
        while [ $# -gt 0 ]; do
          case "$1" in
            -w) node="$2"; shift 2 ;;
            --gres=gpu*) gres="$1"; opts="$opts $1"; shift ;;
            --gpus-per-node=*) gpus="${1#*=}"; opts="$opts $1"; shift ;;
            -*) opts="$opts $1"; shift ;;
            *) break ;;
          esac
        done
        if [ -n "$gres" ] && [ -n "$gpus" ]; then
          echo "srun: fatal: --gpus-per-node and --gres=gpu are mutually exclusive." >&2; exit 1
        fi
        echo "srun[$node]$opts :: $*" >> "$FAKE_LOG"
        FAKE_NODE="$node" exec "$@"
    """,
    "hostname": """
        #!/bin/bash
        case "$1" in
          --ip-address|-i) echo "$FAKE_HOSTNAME_IP" ;;
          --all-ip-addresses|-I) echo "$FAKE_HOSTNAME_ALL" ;;
          *) echo "$FAKE_NODE" ;;
        esac
    """,
    "ray": """
        #!/bin/bash
        if [ "$1" = "start" ]; then
          if [ -n "${FAKE_HEAD_FAILS:-}" ] && [ "$2" = "--head" ]; then echo "head failed" >> "$FAKE_LOG"; exit 1; fi
          child=""
          trap '[ -n "$child" ] && kill $child; echo "stopped $FAKE_NODE" >> "$FAKE_LOG"; exit 0' TERM
          echo "ray $* auth=$RAY_AUTH_MODE token=${#RAY_AUTH_TOKEN} metrics=$DASHBOARD_METRIC_PORT,$AUTOSCALER_METRIC_PORT niceness=${RAY_worker_niceness:-unset}" >> "$FAKE_LOG"
          sleep 1000 >/dev/null 2>&1 & child=$!
          wait $child
        elif [ "$1" = "status" ]; then
          echo "ray $*" >> "$FAKE_LOG"
          n=$(grep -c '^ray start' "$FAKE_LOG")
          echo "======== Autoscaler status: now ========"
          echo "Node status"
          echo "---------------------------------------------------------------"
          echo "Active:"
          for i in $(seq 1 "$n"); do echo " 1 node_$i"; done
          echo "Pending:"
          echo " (no pending nodes)"
          echo "Recent failures:"
          echo " (no failures)"
          echo ""
          echo "Resources"
          echo " 0.0/96.0 CPU"
        fi
    """,
    "specbench": """
        #!/bin/bash
        echo "specbench $* auth=$RAY_AUTH_MODE token=${#RAY_AUTH_TOKEN}" >> "$FAKE_LOG"
        exit "${FAKE_SWEEP_RC:-0}"
    """,
}
#: A stock Debian/Ubuntu node: Slurm knows it by name, and /etc/hosts maps its own name to
#: 127.0.1.1, so only the interfaces' addresses (`hostname -I`) are routable.
DEBIAN_NODE = {
    "FAKE_NODE_ADDR": "n1",
    "FAKE_GETENT": "127.0.1.1",
    "FAKE_HOSTNAME_IP": "127.0.1.1",
    "FAKE_HOSTNAME_ALL": "10.1.2.3 172.17.0.1 fd00::5",
}


def _fake_allocation(tmp_path: Path, job_id: int = 4242) -> tuple[Path, dict[str, str]]:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, body in FAKE_TOOLS.items():
        tool = venv / "bin" / name
        tool.write_text(textwrap.dedent(body).lstrip())
        tool.chmod(0o755)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "bin" / "activate").write_text(f'export PATH="{venv / "bin"}:$PATH"\n')
    log = tmp_path / "log"
    log.write_text("")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM_", "SPECBENCH_"))
    }  # the test may itself run under Slurm or with Ray settings
    env.update(
        FAKE_LOG=str(log), FAKE_NODES="n1 n2 n3", SLURM_JOB_NODELIST="n[1-3]", SLURM_JOB_ID=str(job_id),
        SLURM_GPUS_PER_NODE="4",  # what sbatch exports for #SBATCH --gpus-per-node=4
        SLURM_SUBMIT_DIR=str(tmp_path), SPECBENCH_POLL_S="0.2", **DEBIAN_NODE,
    )  # fmt: skip
    return venv, env


def _run_job(tmp_path: Path, env_overrides: dict[str, str] | None = None, job_id: int = 4242, **sbatch):
    """Run the script on the fake allocation: (process, log lines)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    venv, env = _fake_allocation(tmp_path, job_id)
    env.update(env_overrides or {})
    script = tmp_path / "job.sh"
    script.write_text(_sbatch(venv=str(venv), **{"node_timeout_s": 60, **sbatch}))
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)  # fmt: skip
    return result, (tmp_path / "log").read_text().splitlines()


needs_bash = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("awk") is None, reason="needs bash and awk"
)


@needs_bash
@pytest.mark.parametrize("sweep_rc", [0, 1])
def test_sbatch_runs_on_a_fake_allocation(tmp_path, sweep_rc):
    result, log = _run_job(tmp_path, {"FAKE_SWEEP_RC": str(sweep_rc)})
    assert result.returncode == sweep_rc, result.stdout + result.stderr
    starts = [line for line in log if line.startswith("ray start")]
    head = starts[0]
    block = SERVICE_PORTS + worker_ports(32)
    port = 6380 + (4242 % ((PORT_LIMIT - 6380) // block)) * block
    assert "--head" in head and "--node-ip-address=10.1.2.3" in head and f"--port={port}" in head
    assert "--dashboard-host=127.0.0.1" in head and "--temp-dir=/tmp/ray-4242" in head and "--block" in head
    assert "--num-cpus=32" in head and "--num-gpus=4" in head
    workers = starts[1:]
    assert len(workers) == 2 and all(f"--address=10.1.2.3:{port}" in w for w in workers)
    srun = [line for line in log if line.startswith("srun[")]
    nodes = [s.split("]")[0][len("srun[") :] for s in srun]
    assert nodes[:2] == ["n1", "n1"] and sorted(nodes[2:]) == ["n2", "n3"]  # address + head, then workers
    # (a) Every Ray step asks for the GPUs as the job did, and none with --gres (the stand-in
    # srun, like Slurm 26.05, would have refused it and the head would have died).
    ray_steps = [s for s in srun if ":: ray start" in s]
    assert len(ray_steps) == 3 and all("--gpus-per-node=4" in s and "--gres" not in s for s in ray_steps)
    sweep = [i for i, line in enumerate(log) if line.startswith("specbench")]
    assert len(sweep) == 1
    assert log[sweep[0]].startswith(
        f"specbench sweep {QUICKSTART} --address 10.1.2.3:{port} --storage /shared/results dir --name quickstart"
    )
    # Every Ray process (and the sweep) got token auth; the token is a 64-hex-digit secret.
    assert all("auth=token token=64" in line for line in [*starts, log[sweep[0]]])
    # Every node starts its Ray workers at niceness 0, not Ray's default 15.
    assert all(line.endswith("niceness=0") for line in starts)
    # The sweep ran only after all 3 nodes had started, and Ray was stopped after it on all nodes.
    assert max(log.index(s) for s in starts) < sweep[0]
    stopped = [line for line in log if line.startswith("stopped")]
    assert sorted(stopped) == ["stopped n1", "stopped n2", "stopped n3"]
    assert min(log.index(s) for s in stopped) > sweep[0]
    assert f"Ray cluster ready: 3 node(s) at 10.1.2.3:{port}" in result.stdout


@needs_bash
@pytest.mark.parametrize(
    ("node", "node_ip", "address"),
    [
        # Stock Debian/Ubuntu: the name resolves to 127.0.1.1; the interfaces have the address.
        ({}, "10.1.2.3", "10.1.2.3"),
        # Slurm's NodeAddr is a literal address: it comes first.
        ({"FAKE_NODE_ADDR": "10.7.0.1"}, "10.7.0.1", "10.7.0.1"),
        # IPv6 only: the address is bracketed in host:port, bare in --node-ip-address.
        ({"FAKE_GETENT": "::1", "FAKE_HOSTNAME_IP": "::1 127.0.1.1", "FAKE_HOSTNAME_ALL": "fe80::1%eth0 fd00:1::5"},
         "fd00:1::5", "[fd00:1::5]"),
        # The user's choice wins.
        ({"SPECBENCH_HEAD_IP": "192.168.5.5"}, "192.168.5.5", "192.168.5.5"),
    ],
)  # fmt: skip
def test_sbatch_head_address_is_routable(tmp_path, node, node_ip, address):
    """(b) The head's address is one the other nodes can reach, never a loopback one."""
    result, log = _run_job(tmp_path, node, port=20000)
    assert result.returncode == 0, result.stdout + result.stderr
    head = next(line for line in log if line.startswith("ray start --head"))
    assert f"--node-ip-address={node_ip} " in head
    port = re.search(r"--port=(\d+)", head).group(1)
    workers = [line for line in log if line.startswith("ray start --address")]
    assert len(workers) == 2 and all(f"--address={address}:{port} " in w for w in workers)
    sweep = next(line for line in log if line.startswith("specbench sweep"))
    assert f"--address {address}:{port} " in sweep


@needs_bash
def test_sbatch_stops_without_a_routable_head_address(tmp_path):
    loopback_only = {"FAKE_HOSTNAME_ALL": "", "FAKE_HOSTNAME_IP": "127.0.1.1 ::1"}
    result, log = _run_job(tmp_path, loopback_only)
    assert result.returncode == 3
    assert "found no routable address for n1" in result.stderr and "SPECBENCH_HEAD_IP" in result.stderr
    assert not any(line.startswith(("ray start", "specbench")) for line in log)


def _ray_start_port_flags() -> set[str]:
    """The port options of the installed `ray start` (the oracle for "every port is set")."""
    from ray.scripts.scripts import start

    flags = {
        opt
        for p in start.params
        if not getattr(p, "hidden", False)
        for opt in p.opts
        if opt.endswith("-port")
    }
    return flags - {"--worker-port-list"}  # the alternative to --min/--max-worker-port


def _ports(line: str) -> dict[str, int]:
    return {flag: int(value) for flag, value in re.findall(r"(--[a-z-]+-port|--port)=(\d+)", line)}


def _used_ports(ports: dict[str, int]) -> set[int]:
    named = {p for flag, p in ports.items() if flag not in ("--min-worker-port", "--max-worker-port")}
    return named | set(range(ports["--min-worker-port"], ports["--max-worker-port"] + 1))


@needs_bash
def test_sbatch_gives_each_job_its_own_ray_ports(tmp_path):
    """(c) Every port of `ray start` is set, from a block chosen by the job id: two jobs sharing
    a node (a whole-node job and a shared-node one with a memory request) share no port."""
    head_only = {"--port", "--dashboard-port", "--ray-client-server-port"}
    all_flags = _ray_start_port_flags()
    assert head_only < all_flags
    used = []
    for job_id, sbatch in [(4242, {}), (4243, {"exclusive": False, "mem": "64G"})]:
        result, log = _run_job(tmp_path / str(job_id), job_id=job_id, port=20000, **sbatch)
        assert result.returncode == 0, result.stdout + result.stderr
        starts = [line for line in log if line.startswith("ray start")]
        head, workers = _ports(starts[0]), [_ports(w) for w in starts[1:]]
        assert set(head) == all_flags and all(set(w) == all_flags - head_only for w in workers)
        assert all(w == {k: v for k, v in head.items() if k not in head_only} for w in workers)
        # The head's dashboard and autoscaler take their metrics ports from the environment.
        metrics = [int(p) for p in re.search(r"metrics=(\d+),(\d+)", starts[0]).groups()]
        named = [*head.values(), *metrics]
        named.remove(head["--min-worker-port"])
        named.remove(head["--max-worker-port"])
        ports = _used_ports(head) | set(metrics)
        assert len(set(named)) == len(named) == SERVICE_PORTS and len(ports) == SERVICE_PORTS + worker_ports(
            32
        )
        assert min(ports) >= 20000 and max(ports) < PORT_LIMIT
        memory = "--object-store-memory=" in starts[0]
        assert memory == ("mem" in sbatch) and all(
            ("--object-store-memory=" in w) == memory for w in starts[1:]
        )
        used.append(ports)
    assert not used[0] & used[1]


#: Stand-in for the sweep on a real Ray: prints the TCP ports on which this job's Ray processes
#: (those naming its temp dir, and their children) listen, then `ray status`.
REAL_RAY_SWEEP = """
#!/bin/bash
"$PYTHON" - "$RAY_TMP_DIR" <<'PY'
import sys, psutil
procs = [p for p in psutil.process_iter(["cmdline"]) if any(sys.argv[1] in a for a in p.info["cmdline"] or [])]
pids = {p.pid for p in procs} | {c.pid for p in procs for c in p.children(recursive=True)}
ports = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.pid in pids}
print("PORTS", *sorted(ports))
PY
ray status --address="$4"
"""


@needs_bash
@pytest.mark.integration
def test_sbatch_on_a_real_ray_listens_only_on_its_ports(tmp_path):
    """(c) With the real `ray` (Ray 2.60) on one node: it accepts every port flag, the memory
    flags and token auth, listens only on the job's block, and stops when the script ends."""
    psutil = pytest.importorskip("psutil")
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    tools = {"srun": FAKE_TOOLS["srun"], "scontrol": FAKE_TOOLS["scontrol"], "specbench": REAL_RAY_SWEEP}
    for name, body in tools.items():
        (bin_dir / name).write_text(textwrap.dedent(body).lstrip())
        (bin_dir / name).chmod(0o755)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:{Path(sys.executable).parent}:$PATH"\n')
    job_id = os.getpid()
    ray_tmp = f"/tmp/ray-sb{job_id}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM_", "SPECBENCH_"))}
    env.update(
        FAKE_LOG=str(tmp_path / "log"), FAKE_NODES="n1", SLURM_JOB_NODELIST="n1", SLURM_JOB_ID=str(job_id),
        SLURM_SUBMIT_DIR=str(tmp_path), SPECBENCH_POLL_S="1", SPECBENCH_HEAD_IP="127.0.0.1",
        SPECBENCH_RAY_TMPDIR=ray_tmp, RAY_TMP_DIR=ray_tmp, PYTHON=sys.executable, FAKE_NODE_ADDR="n1",
    )  # fmt: skip
    script = tmp_path / "job.sh"
    script.write_text(
        _sbatch(nodes=1, gpus_per_node=0, cpus_per_node=1, venv=str(tmp_path / "venv"), port=20000,
                exclusive=False, mem="2G", node_timeout_s=120)
    )  # fmt: skip
    result = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    block = SERVICE_PORTS + worker_ports(1)
    start = 20000 + job_id % ((PORT_LIMIT - 20000) // block) * block
    ports = [int(p) for p in re.search(r"^PORTS(( \d+)*)$", result.stdout, re.M).group(1).split()]
    assert start in ports and len(ports) >= 5  # the GCS port and the other services up by then
    assert all(start <= p < start + block for p in ports), (start, ports)
    assert "1.40GiB memory" in result.stdout and "614.40MiB object_store_memory" in result.stdout
    assert "specbench: stopping Ray" in result.stdout

    def left() -> list[int]:
        return [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if any(ray_tmp in a for a in p.info["cmdline"] or [])
        ]

    deadline = time.monotonic() + 30
    while left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left()  # every Ray process of the job is gone


@needs_bash
def test_sbatch_stops_when_the_head_fails(tmp_path):
    result, log = _run_job(tmp_path, {"FAKE_HEAD_FAILS": "1"}, node_timeout_s=30)
    assert result.returncode == 3
    assert "the Ray head exited during start-up" in result.stderr
    assert "head failed" in log
    assert not any(line.startswith(("ray start", "specbench")) for line in log)  # no workers, no sweep
    assert not any("--address=" in line for line in log if line.startswith("srun["))
    assert not any(line.startswith("stopped") for line in log)  # the failed head had nothing left to stop


@pytest.mark.parametrize(
    ("words", "chosen"),
    [
        ("127.0.1.1\n10.1.2.3 172.17.0.1", "10.1.2.3"),
        ("n1\n127.0.0.1 0.0.0.0 169.254.3.3 ::1\nfd00::5 192.168.1.9", "192.168.1.9"),  # IPv4 preferred
        ("::1 :: fe80::1%eth0 FEBF::2 ::ffff:127.0.0.1 2001:DB8::7%3", "2001:db8::7"),
        ("127.0.1.1 ::1 fe80::1", ""),
        ("", ""),
    ],
)
def test_routable_address_awk(words, chosen):
    if shutil.which("awk") is None:
        pytest.skip("needs awk")
    out = subprocess.run(
        ["awk", ROUTABLE_ADDRESS_AWK], input=words + "\n", capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == chosen


def test_alive_nodes_awk_counts_active_nodes_only():
    if shutil.which("awk") is None:
        pytest.skip("needs awk")
    status = textwrap.dedent(
        """
        ======== Autoscaler status: 2026-11-28 17:40:36 ========
        Node status
        ---------------------------------------------------------------
        Active:
         1 node_1d70d01fec24a7e6a43f7a636a12a4b2ee92ee3783a55e6170d07699
         1 node_2e81e12fec24a7e6a43f7a636a12a4b2ee92ee3783a55e6170d07600
        Pending:
         1 node_pending
        Recent failures:
         (no failures)
        """
    )
    out = subprocess.run(["awk", ALIVE_NODES_AWK], input=status, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"
    empty = subprocess.run(
        ["awk", ALIVE_NODES_AWK], input="No cluster status.\n", capture_output=True, text=True
    )
    assert empty.stdout.strip() == "0"


# ---------------------------------------------------------------------------------- KubeRay
def _rayjob(**overrides) -> list[dict]:
    args = dict(
        image="ghcr.io/lab/specbench:0.1", workers=4, gpus_per_worker=1, cpus_per_worker=8, memory="32Gi",
        storage="/results/specbench", name="Quick_start.v2", namespace="research",
    )  # fmt: skip
    args.update(overrides)
    text = render_rayjob(args.pop("config_path", QUICKSTART), **args)
    return list(yaml.safe_load_all(text))


def test_rayjob_manifest_structure():
    docs = _rayjob()
    assert [d["kind"] for d in docs] == ["RayJob", "ConfigMap"]
    job, config_map = docs
    assert job["apiVersion"] == "ray.io/v1" and config_map["apiVersion"] == "v1"
    assert job["metadata"] == {
        "name": "quick-start-v2",
        "namespace": "research",
        "labels": {"app.kubernetes.io/name": "specbench", "specbench/sweep": "quick-start-v2"},
    }
    spec = job["spec"]
    assert spec["entrypoint"] == (
        "specbench sweep /config/sweep.yaml --address auto --storage /results/specbench --name Quick_start.v2"
    )
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] == "K8sJobMode"
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == RAY_VERSION and cluster["authOptions"] == {"mode": "token"}

    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    head_pod = head["template"]["spec"]
    head_mounts = {m["name"]: m["mountPath"] for m in head_pod["containers"][0]["volumeMounts"]}
    assert head_mounts == {"sweep-config": "/config", "results": "/results"}
    volumes = {v["name"]: v for v in head_pod["volumes"]}
    assert (
        volumes["sweep-config"]["configMap"]["name"]
        == config_map["metadata"]["name"]
        == "quick-start-v2-config"
    )
    assert volumes["results"]["persistentVolumeClaim"]["claimName"] == "specbench-results"

    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 4
    (worker,) = group["template"]["spec"]["containers"]
    assert worker["image"] == "ghcr.io/lab/specbench:0.1"
    expected = {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert worker["resources"] == {"requests": expected, "limits": expected}
    assert {m["mountPath"] for m in worker["volumeMounts"]} >= {"/results"}
    assert config_map["metadata"]["namespace"] == "research"
    # Head and workers start Ray's worker processes at niceness 0, not Ray's default 15.
    for container in (head_pod["containers"][0], worker):
        assert {"name": "RAY_worker_niceness", "value": "0"} in container["env"]


RAYJOB_SCHEMA = json.loads((REPO / "tests" / "data" / "rayjob_schema.json").read_text())


def _schema_errors(job: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(RAYJOB_SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(job)]


def test_rayjob_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(RAYJOB_SCHEMA)
    assert "v1.5.1" in RAYJOB_SCHEMA["description"] and "v1.7.0" in RAYJOB_SCHEMA["description"]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"gpus_per_worker": 0, "cpus_per_worker": "500m", "memory": "2.5Gi", "namespace": "default"},
        {"storage": "s3://lab-results/specbench", "workers": 1, "backoff_limit": 0},
        {"ttl_seconds": 600, "head_cpus": 0.5, "head_memory": "512Mi"},
        {"name": "2026_sweep"},
        {
            "name": "9" * 80,
            "volume_claim": "results-rwx",
            "mount_path": "/mnt/results",
            "storage": "/mnt/results/x",
        },
    ],
)
def test_rayjob_validates_against_the_crd_schema(overrides):
    job = _rayjob(**overrides)[0]
    assert _schema_errors(job) == []


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("metadata", "name"), "2026-sweep", "does not match"),  # DNS-1035: starts with a letter
        (("metadata", "name"), "a" * 48, "is too long"),  # KubeRay's 47-character limit
        (
            ("spec", "shutdownAfterJobFinishes"),
            False,
            "True was expected",
        ),  # with ttlSecondsAfterFinished > 0
        (("spec", "ttlSecondsAfterFinishes"), 0, "Additional properties"),  # a misspelt field
        (("spec", "submissionMode"), "K8sMode", "is not one of"),
        (
            ("spec", "rayClusterSpec", "headGroupSpec", "rayStartParams", "num-cpus"),
            0,
            "is not of type 'string'",
        ),
        (("spec", "rayClusterSpec", "authOptions", "mode"), "Token", "is not one of"),
        (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "minReplicas"), -1, "less than the minimum"),
    ],
)
def test_rayjob_schema_rejects_what_kuberay_rejects(path, value, message):
    job = _rayjob(ttl_seconds=60)[0]
    node = job
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errors = _schema_errors(job)
    assert errors and any(message in e for e in errors), errors


def test_rayjob_deletes_the_cluster_when_the_sweep_ends():
    """(d) The Ray cluster (every GPU) goes when the sweep ends, unless a TTL is asked for; the
    RayJob and its submitter Job (the driver's log) stay."""
    text = render_rayjob(QUICKSTART, image="img:1", workers=2, gpus_per_worker=8, cpus_per_worker=8,
                         memory="32Gi", storage="/results/x", name="sweep")  # fmt: skip
    spec = yaml.safe_load_all(text).__next__()["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] == 0
    assert "kubectl logs job/sweep" in text
    debug = _rayjob(ttl_seconds=300)[0]["spec"]
    assert debug["shutdownAfterJobFinishes"] is True and debug["ttlSecondsAfterFinished"] == 300


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("2026_sweep", "specbench-2026-sweep"),
        ("Quick_start.v2", "quick-start-v2"),
        ("__lr-sweep__", "lr-sweep"),
        ("9" * 80, "specbench-" + "9" * 30),
        ("a" * 80, "a" * 40),
        ("x" * 39 + "_y", "x" * 39),  # no trailing '-' after the cut
    ],
)
def test_k8s_names_are_dns_1035_labels(name, expected):
    """(e) A sweep name that does not start with a letter is given one, so the operator accepts
    the RayJob; the sweep keeps its own name, and the manifest says how the two relate."""
    assert k8s_name(name) == expected
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", expected) and len(expected) <= 47


def test_rayjob_keeps_the_sweep_name_and_explains_the_kubernetes_one():
    text = render_rayjob(QUICKSTART, image="img:1", workers=1, gpus_per_worker=0, cpus_per_worker=2,
                         memory="4Gi", storage="/results/x", name="2026_sweep")  # fmt: skip
    job, config_map = yaml.safe_load_all(text)
    assert job["metadata"]["name"] == "specbench-2026-sweep"
    assert config_map["metadata"]["name"] == "specbench-2026-sweep-config"
    assert job["spec"]["entrypoint"].endswith("--name 2026_sweep")
    assert "RayJob name: specbench-2026-sweep (from the sweep name 2026_sweep)" in text
    assert "KubeRay v1.5.1 to v1.7.0" in text and "Ray 2.60" in text  # the versions it targets


def test_rayjob_embeds_the_config_verbatim():
    docs = _rayjob()
    assert docs[1]["data"]["sweep.yaml"] == QUICKSTART.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "text",
    [
        "name: x\n",
        "name: x",  # no final newline
        "name: x\n\n\n",  # several
        "",
        "\n",
        "  indented: first line\nnext: 1\n",
        "# comment\nname: α-sweep  \n\ttab: 1\n\n   \nend: true\n",
        "---\nname: x\n...\n",
        "crlf: 1\r\nnext: 2\r\n",  # falls back to a quoted scalar
        "nel\x85 and bell\x07\n",
    ],
)
def test_block_scalar_round_trips(text, tmp_path):
    doc = f"data:\n  sweep.yaml: {block_scalar(text, indent=2)}\n"
    assert yaml.safe_load(doc)["data"]["sweep.yaml"] == text
    config = tmp_path / "sweep.yaml"
    config.write_bytes(text.encode("utf-8"))
    assert _rayjob(config_path=config)[1]["data"]["sweep.yaml"] == text


def test_rayjob_cpu_workers_and_defaults():
    job = _rayjob(gpus_per_worker=0, cpus_per_worker="500m", memory="2.5Gi", namespace="default")[0]
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"] == {"cpu": "500m", "memory": "2.5Gi"}
    assert job["metadata"]["namespace"] == "default"
    assert k8s_name("A" * 80) == "a" * 40


def test_rayjob_accepts_an_object_store_uri_as_storage():
    job = _rayjob(storage="s3://lab-results/specbench")[0]
    assert job["spec"]["entrypoint"] == (
        "specbench sweep /config/sweep.yaml --address auto --storage s3://lab-results/specbench --name Quick_start.v2"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"workers": 0}, "workers must be at least 1"),
        ({"gpus_per_worker": -1}, "gpus_per_worker must be at least 0"),
        ({"cpus_per_worker": 0}, "cpus_per_worker must be positive"),
        ({"cpus_per_worker": "lots"}, "cpus_per_worker must be a CPU amount"),
        ({"memory": "32 gigs"}, "memory must be a Kubernetes quantity"),
        ({"image": "my image"}, "image"),
        ({"name": "bad name"}, "name"),
        ({"namespace": "Research"}, "namespace"),
        ({"storage": "ftp://host/results"}, "unsupported scheme 'ftp'"),
        ({"storage": "results"}, "absolute path"),
        ({"storage": "/elsewhere/results"}, "under the volume's mount path"),
        ({"mount_path": "/config"}, "collides"),
        ({"config_path": "no/such.yaml"}, "does not exist"),
        ({"ttl_seconds": -1}, "ttl_seconds must be at least 0"),
        ({"ttl_seconds": 2**31}, "ttl_seconds must be at most 2147483647"),
    ],
)
def test_rayjob_refuses_bad_arguments(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _rayjob(**overrides)


def test_templates_are_package_data():
    from importlib import resources

    names = {p.name for p in resources.files("launchers.cluster.templates").iterdir()}
    assert {"slurm.sbatch.txt", "rayjob.yaml.txt"} <= names


def test_new_cluster_flags_from_the_cli(write_yaml, capsys, monkeypatch):
    """--mem / --no-exclusive, --port, --ttl-seconds reach the renderers; a bad combination ends
    in one message and exit status 2 (in-process: one import of the CLI for all cases)."""
    from launchers.cli import main

    for key in ("PYTHONWARNINGS", "TOKENIZERS_PARALLELISM", "TORCH_EXTENSIONS_DIR"):
        monkeypatch.delenv(key, raising=False)  # main() sets defaults; restored after the test
    cfg = str(write_yaml(tiny_sweep()))

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(["cluster", *args])
        out, err = capsys.readouterr()
        return code, out, err

    slurm = ("slurm", cfg, "--nodes", "2", "--cpus-per-node", "8", "--time", "2:00:00", "--partition", "gpu")
    code, out, err = cli(*slurm, "--no-exclusive", "--mem", "64G", "--port", "21000")
    assert code == 0, err
    assert "#SBATCH --mem=64G" in out and "#SBATCH --exclusive" not in out and "PORT_BASE=21000" in out
    code, out, _ = cli(*slurm)
    assert code == 0 and "#SBATCH --exclusive" in out and "#SBATCH --mem=0" in out
    code, _, err = cli(*slurm, "--no-exclusive")
    assert code == 2 and "needs a memory request" in err and "Traceback" not in err
    kuberay = ("kuberay", cfg, "--image", "img:1", "--workers", "1", "--cpus-per-worker", "2", "--memory", "4Gi",
               "--storage", "/results")  # fmt: skip
    code, out, err = cli(*kuberay, "--name", "2026_sweep", "--ttl-seconds", "120")
    assert code == 0, err
    job = next(yaml.safe_load_all(out))
    assert job["metadata"]["name"] == "specbench-2026-sweep" and job["spec"]["ttlSecondsAfterFinished"] == 120
    code, _, err = cli(*kuberay, "--ttl-seconds", "-5")
    assert code == 2 and "ttl_seconds must be at least 0" in err
