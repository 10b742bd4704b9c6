"""`simengine embed --ray` on real Ray: a local Ray and a 2-node cluster simulated on this machine, every server on
127.0.0.1 (checked on the sockets Ray's processes listen on), the same vectors as the local path, shards spread
over both nodes, and a node lost mid-job (the job finishes, or a rerun finishes it)."""

import os
import threading

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read when Ray is imported: every Ray server on loopback

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import ray  # noqa: E402
from ray_checks import assert_loopback_only, wait_until  # noqa: E402

from simengine.shards.embed import embed_collection  # noqa: E402
from simengine.shards.layout import is_finished, iter_shards  # noqa: E402
from simengine.ray_cluster import LOOPBACK, cluster_addresses, connected  # noqa: E402

def vectors_by_path(out):
    return {row["image_path"]: vectors[i] for _, vectors, rows in iter_shards(out) for i, row in enumerate(rows)}


def assert_same_vectors(a, b):
    va, vb = vectors_by_path(a), vectors_by_path(b)
    assert va.keys() == vb.keys() and len(va) == 32
    np.testing.assert_allclose(np.stack([va[p] for p in va]), np.stack([vb[p] for p in va]), atol=1e-5)


@pytest.fixture(scope="module")
def local_shards(images, bundle_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "emb"
    embed_collection(images, out, bundle_dir, shard_size=4)
    return out


def test_a_local_ray_embeds_what_the_local_path_does_on_loopback_only(images, bundle_dir, local_shards, tmp_path):
    with connected(None):  # the local Ray that `--ray` alone starts, kept up here to look at its sockets
        report = embed_collection(images, tmp_path / "emb", bundle_dir, shard_size=4, use_ray=True, workers=2)
        assert_loopback_only()
    assert not ray.is_initialized()
    assert report.backend == "ray" and report.embedded_shards == list(range(9)) and report.vectors == 32
    assert [f["path"].endswith("broken.jpg") for f in report.failed] == [True] and len(report.nodes) == 1
    assert_same_vectors(local_shards, tmp_path / "emb")


def test_a_two_node_cluster_spreads_the_shards_and_survives_a_lost_node(images, bundle_dir, local_shards, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": LOOPBACK,
                                                            "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)
    try:
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        assert len(cluster_addresses()["nodes"]) == 1 and len([n for n in ray.nodes() if n["Alive"]]) == 2
        assert_loopback_only()
        report = embed_collection(images, tmp_path / "both", bundle_dir, shard_size=4, use_ray=True,
                                  ray_address=cluster.address, workers=2)
        assert len(report.nodes) == 2 and sum(report.nodes.values()) == 9  # both nodes embedded shards
        assert_same_vectors(local_shards, tmp_path / "both")

        out, outcome = tmp_path / "lost", {}

        def job():  # one image per shard: 33 shards, so that the node goes while most are still to do
            try:
                outcome["report"] = embed_collection(images, out, bundle_dir, shard_size=1, use_ray=True,
                                                     ray_address=cluster.address, workers=2)
            except Exception as exc:  # the job may fail with its node: the rerun below must finish it
                outcome["error"] = exc

        thread = threading.Thread(target=job, daemon=True)
        thread.start()
        wait_until(lambda: any(is_finished(out, k) for k in range(33)), "a first shard")
        assert_loopback_only()  # with the actors up and working
        cluster.remove_node(worker)
        finished_at_loss = sum(is_finished(out, k) for k in range(33))
        assert finished_at_loss < 33
        wait_until(lambda: len([n for n in ray.nodes() if n["Alive"]]) == 1, "the node marked dead")
        thread.join(timeout=300)
        assert not thread.is_alive(), "the job hung after losing a node"
        rerun = embed_collection(images, out, bundle_dir, shard_size=1, use_ray=True, ray_address=cluster.address,
                                 workers=1)
        assert all(is_finished(out, k) for k in range(33))
        assert set(rerun.skipped_shards) | set(rerun.embedded_shards) == set(range(33))
        assert_same_vectors(local_shards, out)
    finally:
        ray.shutdown()
        cluster.shutdown()
