"""Security: the embedded Ray a sweep or profile starts listens on loopback only.

Checked on the real sockets: while an embedded Ray (``launchers.ray_runner.start_ray``) runs a
task, every TCP socket in LISTEN state owned by a process of this Ray session (the driver, GCS,
raylet, dashboard processes and agents, workers) is bound to 127.0.0.1 or ::1 — nothing another
machine could reach. Joining a cluster (``--address``) restores Ray's normal cluster mode.
"""

from __future__ import annotations

import ipaddress
import os

import pytest

psutil = pytest.importorskip("psutil")


def _ray_session_pids() -> set[int]:
    """This process and every descendant (Ray's daemons and workers are started by the driver)."""
    me = psutil.Process(os.getpid())
    return {me.pid} | {c.pid for c in me.children(recursive=True)}


def _listening(pids: set[int]) -> list[tuple[int, str, int]]:
    out = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids and conn.laddr:
            out.append((conn.pid, conn.laddr.ip, conn.laddr.port))
    return out


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def test_embedded_ray_listens_on_loopback_only():
    ray = pytest.importorskip("ray")
    from launchers.ray_runner import LOCAL_ONLY_ENV, start_ray

    start_ray(None)
    try:
        assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker process exists and answered
        listening = _listening(_ray_session_pids())
        owners = {psutil.Process(pid).name() for pid, _, _ in listening}
        assert any("gcs" in name for name in owners) and any("raylet" in name for name in owners), owners
        exposed = [(psutil.Process(pid).name(), ip, port) for pid, ip, port in listening if not _is_loopback(ip)]
        assert not exposed, f"listening beyond loopback: {exposed}"
        assert os.environ.get(LOCAL_ONLY_ENV) == "0"
    finally:
        ray.shutdown()


def test_joining_a_cluster_restores_cluster_mode():
    pytest.importorskip("ray")
    import ray._private.ray_constants as constants

    from launchers.ray_runner import LOCAL_ONLY_ENV, _set_single_machine_mode

    _set_single_machine_mode(True)
    assert constants.ENABLE_RAY_CLUSTER is False and os.environ[LOCAL_ONLY_ENV] == "0"
    _set_single_machine_mode(False)
    assert constants.ENABLE_RAY_CLUSTER is True and LOCAL_ONLY_ENV not in os.environ
