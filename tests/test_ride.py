"""Tests for ride.py: parameter counts (spec §6.1 table, worked out layer by layer), the ImageNet-LT
ResNeXt-50 against torchvision's resnext50_32x4d, LDAM / DRW / RIDE losses against values computed by hand,
and the CustomLR schedule."""
import math

import numpy as np
import pytest
import torch

import ride


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def hand_count(C, experts, w2, w3):
    """3x3 convs without bias + BN (2 per channel) + NormedLinear (no bias), summed by hand."""
    conv = lambda i, o: 9 * i * o + 2 * o
    stage = lambda i, o: conv(i, o) + conv(o, o) + 4 * (2 * conv(o, o))
    shared = conv(3, 16) + stage(16, 16)
    return shared + experts * (stage(16, w2) + stage(w2, w3) + w3 * C)


@pytest.mark.parametrize("experts,reduce,millions", [(2, True, 0.53), (3, True, 0.78), (4, True, 1.04),
                                                      (2, False, 0.92), (3, False, 1.36), (4, False, 1.81)])
def test_ride_parameter_counts(experts, reduce, millions):
    n = n_params(ride.ride_resnet32(100, experts, reduce))
    assert n == hand_count(100, experts, *((24, 48) if reduce else (32, 64)))
    assert round(n / 1e6, 2) == millions  # spec §6.1 table
    assert hand_count(10, 1, 32, 64) + 10 == 464_154  # same arithmetic gives LDAM-DRW's ResNet-32 (+ bias)


def test_ride_forward_is_mean_of_experts():
    torch.manual_seed(0)
    m = ride.ride_resnet32(10, experts=3)
    mean, z = m(torch.randn(2, 3, 16, 16))
    assert mean.shape == (2, 10) and z.shape == (3, 2, 10)
    torch.testing.assert_close(mean, z.mean(0))
    assert z.abs().max() <= 30 + 1e-4  # s * cosine


# ---- RIDE ResNeXt-50 (ImageNet-LT, spec §4.5): torchvision resnext50_32x4d is the independent oracle ----
def torchvision_resnext50(C):
    import torchvision
    return torchvision.models.resnext50_32x4d(weights=None, num_classes=C)


@pytest.mark.parametrize("C", [1000, 10])
def test_ride_resnext50_one_full_expert_is_torchvision_minus_fc_bias(C):
    assert n_params(ride.ride_resnext50(C, experts=1, reduce=False)) == n_params(torchvision_resnext50(C)) - C


def tv_to_ride(sd):
    """torchvision state_dict -> ride_resnext50(experts=1, reduce=False) keys; fc [C, d] -> NormedLinear [d, C]."""
    out = {k.replace("layer3.", "layer3s.0.").replace("layer4.", "layer4s.0."): v
           for k, v in sd.items() if not k.startswith("fc.")}
    out["linears.0.weight"] = sd["fc.weight"].t()
    return out


def test_ride_resnext50_matches_torchvision_with_copied_weights():
    torch.manual_seed(0)
    tv = torchvision_resnext50(10)
    for m in tv.modules():  # non-trivial BN statistics, so a mis-mapped buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2), m.bias.data.normal_(0, 0.1)
    ours = ride.ride_resnext50(10, experts=1, reduce=False)
    ours.load_state_dict(tv_to_ride(tv.state_dict()), strict=True)  # every key and shape lines up
    tv.eval(), ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        trunk = torch.nn.Sequential(*list(tv.children())[:-1])  # up to and including avgpool
        f_tv = trunk(x).flatten(1)
        f = ours.features(ours.shared(x), 0)
        mean, z = ours(x)
    assert f.shape == (2, 2048)
    assert (f - f_tv).abs().max() <= 1e-4 * f_tv.abs().max()
    cos = torch.nn.functional.cosine_similarity(f_tv[:, None, :], tv.fc.weight[None], dim=2)
    torch.testing.assert_close(z[0], 30 * cos, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mean, z[0])


