"""A sweep joining an existing multi-node Ray cluster (``specbench sweep --address``).

Two Ray nodes on this machine, each started by ``ray start`` as a separate process tree with one
CPU: the head (``--head``) and a worker node (``--address=head``), the same commands the SLURM
script runs on separate machines. The trial asks for 2 workers × 0.6 CPU, which no single 1-CPU
node can hold, so its process group must span both nodes; the test proves it from Ray's actor
table (the node of each worker process whose pid the ranks recorded).

Isolation from other Ray instances on this machine (other engineers' tests):
- ``ray stop`` is never used: it kills every Ray process of the user on the machine (it matches
  process names). The test stops exactly the processes it started: SIGTERM to each
  ``ray start --block`` process group (``--block`` drains the node and stops its processes),
  SIGKILL to the group if that hangs, then any leftover process whose command line names this
  test's private ``--temp-dir``.
- Every port is chosen free (GCS, node manager, object manager, dashboard agent, runtime-env
  agent, metrics, client server) instead of Ray's fixed defaults, which a concurrent Ray holds.
- Token authentication (Ray 2.60's default) with a private token in ``RAY_AUTH_TOKEN`` and
  ``RAY_AUTH_MODE=token`` for the nodes and the driver. The mode must be set explicitly: a
  driver joining an explicit address never turns token auth on by itself, and fails after
  ~20 s with "Failed to connect to Ray cluster" (``ray status`` says ``InvalidAuthToken``);
  ``~/.ray/auth_token`` is neither read nor written.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from launchers.cluster.slurm import ALIVE_NODES_AWK

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and process groups"),
]

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
NODE_TIMEOUT_S = 180
#: Seconds a node gets to stop after SIGTERM before it is killed.
STOP_GRACE_S = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayCluster:
    """Ray nodes started with ``ray start --block`` on this machine, owned by this object."""

    def __init__(self, root: Path, cpus_per_node: int = 1):
        self.root = root
        self.cpus = cpus_per_node
        # Short: Ray's Unix socket paths under the temp dir must stay below 107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="sbmn-", dir="/tmp"))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM_"))}
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=secrets.token_hex(32),
            RAY_USAGE_STATS_ENABLED="0",
            # Workers inherit the raylet's environment: share the DeepSpeed op cache of the suite.
            TORCH_EXTENSIONS_DIR=os.environ.get(
                "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "specbench" / "torch_extensions")
            ),
        )
        self.env = env

    def _node_args(self) -> list[str]:
        ports = [
            "--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
        ]  # fmt: skip
        args = [f"{p}={_free_port()}" for p in ports]
        return [
            *args,
            f"--num-cpus={self.cpus}",
            "--num-gpus=0",
            f"--object-store-memory={100 * 2**20}",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
            "--block",
        ]

    def _start(self, args: list[str], log_name: str) -> None:
        with open(self.root / log_name, "w") as log:  # the child keeps its own descriptor
            self.procs.append(
                subprocess.Popen(
                    [str(RAY), "start", *args, *self._node_args()],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stopped as one, nothing else
                )
            )

    def start_head(self) -> None:
        self._start(
            [
                "--head",
                f"--port={self.port}",
                "--include-dashboard=false",
                f"--ray-client-server-port={_free_port()}",
            ],
            "head.log",
        )

    def add_node(self) -> None:
        self._start([f"--address={self.address}"], f"node{len(self.procs)}.log")

    def status_nodes(self) -> int:
        """Alive nodes as the SLURM script counts them: ``ray status`` through ALIVE_NODES_AWK."""
        try:
            out = subprocess.run([str(RAY), "status", f"--address={self.address}"], env=self.env,
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
        except subprocess.TimeoutExpired:
            return 0
        counted = subprocess.run(["awk", ALIVE_NODES_AWK], input=out.stdout, capture_output=True, text=True)
        return int(counted.stdout.strip() or 0)

    def wait_for_nodes(self, n: int) -> None:
        deadline = time.monotonic() + NODE_TIMEOUT_S
        t0 = time.monotonic()
        while self.status_nodes() < n:
            dead = [p.args for p in self.procs if p.poll() is not None]
            assert not dead, f"a Ray node exited during start-up: {dead}\n{self.logs()}"
            assert time.monotonic() < deadline, f"{n} Ray nodes did not come up\n{self.logs()}"
            time.sleep(1)
        print(f"[timing] {n} node(s) up after {time.monotonic() - t0:.1f}s", flush=True)

    def driver(self, code: str, timeout: float = 120) -> str:
        """Run ``code`` in a fresh Python connected to the cluster (keeps pytest Ray-free)."""
        prelude = (
            f"import ray\nray.init(address={self.address!r}, log_to_driver=False, logging_level='ERROR')\n"
        )
        out = subprocess.run([sys.executable, "-c", prelude + code], env=self.env, capture_output=True, text=True,
                             timeout=timeout, cwd=REPO)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.root.glob("*.log")))

    def _own_pids(self) -> list[int]:
        """Processes whose command line names this cluster's private temp dir."""
        mine = []
        marker = str(self.temp_dir).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if marker in (entry / "cmdline").read_bytes():
                    mine.append(int(entry.name))
            except OSError:
                continue
        return mine

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        # A graceful stop of the two `ray start --block` nodes took ~34 s here; nothing is measured
        # after the test, so they get STOP_GRACE_S together (one deadline, not one per node), then
        # SIGKILL.
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=30)
        # Anything that left its process group (workers, agents) but still names our temp dir.
        for pid in self._own_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def cluster(tmp_path):
    c = LocalRayCluster(tmp_path)
    try:
        c.start_head()
        c.wait_for_nodes(1)
        c.add_node()
        c.wait_for_nodes(2)
        yield c
    finally:
        c.stop()
        shutil.rmtree(c.temp_dir, ignore_errors=True)
    # Reached only when nothing failed above (a failure there is the one worth reporting).
    assert not c._own_pids(), "Ray processes of this test survived stop()"


