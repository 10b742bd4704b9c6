import numpy as np

from simengine.evaluation.decisions import fit_fusion, sigmoid


def suppressed_signals(n: int = 4000, seed: int = 0):
    """Two correlated similarity signals where the better one absorbs the other: an unconstrained logistic
    regression puts a negative weight on the weaker (as it did on cosine in every index probed)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    logit = 6 * (labels - 0.5) + rng.normal(0, 1.5, n)
    cosine = 0.1 * logit - 0.05 * labels + rng.normal(0, 0.02, n)  # given the logit, positives a little less alike
    return cosine, logit, labels


def unconstrained_cosine_weight(cosine, logit, labels) -> float:
    x = np.column_stack([np.ones_like(cosine), cosine, logit])
    w = np.zeros(3)
    for _ in range(50):
        p = sigmoid(x @ w)
        w -= np.linalg.solve((x * (p * (1 - p))[:, None]).T @ x + 1e-3 * np.eye(3), x.T @ (p - labels) + 1e-3 * w)
    return float(w[1])


def test_fused_rule_is_monotonic_in_both_signals():
    cosine, logit, labels = suppressed_signals()
    assert unconstrained_cosine_weight(cosine, logit, labels) < 0  # the trap is real in this data
    fusion = fit_fusion(cosine, logit, labels)
    assert fusion.w_cosine >= 0 and fusion.w_logit > 0
    grid_c, grid_l = np.meshgrid(np.linspace(-1, 1, 41), np.linspace(-10, 10, 41))
    scores = fusion(grid_c, grid_l)
    assert (np.diff(scores, axis=0) >= 0).all() and (np.diff(scores, axis=1) >= 0).all()
    accuracy = ((fusion(cosine, logit) >= 0.5) == labels).mean()
    assert accuracy > 0.95  # still a good rule


def test_fused_rule_keeps_both_weights_when_both_help():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 3000)
    cosine = 0.5 * labels + rng.normal(0, 0.3, 3000)
    logit = 3 * (labels - 0.5) + rng.normal(0, 2.0, 3000)
    fusion = fit_fusion(cosine, logit, labels)
    assert fusion.w_cosine > 0 and fusion.w_logit > 0
