"""A KubeRay ``RayJob`` manifest that runs a sweep on a Ray cluster in Kubernetes.

The output (``templates/rayjob.yaml.txt``) holds two YAML documents: the ``RayJob`` (KubeRay
creates a Ray cluster of one head and ``workers`` worker pods, runs
``specbench sweep /config/sweep.yaml --address auto --storage STORAGE --name NAME`` on the head,
and deletes the cluster as soon as the sweep ends) and a ``ConfigMap`` holding the sweep file's
text verbatim, mounted at ``/config``. Results go to a ReadWriteMany PersistentVolumeClaim mounted
on every Ray pod (it also holds DeepSpeed's op cache); results go under it or to an object store.

Targets KubeRay v1.5.1 to v1.7.0 (``ray.io/v1`` RayJob; ``authOptions`` needs v1.5.1) and Ray 2.60.
``tests/data/rayjob_schema.json`` is a hand-written JSON Schema of the part of that API the
manifest uses, with the checks the operator adds (DNS-1035 names, the TTL rule).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path, PurePosixPath

from bench.results import remote

#: Ray version the manifest declares (``rayClusterSpec.rayVersion``); the image must match it.
RAY_VERSION = "2.60.0"
CONFIG_MOUNT = "/config"
CONFIG_FILE = "sweep.yaml"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SWEEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_QUANTITY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_CPU = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
#: KubeRay derives RayCluster, Service and Pod names from the RayJob's name and refuses names
#: over 47 characters (53 for a RayCluster, less its "-xxxxx" suffix); 40 leaves room to spare.
K8S_NAME_MAX = 40
#: Put before a sweep name that does not start with a letter, as a DNS-1035 label must.
K8S_NAME_PREFIX = "specbench-"


def k8s_name(sweep_name: str) -> str:
    """A DNS-1035 label derived from a sweep name, for the RayJob and the objects named after it.

    Lower case, runs of other characters than letters, digits and ``-`` become ``-``, a name
    that does not start with a letter gets :data:`K8S_NAME_PREFIX` (``2026_sweep`` →
    ``specbench-2026-sweep``: KubeRay rejects a RayJob name starting with a digit only after the
    API server has accepted it), and the result is cut to :data:`K8S_NAME_MAX` characters.
    """
    text = re.sub(r"[^a-z0-9-]+", "-", sweep_name.lower()).strip("-")
    if not text:
        raise ValueError(f"name {sweep_name!r} has no letters or digits to build a Kubernetes name from")
    if not text[0].isalpha():
        text = K8S_NAME_PREFIX + text
    return text[:K8S_NAME_MAX].rstrip("-")


def _cpu(name: str, value: object) -> str:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a CPU amount such as 4, 0.5 or 500m, not {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, not {value}")
        text = f"{value:g}"
    else:
        text = str(value).strip()
    if not _CPU.match(text) or float(text.rstrip("m") or 0) <= 0:
        raise ValueError(f"{name} must be a CPU amount such as 4, 0.5 or 500m, not {value!r}")
    return text


def _memory(name: str, value: object) -> str:
    text = str(value).strip()
    if not _QUANTITY.match(text) or float(re.match(r"[\d.]+", text).group()) <= 0:  # type: ignore[union-attr]
        raise ValueError(f"{name} must be a Kubernetes quantity such as 16Gi or 512Mi, not {value!r}")
    return text


def _count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value


def _quoted(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value, ensure_ascii=False)


def block_scalar(text: str, indent: int) -> str:
    """``text`` as a YAML scalar that loads back to exactly ``text``, for a mapping value whose
    key sits at ``indent`` spaces.

    A literal block (``|``) keeps the file readable; its indentation indicator is explicit so a
    first line starting with spaces is kept, and its chomping indicator matches the text's
    trailing newlines (``-`` none, clip one, ``+`` more). Text a literal block cannot carry
    (carriage returns, control characters, a byte-order mark) falls back to a double-quoted
    scalar with escapes.
    """
    printable = all(
        c in "\t\n" or (c >= " " and c != "\x7f" and not 0x80 <= ord(c) < 0xA0 and c not in "\ufffe\uffff")
        for c in text
    )
    if not printable or "\ufeff" in text or "\u2028" in text or "\u2029" in text:
        return json.dumps(text)
    if text.endswith("\n\n") or text == "\n":
        chomp = "+"
    elif text.endswith("\n"):
        chomp = ""
    else:
        chomp = "-"
    pad = " " * (indent + 2)
    body = text[:-1] if text.endswith("\n") else text
    lines = [pad + line if line else "" for line in body.split("\n")]
    return f"|2{chomp}\n" + "\n".join(lines)


def render_rayjob(
    config_path: str | Path,
    *,
    image: str,
    workers: int,
    gpus_per_worker: int,
    cpus_per_worker: int | float | str,
    memory: str,
    storage: str,
    name: str,
    namespace: str = "default",
    volume_claim: str = "specbench-results",
    mount_path: str = "/results",
    head_cpus: int | float | str = 2,
    head_memory: str = "8Gi",
    backoff_limit: int = 2,
    ttl_seconds: int = 0,
) -> str:
    """A RayJob + ConfigMap manifest (two YAML documents) running ``specbench sweep`` on KubeRay.

    Args:
        config_path: the sweep YAML; its text is embedded verbatim in the ConfigMap.
        image: container image with specbench installed (and Ray 2.60, matching ``RAY_VERSION``).
        workers: worker pods (fixed: ``replicas = minReplicas = maxReplicas``).
        gpus_per_worker: ``nvidia.com/gpu`` per worker pod (0 for CPU pods).
        cpus_per_worker: CPU per worker pod (``4``, ``0.5``, ``"500m"``).
        memory: memory per worker pod (``"32Gi"``).
        storage: results root: an absolute path under ``mount_path`` inside the pods, or an
            object-store URI (``s3://…``, ``gs://…``; credentials from the pods' environment).
        name: the sweep name (``--name``); the Kubernetes names derive from it (:func:`k8s_name`).
        namespace: Kubernetes namespace of the RayJob and ConfigMap.
        volume_claim: the ReadWriteMany PersistentVolumeClaim mounted on every Ray pod.
        mount_path: where the claim is mounted.
        head_cpus, head_memory: the head pod's resources (it runs the driver only).
        backoff_limit: retries of the whole job, each on a fresh cluster (each resumes the sweep).
        ttl_seconds: how long the Ray cluster, with all its pods and GPUs, outlives the finished
            sweep (``ttlSecondsAfterFinished``; KubeRay then deletes it). 0, the default, deletes it
            at once; the RayJob and its submitter Job, which holds the driver's log, stay either way.

    Raises:
        ValueError: an argument is malformed (the message names it).
    """
    config = Path(config_path)
    if not config.is_file():
        raise ValueError(f"config {config} does not exist (give the sweep YAML file)")
    try:  # bytes, then decode: read_text would turn CRLF line ends into LF
        config_text = config.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"config {config} is not UTF-8 text ({exc})") from None
    image = str(image).strip()
    if not image or any(c.isspace() for c in image):
        raise ValueError(f"image {image!r} must be a container image reference without spaces")
    workers = _count("workers", workers, 1)
    gpus_per_worker = _count("gpus_per_worker", gpus_per_worker, 0)
    backoff_limit = _count("backoff_limit", backoff_limit, 0)
    ttl_seconds = _count("ttl_seconds", ttl_seconds, 0)
    if ttl_seconds > 2**31 - 1:
        raise ValueError(f"ttl_seconds must be at most {2**31 - 1}, not {ttl_seconds}")
    cpus = _cpu("cpus_per_worker", cpus_per_worker)
    mem = _memory("memory", memory)
    head_cpu = _cpu("head_cpus", head_cpus)
    head_mem = _memory("head_memory", head_memory)
    if not _SWEEP_NAME.match(str(name)):
        raise ValueError(
            f"name {name!r} must start with a letter or digit and use only letters, digits, '_', '.', '-'"
        )
    for label, value in (("namespace", namespace), ("volume_claim", volume_claim)):
        if not _DNS_LABEL.match(str(value)) or len(str(value)) > 63:
            raise ValueError(f"{label} {value!r} must be a Kubernetes name (lower-case letters, digits, '-')")
    storage = str(storage).strip()
    uri = re.match(r"^([a-z][a-z0-9+.-]*)://", storage)
    if uri and uri.group(1) not in remote.SCHEMES:
        raise ValueError(
            f"storage {storage!r}: unsupported scheme '{uri.group(1)}'; give a path on the shared volume "
            f"(e.g. {mount_path}/specbench) or an object-store URI ({', '.join(s + '://' for s in remote.SCHEMES)})"
        )
    if uri and (any(c.isspace() for c in storage)):
        raise ValueError(f"storage {storage!r} must not contain whitespace")
    mount = PurePosixPath(mount_path)
    if not mount.is_absolute() or any(c.isspace() for c in mount_path):
        raise ValueError(f"mount_path {mount_path!r} must be an absolute path without spaces")
    config_mount = PurePosixPath(CONFIG_MOUNT)
    if mount == config_mount or config_mount in mount.parents or mount in config_mount.parents:
        raise ValueError(f"mount_path {mount_path!r} collides with the config mount {CONFIG_MOUNT}")
    if not uri:  # a path: it must be on the shared volume (an object store is reached from every pod)
        store = PurePosixPath(storage)
        if not store.is_absolute() or "\n" in storage:
            raise ValueError(
                f"storage {storage!r} must be an absolute path inside the pods, under {mount_path}"
            )
        if store != mount and mount not in store.parents:
            raise ValueError(f"storage {storage!r} must be under the volume's mount path {mount_path}")

    job = k8s_name(str(name))
    entrypoint = " ".join(
        [
            "specbench sweep",
            shlex.quote(f"{CONFIG_MOUNT}/{CONFIG_FILE}"),
            "--address auto",
            "--storage",
            shlex.quote(storage),
            "--name",
            shlex.quote(str(name)),
        ]
    )
    res_pad = " " * 20
    resources = [f"{res_pad}cpu: {_quoted(cpus)}", f"{res_pad}memory: {_quoted(mem)}"]
    if gpus_per_worker:
        resources.append(f'{res_pad}nvidia.com/gpu: "{gpus_per_worker}"')

    from launchers.cluster import load_template

    return load_template("rayjob.yaml.txt").substitute(
        k8s_name=job,
        k8s_name_comment=job,
        name_comment=f"{job} (from the sweep name {name})" if job != name else job,
        ttl_seconds=ttl_seconds,
        ttl_comment=(
            "Delete the Ray cluster (every pod and GPU) as soon as the sweep ends"
            if ttl_seconds == 0
            else f"Keep the Ray cluster (every pod and GPU) {ttl_seconds} s after the sweep ends, then delete it"
        ),
        namespace=namespace,
        namespace_comment=namespace,
        entrypoint=_quoted(entrypoint),
        backoff_limit=backoff_limit,
        ray_version=_quoted(RAY_VERSION),
        image=_quoted(image),
        head_cpus=_quoted(head_cpu),
        head_memory=_quoted(head_mem),
        mount_path=_quoted(str(mount)),
        mount_comment=str(mount),
        storage_comment=storage,
        claim=volume_claim,
        claim_comment=volume_claim,
        configmap=f"{job}-config",
        workers=workers,
        worker_resources="\n".join(resources),
        extensions_dir=_quoted(str(mount / ".torch_extensions")),
        config_block=block_scalar(config_text, indent=2),
    )
