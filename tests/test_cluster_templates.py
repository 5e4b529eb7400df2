"""launchers.cluster: the SLURM batch script and the KubeRay RayJob manifest.

The sbatch script is checked three ways: ``bash -n``; the order of its commands; and a run
under stand-ins for ``srun``, ``scontrol``, ``hostname``, ``ray`` and ``specbench`` (a fake
3-node allocation on this machine), which exercises its control flow: waiting for the nodes,
the sweep's exit status, and stopping Ray on every path. The awk that counts nodes in
``ray status`` output is checked against real output in tests/test_multinode.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from launchers.cluster import render_rayjob, render_sbatch
from launchers.cluster.kuberay import RAY_VERSION, block_scalar, k8s_name
from launchers.cluster.slurm import ALIVE_NODES_AWK, parse_time

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def _sbatch(**overrides) -> str:
    args = dict(
        nodes=3, gpus_per_node=4, cpus_per_node=32, time="1-00:00:00", partition="gpu",
        storage="/shared/results dir", name="quickstart", venv=".venv", port=6380,
    )  # fmt: skip
    args.update(overrides)
    return render_sbatch(args.pop("config_path", QUICKSTART), **args)


# ------------------------------------------------------------------------------------ SLURM
def test_sbatch_passes_bash_syntax_check(tmp_path):
    script = tmp_path / "job.sh"
    script.write_text(_sbatch(account="proj-1", extra_sbatch=["--exclusive", "#SBATCH --qos=high"]))
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sbatch_directives():
    text = _sbatch(account="proj-1", extra_sbatch=["--exclusive", "#SBATCH --qos=high"])
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert directives == [
        "#SBATCH --job-name=quickstart",
        "#SBATCH --nodes=3",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=32",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --time=1-00:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --output=quickstart-%j.out",
        "#SBATCH --account=proj-1",
        "#SBATCH --exclusive",
        "#SBATCH --qos=high",
    ]
    # sbatch stops reading directives at the first command: all of them must come first.
    first_command = next(i for i, line in enumerate(text.splitlines()) if line and not line.startswith("#"))
    last_directive = max(i for i, line in enumerate(text.splitlines()) if line.startswith("#SBATCH"))
    assert last_directive < first_command
    cpu_only = _sbatch(gpus_per_node=0)
    assert "--gpus-per-node" not in cpu_only and "--gres=gpu" not in cpu_only and "--account" not in cpu_only


def test_sbatch_commands_in_order():
    text = _sbatch()
    steps = [
        "source .venv/bin/activate",
        "export RAY_AUTH_MODE=token",
        "ray start --head --node-ip-address=\"$HEAD_IP\" --port=\"$PORT\"",
        "--dashboard-host=127.0.0.1",
        "ray start --address=\"$ADDRESS\"",
        "until [ \"$(ray_nodes_alive)\" -ge \"$NUM_NODES\" ]",
        "specbench sweep \"$CONFIG\" --address \"$ADDRESS\" --storage \"$STORAGE\" --name \"$NAME\"",
        "exit \"$status\"",
    ]  # fmt: skip
    positions = [text.index(s) for s in steps]
    assert positions == sorted(positions)
    assert "--block &" in text and '--num-cpus="$CPUS_PER_NODE" --num-gpus="$GPUS_PER_NODE"' in text
    assert "PORT=6380" in text and "CONFIG=" + str(QUICKSTART) in text
    assert "STORAGE='/shared/results dir'" in text  # shell-quoted
    assert "trap stop_ray EXIT" in text
    assert "resumes the sweep" in text  # the resume note for the person who re-submits it
    assert "\nray stop" not in text and " ray stop " not in text  # would kill other jobs' Ray


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nodes": 0}, "nodes must be at least 1"),
        ({"nodes": 2.5}, "nodes must be an integer"),
        ({"nodes": True}, "nodes must be an integer"),
        ({"gpus_per_node": -1}, "gpus_per_node must be at least 0"),
        ({"cpus_per_node": 0}, "cpus_per_node must be at least 1"),
        ({"time": "four hours"}, "not a SLURM time limit"),
        ({"time": "1:75:00"}, "minutes must be below 60"),
        ({"time": "2-25"}, "hours must be below 24"),
        ({"time": "0"}, "zero"),
        ({"partition": "gpu; rm -rf /"}, "partition"),
        ({"partition": ""}, "partition"),
        ({"account": "a b"}, "account"),
        ({"name": "-bad"}, "name"),
        ({"name": "two words"}, "name"),
        ({"port": 80}, "port must be at least 1024"),
        ({"port": 70000}, "port must be at most 65535"),
        ({"storage": ""}, "storage must not be empty"),
        ({"storage": "a\nb"}, "storage must be a single line"),
        ({"extra_sbatch": ["qos=high"]}, "must be an sbatch flag"),
        ({"extra_sbatch": "--exclusive"}, "list of flags"),
        ({"extra_sbatch": ["--x\n#SBATCH --y"]}, "single line"),
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


# A fake SLURM allocation: the stand-ins log what they are asked to do, `ray start --block`
# sleeps until terminated (as the real one does), `ray status` prints real-format output with one
# node per `ray start` seen so far.
FAKE_TOOLS = {
    "scontrol": """
        #!/bin/bash
        [ "$1 $2" = "show hostnames" ] || exit 9
        printf '%s\\n' $FAKE_NODES
    """,
    "srun": """
        #!/bin/bash
        node=""
        while [ $# -gt 0 ]; do
          case "$1" in
            -w) node="$2"; shift 2 ;;
            -*) shift ;;
            *) break ;;
          esac
        done
        echo "srun[$node] $*" >> "$FAKE_LOG"
        FAKE_NODE="$node" exec "$@"
    """,
    "hostname": """
        #!/bin/bash
        echo "fe80::1 10.1.2.3 10.9.9.9"
    """,
    "ray": """
        #!/bin/bash
        if [ "$1" = "start" ]; then
          if [ -n "${FAKE_HEAD_FAILS:-}" ] && [ "$2" = "--head" ]; then echo "head failed" >> "$FAKE_LOG"; exit 1; fi
          child=""
          trap '[ -n "$child" ] && kill $child; echo "stopped $FAKE_NODE" >> "$FAKE_LOG"; exit 0' TERM
          echo "ray $* auth=$RAY_AUTH_MODE token=${#RAY_AUTH_TOKEN}" >> "$FAKE_LOG"
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


