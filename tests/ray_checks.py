"""Checks shared by the tests that run real Ray: every server on loopback, and waiting for a cluster's state."""

import time

import psutil

from simengine.ray_cluster import LOOPBACK, cluster_addresses, is_loopback_only

LOOPBACK_FORMS = {LOOPBACK, "::ffff:127.0.0.1"}


def listening_addresses() -> set[str]:
    """The addresses every process this test started (Ray's servers and workers) listens on."""
    found = set()
    for process in psutil.Process().children(recursive=True):
        try:
            found |= {c.laddr.ip for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            continue
    return found


def assert_loopback_only():
    addresses = cluster_addresses()
    assert is_loopback_only(addresses), addresses
    listening = listening_addresses()
    assert listening and listening <= LOOPBACK_FORMS, listening


def wait_until(condition, what: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