def test_ride_resnext50_shapes_and_shared_parts():
    torch.manual_seed(0)
    m = ride.ride_resnext50(7, experts=4, reduce=True)
    m.eval()
    with torch.no_grad():
        mean, z = m(torch.randn(2, 3, 32, 32))
    assert mean.shape == (2, 7) and z.shape == (4, 2, 7)
    torch.testing.assert_close(mean, z.mean(0))
    assert z.abs().max() <= 30 + 1e-4  # s * cosine
    assert isinstance(m.conv1, torch.nn.Conv2d) and isinstance(m.layer1, torch.nn.Sequential)
    assert isinstance(m.layer2, torch.nn.Sequential)
    assert len(m.layer3s) == len(m.layer4s) == len(m.linears) == 4
    assert m.layer4s[0][0].conv3.out_channels == 4 * 384 and m.linears[0].weight.shape == (4 * 384, 7)
    assert n_params(m) < n_params(ride.ride_resnext50(7, experts=4, reduce=False))


def test_ride_resnext50_sgd_step_moves_every_expert():
    torch.manual_seed(0)
    m = ride.ride_resnext50(5, experts=2)
    counts = [20, 10, 5, 3, 2]
    L = ride.RIDELoss(counts, diversity=-0.2, reweight_factor=0.02, drw_epoch=80)  # ImageNet-LT settings
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    experts = [[m.layer3s[e], m.layer4s[e], m.linears[e]] for e in range(2)]
    before = [[p.detach().clone() for mod in ex for p in mod.parameters()] for ex in experts]
    loss = L(m(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 4]))
    assert torch.isfinite(loss)
    opt.zero_grad(), loss.backward(), opt.step()
    for ex, old in zip(experts, before):
        new = [p for mod in ex for p in mod.parameters()]
        assert all(not torch.equal(a, b) for a, b in zip(old, new))  # every tensor of every expert moved


COUNTS = [100, 10, 1]
Z = torch.tensor([[0.1, 0.2, 0.3], [0.5, -0.2, 0.0]])
Y = torch.tensor([2, 0])
M = [0.5 * 100 ** -0.25, 0.5 * 10 ** -0.25, 0.5]  # m_j = 0.5 n_j^{-1/4} / max_k n_k^{-1/4}


def lse(*v):
    return math.log(sum(math.exp(x) for x in v))


def test_ldam_hand_values():
    # row 0, y=2: 30 * [0.1, 0.2, 0.3 - 0.5] = [3, 6, -6];  row 1, y=0: 30 * [0.5 - m_0, -0.2, 0]
    r0 = -(-6.0) + lse(3.0, 6.0, -6.0)
    t1 = 30 * (0.5 - M[0])
    r1 = -t1 + lse(t1, -6.0, 0.0)
    loss = ride.LDAMLoss(COUNTS)(Z, Y)
    assert loss.item() == pytest.approx((r0 + r1) / 2, rel=1e-5)
    w = torch.tensor([2.0, 1.0, 0.5])  # weighted CE: sum w_y l / sum w_y
    assert ride.LDAMLoss(COUNTS, weight=w)(Z, Y).item() == pytest.approx((0.5 * r0 + 2.0 * r1) / 2.5, rel=1e-5)


def drw_by_hand(counts, beta=0.9999):
    w = [(1 - beta) / (1 - beta ** n) for n in counts]
    return [x * len(w) / sum(w) for x in w]


def test_drw_weights_and_switch():
    # (1-β)/(1-β^n): n=1 -> 1, n=10 -> ~0.100045, n=100 -> ~0.010050, then scaled to sum 3
    hand = drw_by_hand(COUNTS)
    assert sum(hand) == pytest.approx(3) and hand[2] / hand[1] == pytest.approx(1 / 0.100045, rel=1e-4)
    np.testing.assert_allclose(ride.drw_weights(COUNTS).numpy(), hand, rtol=1e-6)
    loss = ride.LDAMLoss(COUNTS, drw_epoch=160)
    loss.set_epoch(159)
    before = loss(Z, Y).item()
    loss.set_epoch(160)
    after = loss(Z, Y).item()
    assert before == pytest.approx(ride.LDAMLoss(COUNTS)(Z, Y).item())
    assert after == pytest.approx(ride.LDAMLoss(COUNTS, weight=torch.tensor(hand))(Z, Y).item(), rel=1e-6)


def ce(z, y, w=None):
    """Cross entropy by hand (numpy), weighted mean as in F.cross_entropy."""
    z = np.asarray(z, np.float64)
    l = np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]
    w = np.ones(z.shape[1]) if w is None else np.asarray(w)
    return (w[y] * l).sum() / w[y].sum()