def _fake_allocation(tmp_path: Path) -> tuple[Path, dict[str, str]]:
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
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM_"))
    }  # the test may itself run under SLURM or with Ray settings
    env.update(
        FAKE_LOG=str(log), FAKE_NODES="n1 n2 n3", SLURM_JOB_NODELIST="n[1-3]", SLURM_JOB_ID="4242",
        SLURM_SUBMIT_DIR=str(tmp_path), SPECBENCH_POLL_S="0.2",
    )  # fmt: skip
    return venv, env


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("awk") is None, reason="needs bash and awk")
@pytest.mark.parametrize("sweep_rc", [0, 1])
def test_sbatch_runs_on_a_fake_allocation(tmp_path, sweep_rc):
    venv, env = _fake_allocation(tmp_path)
    script = tmp_path / "job.sh"
    script.write_text(_sbatch(venv=str(venv), node_timeout_s=60))
    env["FAKE_SWEEP_RC"] = str(sweep_rc)
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)  # fmt: skip
    assert result.returncode == sweep_rc, result.stdout + result.stderr
    log = (tmp_path / "log").read_text().splitlines()
    starts = [line for line in log if line.startswith("ray start")]
    head = starts[0]
    assert "--head" in head and "--node-ip-address=10.1.2.3" in head and "--port=6380" in head
    assert "--dashboard-host=127.0.0.1" in head and "--temp-dir=/tmp/ray-4242" in head and "--block" in head
    assert "--num-cpus=32" in head and "--num-gpus=4" in head
    workers = starts[1:]
    assert len(workers) == 2 and all("--address=10.1.2.3:6380" in w for w in workers)
    srun = [line for line in log if line.startswith("srun[")]
    nodes = [s.split("]")[0][len("srun[") :] for s in srun]
    assert nodes[:2] == ["n1", "n1"] and sorted(nodes[2:]) == [
        "n2",
        "n3",
    ]  # ip + head, then workers (any order)
    assert all("--gres=gpu:4" not in s for s in srun)  # options are consumed by srun, not passed on
    sweep = [i for i, line in enumerate(log) if line.startswith("specbench")]
    assert len(sweep) == 1
    assert log[sweep[0]].startswith(
        f"specbench sweep {QUICKSTART} --address 10.1.2.3:6380 --storage /shared/results dir --name quickstart"
    )
    # Every Ray process (and the sweep) got token auth; the token is a 64-hex-digit secret.
    assert all("auth=token token=64" in line for line in [*starts, log[sweep[0]]])
    # The sweep ran only after all 3 nodes had started, and Ray was stopped after it on all nodes.
    assert max(log.index(s) for s in starts) < sweep[0]
    stopped = [line for line in log if line.startswith("stopped")]
    assert sorted(stopped) == ["stopped n1", "stopped n2", "stopped n3"]
    assert min(log.index(s) for s in stopped) > sweep[0]
    assert "Ray cluster ready: 3 node(s) at 10.1.2.3:6380" in result.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sbatch_stops_when_the_head_fails(tmp_path):
    venv, env = _fake_allocation(tmp_path)
    env["FAKE_HEAD_FAILS"] = "1"
    script = tmp_path / "job.sh"
    script.write_text(_sbatch(venv=str(venv), node_timeout_s=30))
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)  # fmt: skip
    assert result.returncode == 3
    assert "the Ray head exited during start-up" in result.stderr
    log = (tmp_path / "log").read_text()
    assert "head failed" in log
    lines = log.splitlines()
    assert not any(line.startswith(("ray start", "specbench")) for line in lines)  # no workers, no sweep
    assert not any("--address=" in line for line in lines if line.startswith("srun["))
    assert "stopped" not in log  # the failed head had nothing left to stop


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
    assert spec["shutdownAfterJobFinishes"] is True
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
    ],
)
def test_rayjob_refuses_bad_arguments(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _rayjob(**overrides)


def test_templates_are_package_data():
    from importlib import resources

    names = {p.name for p in resources.files("launchers.cluster.templates").iterdir()}
    assert {"slurm.sbatch.txt", "rayjob.yaml.txt"} <= names
