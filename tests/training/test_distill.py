import numpy as np
import pytest
import torch

from simengine.model.heads import embed_numpy
from simengine.training.distill import similarity_distillation, teacher_features
from simengine.training.fit import TrainOptions, split_holdout, train_embedding_head


def test_teacher_is_centred_and_unit_length():
    x = np.abs(np.random.default_rng(0).normal(size=(20, 6))).astype(np.float32) + 3  # one orthant, like ReLU features
    t = teacher_features(x, x.mean(0)).numpy()
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-6)
    raw = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert (raw @ raw.T).min() > 0.9 and (t @ t.T).min() < 0  # centring spreads the crowded cosines


def test_loss_is_zero_for_the_teacher_itself_and_grows_with_distortion():
    t = torch.nn.functional.normalize(torch.randn(16, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert similarity_distillation(t, t).item() == pytest.approx(0, abs=1e-12)
    rotated = t @ torch.linalg.qr(torch.randn(8, 8))[0]  # a rotation keeps every cosine
    assert similarity_distillation(rotated, t).item() == pytest.approx(0, abs=1e-10)
    noisy = torch.nn.functional.normalize(t + 0.3 * torch.randn(16, 8), dim=-1)
    noisier = torch.nn.functional.normalize(t + 1.0 * torch.randn(16, 8), dim=-1)
    assert 0 < similarity_distillation(noisy, t).item() < similarity_distillation(noisier, t).item()


def test_rows_must_match():
    with pytest.raises(ValueError, match="teacher rows"):
        similarity_distillation(torch.zeros(3, 4), torch.zeros(4, 4))


def test_distilled_head_keeps_the_backbone_similarities_better():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 32)) * 0.6
    x = np.concatenate([c + rng.normal(size=(20, 32)) for c in centres]).astype(np.float32)
    y = np.repeat([f"c{i}" for i in range(4)], 20)
    fit, hold = split_holdout(y, 0.2, 0)
    teacher = teacher_features(x[fit], x[fit].mean(0)).numpy()

    def distortion(distill: float) -> float:
        opts = TrainOptions(dim=16, steps=150, eval_every=50, patience=10, classes_per_batch=4, per_class=5,
                            distill=distill, posteriors=False)
        head, _ = train_embedding_head(x[fit], y[fit], x[hold], y[hold], opts)
        e = embed_numpy(head, x[fit])
        return float(np.mean((e @ e.T - teacher @ teacher.T) ** 2))

    assert distortion(100.0) < 0.5 * distortion(0.0)
