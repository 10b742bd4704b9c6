import pytest
import torch

from simengine.training import miners


@pytest.fixture
def batch():
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(5)
    emb = torch.nn.functional.normalize(torch.randn(20, 8) + labels[:, None].float(), dim=1)
    return emb, labels


def _valid(a, p, n, labels):
    assert len(a) == len(p) == len(n)
    assert bool((labels[a] == labels[p]).all()) and bool((a != p).all())
    assert bool((labels[a] != labels[n]).all())


def test_batch_hard_returns_hardest_valid_triplets(batch):
    emb, labels = batch
    a, p, n = miners.batch_hard(emb, labels)
    _valid(a, p, n, labels)
    assert len(a) == 20
    dist = torch.cdist(emb, emb)
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist()):
        same = (labels == labels[i]) & (torch.arange(20) != i)
        assert dist[i, j] == dist[i][same].max()
        assert dist[i, k] == dist[i][labels != labels[i]].min()


def test_semihard_negatives_lie_in_the_margin_window(batch):
    emb, labels = batch
    margin = 0.5
    a, p, n = miners.semihard(emb, labels, margin)
    _valid(a, p, n, labels)
    assert len(a) > 0
    dist = torch.cdist(emb, emb)
    d_ap, d_an = dist[a, p], dist[a, n]
    assert bool((d_an > d_ap).all()) and bool((d_an < d_ap + margin).all())


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError):
        miners.batch_hard(torch.zeros(4, 3), torch.zeros(5))


def test_singleton_class_gives_no_anchor():
    emb = torch.eye(3)
    a, p, n = miners.batch_hard(emb, torch.tensor([0, 1, 1]))
    assert a.tolist() == [1, 2]
