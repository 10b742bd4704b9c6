"""Joining a Ray cluster, or starting a local one bound to 127.0.0.1 only, for the commands that run on Ray."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from simengine.errors import SimengineError

LOOPBACK = "127.0.0.1"
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def connected(address: str | None = None) -> Iterator[dict[str, Any]]:
    """Inside: joined to the Ray cluster at `address` ("auto": the one this machine belongs to), or to a new local
    Ray when `address` is None, bound to 127.0.0.1 only (checked: a local Ray that is not on loopback is refused).
    A Ray started here is shut down on leaving; one the caller had started is left running. Yields the addresses
    Ray uses."""
    if address is None:
        # Ray's single-machine mode (meant for laptops) keeps 127.0.0.1 as the node address: on Linux, Ray replaces
        # a loopback node address with the machine's network address and binds its servers there. Read when Ray
        # is imported, so set before.
        os.environ.setdefault(LOCAL_ONLY_ENV, "0")
    try:
        import ray
    except ImportError as exc:
        raise SimengineError(f"--ray needs Ray ({exc}); pip install 'simengine-images[ray]'") from exc
    started = not ray.is_initialized()
    if started:
        if address is None:
            ray.init(address="local", _node_ip_address=LOOPBACK, include_dashboard=False, configure_logging=False,
                     log_to_driver=False)
        else:
            ray.init(address=address, configure_logging=False, log_to_driver=False)
    try:
        addresses = cluster_addresses()
        if address is None and started and not is_loopback_only(addresses):
            raise SimengineError(f"the local Ray did not stay on {LOOPBACK} ({addresses}); set {LOCAL_ONLY_ENV}=0 "
                                 "before Ray is imported, or give --ray ADDRESS")
        yield addresses
    finally:
        if started:
            ray.shutdown()


def is_loopback_only(addresses: dict[str, Any]) -> bool:
    hosts = [addresses["gcs"].rsplit(":", 1)[0], *addresses["nodes"]]
    return all(host == LOOPBACK for host in hosts)


def cluster_addresses() -> dict[str, Any]:
    """The GCS address and every live node's address, as Ray reports them."""
    import ray

    return {"gcs": ray.get_runtime_context().gcs_address,
            "nodes": sorted({node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]})}


def serve_replica_on_loopback() -> None:
    """Ray Serve 2.60 binds each replica's inter-deployment gRPC server to every interface ("[::]:0", with no option
    to change it). Called in a replica's constructor, which runs before that server starts: on a node whose
    address is 127.0.0.1 (a local Ray), the server binds to 127.0.0.1 instead; elsewhere nothing changes."""
    import ray
    from ray.serve._private import replica

    if ray.util.get_node_ip_address() != LOOPBACK or getattr(replica.add_port_to_grpc_server, "loopback", False):
        return
    every_interface = replica.add_port_to_grpc_server

    def on_loopback(server, address: str):
        return every_interface(server, address.replace("[::]", LOOPBACK, 1))

    on_loopback.loopback = True
    replica.add_port_to_grpc_server = on_loopback
