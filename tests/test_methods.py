import pytest
import torch

from steerlab.methods import cohens_d, extract_layer


def _planted(n=1500, d=32, sep=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u /= u.norm()
    offset = 5 * torch.randn(d, generator=g)  # a shared mean far from the origin
    pos = torch.randn(n, d, generator=g) + offset + sep * u
    neg = torch.randn(n, d, generator=g) + offset - sep * u
    return u, pos, neg


@pytest.mark.parametrize("method", ["mean_diff", "probe"])
def test_recovers_planted_direction(method):
    u, pos, neg = _planted()
    v, stats = extract_layer(method, pos, neg)
    assert float(v @ u) > 0.99
    assert abs(float(v.norm()) - 1) < 1e-5
    assert stats.val_acc > 0.9 and stats.train_acc > 0.9 and stats.cohens_d > 2


@pytest.mark.parametrize("method", ["mean_diff", "probe"])
def test_sign_makes_positives_project_higher(method):
    u, pos, neg = _planted(n=200)
    v, _ = extract_layer(method, neg, pos)  # swapped: the vector must flip too
    assert float(v @ u) < -0.9
    assert float((neg @ v).mean()) > float((pos @ v).mean())


def test_cohens_d_known_value():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 4.0, 5.0])
    assert cohens_d(a, b) == pytest.approx(-2.0)
