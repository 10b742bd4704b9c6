"""`simengine index build --from-embeddings --ray`: parallel fills on a 2-node cluster simulated on this machine,
every server on 127.0.0.1, giving the index the local build gives."""

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read when Ray is imported: every Ray server on loopback

import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray_checks import assert_loopback_only  # noqa: E402
from shard_fixtures import PER_SHARD, all_vectors, clustered  # noqa: E402

from simengine.index.from_embeddings import build_from_embeddings  # noqa: E402
from simengine.index.reader import Index  # noqa: E402
from simengine.ray_cluster import LOOPBACK  # noqa: E402


def test_both_nodes_fill_parts_and_the_index_equals_the_local_one(model, bundle_dir, tmp_path):
    from ray.cluster_utils import Cluster

    embeddings = clustered(model, tmp_path)
    budget = 4 * PER_SHARD * (model.dim + 100)  # IVF-SQ8
    local = build_from_embeddings(embeddings, tmp_path / "local", bundle_dir, max_index_memory=budget)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": LOOPBACK,
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)
    try:
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        assert_loopback_only()
        on_ray = build_from_embeddings(embeddings, tmp_path / "ray", bundle_dir, max_index_memory=budget,
                                       use_ray=True, ray_address=cluster.address, workers=2)
        assert_loopback_only()
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert on_ray.backend == "ray" and len(on_ray.nodes) == 2 and sum(on_ray.nodes.values()) == 2
    assert (on_ray.index_type, on_ray.segments, on_ray.nprobe) == (local.index_type, 1, local.nprobe) == ("ivf_sq8", 1, local.nprobe)
    queries = all_vectors(embeddings)[::37]
    with Index(tmp_path / "local") as a, Index(tmp_path / "ray") as b:
        sims_a, ids_a = a.search(queries, 10)
        sims_b, ids_b = b.search(queries, 10)
    np.testing.assert_array_equal(ids_a, ids_b)  # parts merged list by list hold what one fill holds, in order
    np.testing.assert_array_equal(sims_a, sims_b)
