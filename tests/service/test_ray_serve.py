"""`simengine serve --ray`: the service on Ray Serve over a 2-node cluster simulated on this machine, the index in
shard deployments, every server on 127.0.0.1, answering what the single-node index answers."""

import os
import socket
from concurrent.futures import ThreadPoolExecutor

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read when Ray is imported: every Ray server on loopback

import httpx  # noqa: E402
import pytest  # noqa: E402
import ray  # noqa: E402
from ray_checks import assert_loopback_only  # noqa: E402

from simengine.errors import SimengineError  # noqa: E402
from simengine.index.update import add_images, remove_items  # noqa: E402
from simengine.query.engine import Engine  # noqa: E402
from simengine.ray_cluster import LOOPBACK  # noqa: E402
from simengine.service.ray_serve import APP_NAME, IndexShard, sharded_application  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@pytest.fixture
def two_segments(index_copy, val, model):
    add_images(index_copy, val["coffee"][:2] + val["rocket"][:2], model=model)
    remove_items(index_copy, [3, 20, 34])  # removals must be honoured by every shard (34 is in the second)
    with IndexShard(index_copy, 0, 1) as whole:
        assert len(whole.manifest["segments"]) == 2
    return index_copy


def test_shards_split_the_segments_and_refuse_what_does_not_exist(two_segments):
    with IndexShard(two_segments, 0, 2) as first, IndexShard(two_segments, 1, 2) as second:
        found = first.search_segments(first.vectors([0]), 40)[1][0]
        assert set(found[found >= 0].tolist()) == set(range(32)) - {3, 20}  # its segment, without the removed
        found = second.search_segments(second.vectors([33]), 40)[1][0]
        assert set(found[found >= 0].tolist()) == {32, 33, 35}
        assert first._order != second._order and len(first._order) == len(second._order) == 1
        positions, _ = first.held_vectors([0, 33])
        assert positions.tolist() == [0]  # id 33 is in the other shard's segment
    with pytest.raises(SimengineError, match="does not exist"):
        IndexShard(two_segments, 2, 2)
    with pytest.raises(SimengineError, match="choose 1 to 2 shards"):
        sharded_application(two_segments, 3)


def test_a_sharded_service_on_two_nodes_answers_as_the_single_node_index(two_segments, val):
    from ray import serve
    from ray.cluster_utils import Cluster

    local = Engine.open(two_segments)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": LOOPBACK,
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)
    port = free_port()
    try:
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        serve.start(http_options={"host": LOOPBACK, "port": port})
        serve.run(sharded_application(two_segments, 2), name=APP_NAME, route_prefix="/")
        assert_loopback_only()
        url = f"http://{LOOPBACK}:{port}"
        for photo in [paths[0] for paths in val.values()] + [val["coffee"][1]]:
            with open(photo, "rb") as fh:
                response = httpx.post(f"{url}/v1/search?k=10", files={"image": (photo.name, fh.read())}, timeout=60)
            assert response.status_code == 200, response.text
            served = response.json()
            expected = local.neighbours(str(photo), 10).to_dict()
            assert [n["id"] for n in served["neighbours"]] == [n["id"] for n in expected["neighbours"]]
            assert [n["verified"] for n in served["neighbours"]] == [n["verified"] for n in expected["neighbours"]]
            assert served["neighbours"][0]["distance"] == pytest.approx(expected["neighbours"][0]["distance"], abs=1e-5)
            assert not {3, 20, 34} & {n["id"] for n in served["neighbours"]}
        photos = [p for paths in val.values() for p in paths]
        with ThreadPoolExecutor(len(photos)) as pool:  # concurrent uploads reach the encoder together
            codes = list(pool.map(lambda p: httpx.post(f"{url}/v1/search?k=3", files={"image": (p.name, p.read_bytes())},
                                                       timeout=60).status_code, photos))
        assert codes == [200] * len(photos)
        sizes = serve.get_deployment_handle("encoder", app_name=APP_NAME).batch_sizes.remote().result()
        assert sum(sizes) == len(photos) + 5 and max(sizes) > 1  # every upload, some batched with others
        by_id = httpx.post(f"{url}/v1/search?k=3&include_self=1", data={"id": "33"}, timeout=60).json()  # shard 1
        assert by_id["neighbours"][0]["id"] == 33
        assert httpx.get(f"{url}/v1/info", timeout=60).json()["items"] == len(local.index)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        local.index.close()