def test_sweep_spans_two_ray_nodes(cluster, tmp_path):
    nodes = json.loads(
        cluster.driver("import json; print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))")
    )
    assert len(nodes) == 2

    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "multinode",
                "seed": 0,
                "seeds": 1,
                "workloads": [{"model": "builtin:cnn", "dataset": "sklearn:digits"}],
                "optimizers": [{"name": "adamw", "settings": {"lr": 0.003}}],
                "training": {
                    "steps": 6,
                    "micro_batch_size": 16,
                    "eval_every": 3,
                    "log_every": 1,
                    "warmup_steps_excluded": 1,
                },
                # 2 × 0.6 CPU > 1 CPU per node: the two workers cannot share a node.
                "resources": {"num_workers": 2, "cpus_per_worker": 0.6},
            }  # fmt: skip
        )
    )
    storage = tmp_path / "results"
    t0 = time.monotonic()
    sweep = subprocess.run(
        [sys.executable, "-m", "launchers.cli", "sweep", str(config), "--address", cluster.address,
         "--storage", str(storage)],
        env=cluster.env, capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    print(f"[timing] sweep {time.monotonic() - t0:.1f}s", flush=True)
    assert sweep.returncode == 0, f"{sweep.stdout[-3000:]}\n{sweep.stderr[-5000:]}\n{cluster.logs()}"

    (trial_dir,) = list((storage / "multinode" / "trials").iterdir())
    runs = pq.read_table(trial_dir / "runs.parquet").to_pylist()
    assert len(runs) == 1 and runs[0]["status"] == "completed", runs
    assert runs[0]["world_size"] == 2 and runs[0]["steps_completed"] == 6
    pids = {rank: int((trial_dir / "workers" / f"rank{rank}.pid").read_text()) for rank in (0, 1)}

    # The node of each rank, from the GCS actor table (dead actors stay listed with pid and node).
    actors = json.loads(
        cluster.driver(
            "import json\nfrom ray._private import state\n"
            "print(json.dumps([[a['Pid'], a['Address']['NodeID'], a['ActorClassName']]"
            " for a in state.actors().values()]))"
        )
    )
    node_of = {pid: node for pid, node, _ in actors}
    assert set(pids.values()) <= set(node_of), f"rank pids {pids} not among Ray actors {actors}"
    rank_nodes = {rank: node_of[pid] for rank, pid in pids.items()}
    assert rank_nodes[0] != rank_nodes[1], f"both ranks ran on node {rank_nodes[0]}"
    assert set(rank_nodes.values()) == set(nodes)

    # While that cluster runs, an embedded sweep on the same machine is refused before anything
    # starts: two Ray instances leave Ray Train unable to release finished trials' resources.
    embedded = subprocess.run(
        [sys.executable, "-m", "launchers.cli", "sweep", str(config), "--storage", str(tmp_path / "embedded")],
        env=cluster.env, capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert embedded.returncode == 2, embedded.stderr[-3000:]
    assert "another Ray instance is running on this machine" in embedded.stderr
    assert "Traceback" not in embedded.stderr and not (tmp_path / "embedded").exists()