def kl_batchmean(p_ref, z, T):
    """KL(p_ref || softmax(z/T)) summed over classes, averaged over the batch."""
    q = np.exp(z / T) / np.exp(z / T).sum(1, keepdims=True)
    return (p_ref * (np.log(p_ref) - np.log(q))).sum(1).mean()


def softmax(z, T=1.0):
    e = np.exp(z / T)
    return e / e.sum(1, keepdims=True)


def expert_logits():
    g = torch.Generator().manual_seed(0)
    z = 30 * (2 * torch.rand(2, 2, 3, generator=g) - 1)  # E=2 experts, B=2, C=3, scaled cosines
    return z.mean(0), z


def test_ride_loss_before_drw_ce_and_ldam_readings():
    mean, z = expert_logits()
    zn, mn, y = z.numpy().astype(np.float64), mean.numpy().astype(np.float64), Y.numpy()
    div = sum(kl_batchmean(softmax(mn), zn[e], 1.0) for e in range(2))
    ce_part = sum(ce(zn[e], y) for e in range(2))
    margin = np.zeros_like(zn[0])
    margin[np.arange(2), y] = 30 * np.array(M)[y]  # RIDE: expert logits carry s, so the margin is s m_y
    ldam_part = sum(ce(zn[e] - margin, y) for e in range(2))
    for stage1, base in (("ce", ce_part), ("ldam", ldam_part)):
        L = ride.RIDELoss(COUNTS, stage1=stage1)
        L.set_epoch(0)
        assert L((mean, z), Y).item() == pytest.approx(base - 0.45 * div, rel=1e-5)


def test_ride_loss_after_drw_uses_weights_and_class_temperature():
    mean, z = expert_logits()
    zn, mn, y = z.numpy().astype(np.float64), mean.numpy().astype(np.float64), Y.numpy()
    pi = np.array(COUNTS) / sum(COUNTS)
    T = (3 * pi * 0.05 + 0.95) / (3 * pi * 0.05 + 0.95).max()  # RIDE's class-wise temperature
    margin = np.zeros_like(zn[0])
    margin[np.arange(2), y] = 30 * np.array(M)[y]
    w = drw_by_hand(COUNTS)
    hand = sum(ce(zn[e] - margin, y, w) - 0.45 * T.mean() ** 2 * kl_batchmean(softmax(mn, T), zn[e], T)
               for e in range(2))
    L = ride.RIDELoss(COUNTS)
    L.set_epoch(160)
    assert L((mean, z), Y).item() == pytest.approx(hand, rel=1e-5)


def test_ride_loss_zero_diversity():
    mean, z = expert_logits()
    zn, mn, y = z.numpy().astype(np.float64), mean.numpy().astype(np.float64), Y.numpy()
    # spec §6.1 / RIDE issue #7: with λ = 0 the code applies the base loss to the *mean* logits, once per expert
    L = ride.RIDELoss(COUNTS, diversity=0.0)
    L.set_epoch(0)
    assert L((mean, z), Y).item() == pytest.approx(2 * ce(mn, y), rel=1e-5)
    # without the quirk it is the plain sum of the per-expert terms
    L = ride.RIDELoss(COUNTS, diversity=0.0, collaborative_if_zero=False)
    L.set_epoch(0)
    assert L((mean, z), Y).item() == pytest.approx(ce(zn[0], y) + ce(zn[1], y), rel=1e-5)


def test_ride_loss_backward():
    torch.manual_seed(0)
    m = ride.ride_resnet32(3, experts=2)
    L = ride.RIDELoss(COUNTS)
    L.set_epoch(170)
    L(m(torch.randn(2, 3, 16, 16)), Y).backward()
    assert all(p.grad is not None for p in m.linears.parameters())


def test_lr_lambda():
    f = ride.lr_lambda
    assert [f(e) for e in (0, 4, 5, 159, 160, 179, 180, 199)] == pytest.approx(
        [0.2, 1.0, 1.0, 1.0, 0.01, 0.01, 1e-4, 1e-4])
    assert [f(e, steps=(350, 450)) for e in (349, 350, 450)] == pytest.approx([1.0, 0.01, 1e-4])
