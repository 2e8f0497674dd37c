"""ltssl.py against independent oracles: losses worked by hand in NumPy, Monte-Carlo frequencies for ABC's
Bernoulli masks, closed-form KL for ACR's adaptive tau1. CPU, tiny tensors."""
import copy
import math

import numpy as np
import pytest
import torch

import ltssl

THR = 0.95


def log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(z):
    return np.exp(log_softmax(z))


def ce(z, y):
    """Per-sample CE, hard labels."""
    return -log_softmax(z)[np.arange(len(y)), y]


def sym_kl(a, b):
    kl = lambda p, q: float((p * np.log(p / q)).sum())
    return 0.5 * kl(a, b) + 0.5 * kl(b, a)


def T(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def fw_(alg, counts=(6, 3, 1), total_steps=1000, spe=10, **opts):
    return ltssl.make_framework(alg, num_classes=len(counts), labeled_counts=list(counts), total_steps=total_steps,
                                steps_per_epoch=spe, **opts)


GEN = torch.Generator().manual_seed(0)
ZL = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]        # labeled logits (one head)
YL = [0, 2]
ZW = [[4.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 5.0]]   # weak: max p = .9647 (>= .95), .576, .9867
ZS = [[0.5, 1.0, -1.0], [2.0, 0.0, 0.0], [0.0, 1.5, 1.0]]   # strong view


# ----------------------------------------------------------------------------- supervised, FixMatch, LA

def test_heads_and_views():
    assert (fw_("supervised").num_heads, fw_("supervised").strong_views) == (1, 0)
    for alg in ("fixmatch", "la"):
        f = fw_(alg)
        assert (f.num_heads, f.strong_views, f.eval_head) == (1, 1, 0)
    f = fw_("abc")
    assert (f.num_heads, f.strong_views, f.eval_heads["abc"], f.eval_head) == (2, 2, 1, 1)
    assert fw_("abc", abc_views=1).strong_views == 1
    f = fw_("acr")
    assert (f.num_heads, f.strong_views, f.eval_heads["balanced"], f.eval_head) == (2, 2, 1, 1)
    x = torch.randn(2, 4, 3)
    assert torch.equal(fw_("la").test_logits(x[:1]), x[:1])   # LA: raw logits at test


def test_supervised_loss():
    loss, logs, _ = fw_("supervised").loss(T([ZL]), T(YL, torch.long), None, None, None, 0, GEN)
    assert loss.item() == pytest.approx(ce(ZL, YL).mean(), rel=1e-6)


def test_fixmatch_loss():
    loss, logs, pl = fw_("fixmatch").loss(T([ZL]), T(YL, torch.long), T([ZW]), T([[ZS]]),
                                          torch.ones(3, dtype=torch.bool), 0, GEN)
    lx = ce(ZL, YL).mean()
    mask = np.array([1.0, 0.0, 1.0])          # e^4/(e^4+2) = .9647, e/(e+2) = .576, e^5/(e^5+2) = .9867
    lu = (mask * ce(ZS, [0, 0, 2])).mean()    # mean over the whole batch, masked terms count as 0
    assert logs["Lx"].item() == pytest.approx(lx, rel=1e-6)
    assert logs["Lu"].item() == pytest.approx(lu, rel=1e-6)
    assert loss.item() == pytest.approx(lx + lu, rel=1e-6)
    assert logs["mask"].item() == pytest.approx(2 / 3)
    assert pl["q"].tolist() == [0, 0, 2] and pl["mask"].tolist() == [1, 0, 1]
    assert np.allclose(pl["probs"].numpy(), softmax(ZW), atol=1e-6)


def test_la_offset_and_loss():
    counts = [6, 3, 1]
    f = fw_("la", counts)
    pi = np.array(counts) / 10
    assert np.allclose(f.la_offset.numpy(), 1.0 * np.log(pi), atol=1e-6)   # tau = 1
    assert np.allclose(fw_("la", counts, la_tau=0.5).la_offset.numpy(), 0.5 * np.log(pi), atol=1e-6)
    args = (T([ZL]), T(YL, torch.long), T([ZW]), T([[ZS]]), torch.ones(3, dtype=torch.bool), 0, GEN)
    _, logs, _ = f.loss(*args)
    assert logs["Lx"].item() == pytest.approx(ce(np.array(ZL) + np.log(pi), YL).mean(), rel=1e-6)
    _, logs_fm, _ = fw_("fixmatch", counts).loss(*args)
    assert logs["Lu"].item() == pytest.approx(logs_fm["Lu"].item(), rel=1e-7)   # unlabeled loss untouched
    sup = fw_("supervised", counts, la_tau=1.0).loss(T([ZL]), T(YL, torch.long), None, None, None, 0, GEN)[0]
    assert sup.item() == pytest.approx(logs["Lx"].item(), rel=1e-7)           # "Supervised w/ LA"


# ----------------------------------------------------------------------------- ABC

ABC_COUNTS = (40, 10, 4)


def test_abc_probabilities():
    f = fw_("abc", ABC_COUNTS, total_steps=1000, spe=10)     # 100 epochs
    p_l = np.array([4 / 40, 4 / 10, 1.0])
    assert np.allclose(f.p_l.numpy(), p_l)
    assert np.allclose(f.p_u(0).numpy(), 1.0)
    assert np.allclose(f.p_u(9).numpy(), 1.0)                               # still epoch 0
    assert np.allclose(f.p_u(500).numpy(), 1 - 0.5 * (1 - p_l))            # epoch 50 of 100
    assert np.allclose(f.p_u(999).numpy(), 1 - 0.99 * (1 - p_l))           # last epoch: 99/100 (ABC: epoch/500)
    assert np.allclose(f.p_u(5000).numpy(), p_l)                           # clamped after the schedule


def _abc_mc(f, y_l, q_u, step, n=20000):
    """Labeled head-1 logits 0 (CE = log 3 each), unlabeled ABC head confident on q_u, strong head-1 logits 0:
    L_cls / log 3 and L_con / (2 log 3) are the kept fractions."""
    C = 3
    ll = torch.zeros(2, n, C)
    lw = torch.zeros(2, n, C)
    lw[1, :, q_u] = 10.0
    ls = torch.zeros(2, 2, n, C)
    g = torch.Generator().manual_seed(1)
    _, logs, _ = f.loss(ll, torch.full((n,), y_l), lw, ls, torch.ones(n, dtype=torch.bool), step, g)
    return logs["L_cls"].item() / math.log(C), logs["L_con"].item() / (2 * math.log(C))


@pytest.mark.parametrize("y,step,p_lab,p_unl", [(0, 0, 0.1, 1.0), (1, 500, 0.4, 0.7), (0, 999, 0.1, 1 - 0.99 * 0.9)])
def test_abc_bernoulli_frequency(y, step, p_lab, p_unl):
    f = fw_("abc", ABC_COUNTS, total_steps=1000, spe=10)
    freq_l, freq_u = _abc_mc(f, y, y, step)
    sd = 4 * math.sqrt(0.25 / 20000)   # 4 sigma
    assert freq_l == pytest.approx(p_lab, abs=sd)
    assert freq_u == pytest.approx(p_unl, abs=sd)


def test_abc_losses_by_hand():
    """Step 0 (unlabeled p = 1) and labeled class 2 = N_min (p = 1): no randomness left."""
    f = fw_("abc", ABC_COUNTS)
    zl = [ZL, [[0.3, 0.1, 1.0], [1.0, 1.0, 0.0]]]           # heads 0, 1
    yl = [2, 2]
    zw = [ZW, [[0.0, 6.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]]]   # ABC head conf: .9950, .576, .9100
    zs = [[ZS, [[0.0, 1.0, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]],
          [[[1.0, 0.0, 0.0]] * 3, [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 1.0]]]]
    _, logs, pl = f.loss(T(zl), T(yl, torch.long), T(zw), T(zs), torch.ones(3, dtype=torch.bool), 0, GEN)
    m_b = np.array([1.0, 0.0, 1.0])                  # backbone head 0, q = [0, 0, 2]
    lu = np.mean([(m_b * ce(zs[v][0], [0, 0, 2])).mean() for v in range(2)])
    q = softmax(zw[1])
    conf = np.array([1.0, 0.0, 0.0])
    soft = lambda z: -(q * log_softmax(z)).sum(1)
    lcon = sum((conf * soft(zs[v][1])).mean() for v in range(2))   # summed over the two views
    assert logs["Lx"].item() == pytest.approx(ce(zl[0], yl).mean(), rel=1e-6)
    assert logs["Lu"].item() == pytest.approx(lu, rel=1e-6)
    assert logs["L_cls"].item() == pytest.approx(ce(zl[1], yl).mean(), rel=1e-6)
    assert logs["L_con"].item() == pytest.approx(lcon, rel=1e-6)
    hard = fw_("abc", ABC_COUNTS, abc_hard=True)
    _, logs_h, _ = hard.loss(T(zl), T(yl, torch.long), T(zw), T(zs), torch.ones(3, dtype=torch.bool), 0, GEN)
    lcon_h = sum((conf * ce(zs[v][1], [1, 0, 2])).mean() for v in range(2))
    assert logs_h["L_con"].item() == pytest.approx(lcon_h, rel=1e-6)


# ----------------------------------------------------------------------------- ACR

ACR_COUNTS = (4, 2, 1)
PI = np.array(ACR_COUNTS) / 7


def np_adj(tau):
    return np.log(PI ** tau + 1e-12)


def test_acr_adj():
    pi = torch.tensor(PI, dtype=torch.float32)
    for tau in (0.0, 1.0, 2.0, 2 / 3):
        assert np.allclose(ltssl.adj(pi, tau).numpy(), np_adj(tau), atol=1e-5)
        assert np.allclose(ltssl.adj(pi, torch.tensor(tau)).numpy(), np_adj(tau), atol=1e-5)


# sample A: only raw p_t is confident; B: only the tau-adjusted p; C: neither. Balanced head: A, B confident.
ACR_Z = [[4.5, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]
ACR_ZB = [[0.0, 5.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]


def test_acr_masks():
    r = ltssl.acr_pseudo_labels(T(ACR_Z), T(ACR_ZB), T(np_adj(2.0)), T(np_adj(2.0)), THR)
    p, p_t, p_b = softmax(np.array(ACR_Z) - np_adj(2.0)), softmax(ACR_Z), softmax(ACR_ZB)
    m, m_t, m_b = (p.max(1) >= THR), (p_t.max(1) >= THR), (p_b.max(1) >= THR)
    assert r["m"].tolist() == m.tolist() == [0, 1, 0]
    assert r["m_t"].tolist() == m_t.tolist() == [1, 0, 0]
    assert r["m_b"].tolist() == m_b.tolist() == [1, 0, 0]
    assert r["m_h2"].tolist() == [0, 1, 0]                  # tau12 = tau1 = 2 here
    assert r["mask_ss_t"].tolist() == [1, 1, 0]
    assert r["mask_b_h2"].tolist() == [1, 1, 0]
    assert r["q"].tolist() == p.argmax(1).tolist() and r["q_b"].tolist() == p_b.argmax(1).tolist()


def test_acr_losses_by_hand():
    f = fw_("acr", ACR_COUNTS)
    zl = [ZL, [[0.3, 0.1, 1.0], [1.0, 1.0, 0.0]]]
    zs = np.random.default_rng(0).normal(size=(2, 2, 3, 3))   # [V, H, B, C]
    _, logs, pl = f.loss(T(zl), T(YL, torch.long), T([ACR_Z, ACR_ZB]), T(zs), torch.ones(3, dtype=torch.bool), 0, GEN)
    q = softmax(np.array(ACR_Z) - np_adj(2.0)).argmax(1)   # tau1 = 2 before est_epoch
    mask = np.array([1.0, 1.0, 0.0])
    lu = np.mean([mask * ce(zs[v, 0], q) for v in range(2)])          # mean over 2B terms
    lu_b = np.mean([mask * ce(zs[v, 1], q) for v in range(2)])        # tau12 = 2: same targets at init
    assert logs["Lx"].item() == pytest.approx(ce(zl[0], YL).mean(), rel=1e-6)
    assert logs["Lx_b"].item() == pytest.approx(ce(np.array(zl[1]) + np_adj(2.0), YL).mean(), rel=1e-6)
    assert logs["Lu"].item() == pytest.approx(lu, rel=1e-5)
    assert logs["Lu_b"].item() == pytest.approx(lu_b, rel=1e-5)
    assert logs["tau1"].item() == 2.0
    assert pl["mask"].tolist() == mask.tolist() and pl["q"].tolist() == q.tolist()


def _acr_step(f, step, labels_b, u_real=None, z_b_scale=10.0):
    """One ACR step whose balanced-head weak logits are confident on labels_b; everything else zero."""
    n, C = len(labels_b), f.C
    lw = torch.zeros(2, n, C)
    lw[1, torch.arange(n), torch.as_tensor(labels_b)] = z_b_scale
    u_real = torch.ones(n, dtype=torch.bool) if u_real is None else torch.as_tensor(u_real)
    return f.loss(torch.zeros(2, 2, C), torch.zeros(2, dtype=torch.long), lw, torch.zeros(2, 2, n, C),
                  u_real, step, GEN)[1]


@pytest.mark.parametrize("mode,expected", [("counts", [3, 1, 2]), ("presence", [1, 1, 1])])
def test_acr_count_modes(mode, expected):
    q = torch.tensor([0, 0, 0, 1, 2, 2])
    assert ltssl.class_histogram(q, torch.ones(6), 3, mode).tolist() == expected
    f = fw_("acr", ACR_COUNTS, ema_u=0.0, est_epoch=0, acr_count=mode)   # ema_u = 0: u_py = this step's estimate
    _acr_step(f, 10, [0, 0, 0, 1, 2, 2])
    assert np.allclose(f.u_py.numpy(), np.array(expected) / sum(expected))


def test_acr_estimate_ignores_labeled_and_unconfident():
    f = fw_("acr", ACR_COUNTS, ema_u=0.0, est_epoch=0)
    _acr_step(f, 10, [0, 0, 0, 1, 2, 2], u_real=[False, False, True, True, True, True])
    assert np.allclose(f.u_py.numpy(), [0.25, 0.25, 0.5])
    f = fw_("acr", ACR_COUNTS, ema_u=0.0, est_epoch=0)
    _acr_step(f, 10, [0, 0, 0, 1, 2, 2], z_b_scale=1.0)        # nothing confident: estimate unchanged
    assert np.allclose(f.u_py.numpy(), 1 / 3) and f.count_KL.abs().sum().item() == 0
    f = fw_("acr", ACR_COUNTS, ema_u=0.5, est_epoch=1)
    _acr_step(f, 19, [0, 0, 0])                                  # epoch 1 = est_epoch: not yet estimating
    assert np.allclose(f.u_py.numpy(), 1 / 3)
    _acr_step(f, 20, [0, 0, 0])
    assert np.allclose(f.u_py.numpy(), [2 / 3, 1 / 6, 1 / 6])   # 0.5 * uniform + 0.5 * [1, 0, 0]


TAU_COUNTS = (50, 10, 2)
TAU_BATCH = {"consistent": [0] * 50 + [1] * 10 + [2] * 2, "uniform": [0, 1, 2] * 20,
             "reversed": [0] * 2 + [1] * 10 + [2] * 50}


def _tau_run(setting, epochs=6, spe=5):
    f = fw_("acr", TAU_COUNTS, spe=spe, ema_u=0.5, est_epoch=1)
    taus = [_acr_step(f, s, TAU_BATCH[setting])["tau1"].item() for s in range(epochs * spe + 1)]
    return f, taus


def test_acr_adaptive_tau():
    pi = np.array(TAU_COUNTS) / 62
    anchors = (pi, np.ones(3) / 3, pi[::-1])
    final = {}
    for setting, d in zip(("consistent", "uniform", "reversed"), anchors):
        f, taus = _tau_run(setting)
        assert taus[:10] == [2.0] * 10                           # epochs 0..est_epoch: tau1 = tau_max
        assert taus[10] == pytest.approx(2 / 3, abs=1e-6)        # ACR quirk: first update sees zero KL sums
        k = np.array([sym_kl(d, a) for a in anchors])            # u_py has converged to d (ema .5, 20+ updates)
        assert taus[-1] == pytest.approx(2 * np.exp(k[0]) / np.exp(k).sum(), abs=2e-3)
        final[setting] = taus[-1]
    assert final["consistent"] < 0.3 < 0.6 < final["uniform"] < 1.0 < 1.4 < final["reversed"] < 2.0


# ----------------------------------------------------------------------------- BEM hook, resume

def _random_inputs(f, seed, n_l=4, n_u=5):
    g = torch.Generator().manual_seed(seed)
    H, V, C = f.num_heads, max(f.strong_views, 1), f.C
    lw = torch.randn(H, n_u, C, generator=g) * 4        # some confident samples
    lw[:, 0, 0] = 20.0                                   # at least one
    return (torch.randn(H, n_l, C, generator=g), torch.randint(0, C, (n_l,), generator=g), lw,
            torch.randn(V, H, n_u, C, generator=g), torch.rand(n_u, generator=g) > 0.3)


@pytest.mark.parametrize("alg", ["fixmatch", "la", "abc", "acr"])
def test_mix_lam_one_equals_plain(alg):
    bem = pytest.importorskip("bem")
    f1 = fw_(alg, est_epoch=0) if alg == "acr" else fw_(alg)   # acr: the estimate runs too
    f2 = copy.deepcopy(f1)
    ll, yl, lw, ls, ur = _random_inputs(f1, 0)
    mix = [bem.Mix(torch.ones(5), torch.randint(0, 3, (5,))) for _ in range(f1.strong_views)]
    a = f1.loss(ll, yl, lw, ls, ur, 10, torch.Generator().manual_seed(3))[0]
    b = f2.loss(ll, yl, lw, ls, ur, 10, torch.Generator().manual_seed(3), mix=mix)[0]
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


@pytest.mark.parametrize("alg", ["abc", "acr"])
def test_state_dict_roundtrip(alg):
    f = fw_(alg, spe=4, est_epoch=1) if alg == "acr" else fw_(alg, spe=4)
    for s in range(13):
        f.loss(*_random_inputs(f, s), s, torch.Generator().manual_seed(s))
    sd = f.state_dict()
    f2 = fw_(alg, spe=4, est_epoch=1) if alg == "acr" else fw_(alg, spe=4)
    f2.load_state_dict(sd)
    out1 = [f.loss(*_random_inputs(f, s), s, torch.Generator().manual_seed(s))[0] for s in range(13, 25)]
    out2 = [f2.loss(*_random_inputs(f, s), s, torch.Generator().manual_seed(s))[0] for s in range(13, 25)]
    assert all(torch.equal(a, b) for a, b in zip(out1, out2))
    if alg == "acr":
        assert not torch.equal(sd["u_py"], f.u_py)           # the saved dict is a copy, not a live view
        assert all(torch.equal(f.state_dict()[k], f2.state_dict()[k]) for k in sd)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host-sync check needs CUDA")
@pytest.mark.parametrize("alg", ["supervised", "fixmatch", "la", "abc", "acr"])
def test_no_host_sync(alg):
    f = fw_(alg, spe=2, est_epoch=0) if alg == "acr" else fw_(alg, spe=2)
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    ins = [t.to(dev) for t in _random_inputs(f, 0)]
    if alg == "supervised":
        ins[2:4] = [None, None]
    f.loss(*ins, 0, g)   # first call moves the buffers (a copy, allowed once)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for s in range(1, 5):
            loss, logs, _ = f.loss(*ins, s, g)
            loss.backward() if loss.requires_grad else None
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("alg", ["supervised", "fixmatch", "la", "abc", "acr"])
def test_no_host_sync_cpu_proxy(alg, monkeypatch):
    """CPU stand-in for the CUDA check: every Python-level way to pull a value to the host raises inside loss()."""
    f = fw_(alg, spe=2, est_epoch=0) if alg == "acr" else fw_(alg, spe=2)
    ins = list(_random_inputs(f, 0))
    if alg == "supervised":
        ins[2:4] = [None, None]

    def boom(*a, **k):
        raise AssertionError("host sync")
    getitem = torch.Tensor.__getitem__

    def no_bool_index(self, idx):
        assert not (isinstance(idx, torch.Tensor) and idx.dtype == torch.bool), "bool-mask indexing"
        return getitem(self, idx)
    for name in ("__bool__", "item", "tolist", "cpu", "numpy", "nonzero", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    monkeypatch.setattr(torch.Tensor, "__getitem__", no_bool_index)
    for s in range(6):   # crosses epoch starts, the tau1 update and the estimate
        loss, logs, _ = f.loss(*ins, s, torch.Generator().manual_seed(s))


def test_make_framework_options():
    # train.py passes every framework's flags to all of them: other frameworks' options are ignored
    f = fw_("fixmatch", acr_count="presence", abc_views=1, abc_hard=True)
    assert f.strong_views == 1
    assert fw_("abc", acr_count="presence", abc_views=1).strong_views == 1
    assert fw_("acr", abc_views=1, acr_count="presence").acr_count == "presence"
    with pytest.raises(TypeError):
        fw_("acr", ema=0.5)              # a typo is an error
    with pytest.raises(ValueError):
        fw_("mixmatch")


def test_mix_reaches_every_unlabeled_term():
    """lam = 0: every unlabeled CE of strong view v must become mask * CE(view v, y_src[v])."""
    bem = pytest.importorskip("bem")
    ys = [np.array([2, 1, 0]), np.array([1, 1, 2])]
    mix = [bem.Mix(torch.zeros(3), torch.as_tensor(y)) for y in ys]
    zs = np.random.default_rng(1).normal(size=(2, 2, 3, 3))
    zl = [ZL, [[0.3, 0.1, 1.0], [1.0, 1.0, 0.0]]]
    _, logs, _ = fw_("acr", ACR_COUNTS).loss(T(zl), T(YL, torch.long), T([ACR_Z, ACR_ZB]), T(zs),
                                             torch.ones(3, dtype=torch.bool), 0, GEN, mix=mix)
    mask = np.array([1.0, 1.0, 0.0])      # both ACR masks on this example (test_acr_masks)
    for key, h in (("Lu", 0), ("Lu_b", 1)):
        assert logs[key].item() == pytest.approx(np.mean([mask * ce(zs[v, h], ys[v]) for v in range(2)]), rel=1e-5)
    zw = [ZW, [[0.0, 6.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]]]
    _, logs, _ = fw_("abc", ABC_COUNTS).loss(T(zl), T([2, 2], torch.long), T(zw), T(zs),
                                             torch.ones(3, dtype=torch.bool), 0, GEN, mix=mix)
    m_back, m_abc = np.array([1.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])   # step 0: ABC Bernoulli p = 1
    assert logs["Lu"].item() == pytest.approx(np.mean([m_back * ce(zs[v, 0], ys[v]) for v in range(2)]), rel=1e-5)
    assert logs["L_con"].item() == pytest.approx(sum((m_abc * ce(zs[v, 1], ys[v])).mean() for v in range(2)), rel=1e-5)


@pytest.mark.parametrize('alg,extra', [('supervised', []), ('fixmatch', []), ('la', []), ('abc', []),
                                       ('abc', ['--abc-views', '1']), ('acr', [])])
def test_shape_of_is_what_a_run_builds(alg, extra):
    """ltssl.shape_of (read by flags.py's scope rules and gpu_check's GPU-hours) against a real task: the views its
    step makes and the heads of its network."""
    import conftest
    import flags
    import train
    argv = conftest.TINY + ['--alg', alg] + extra
    if alg == 'supervised':                    # the SSL recipe's flags are refused for it
        i = argv.index('--m1')
        argv = argv[:i] + argv[i + 2:]
    a = flags.resolve(flags.build_parser().parse_args(argv), flags.given_flags(argv))
    with pytest.MonkeyPatch.context() as mp:
        conftest.patch_small_data(mp, conftest.TINY_SYNTHETIC)
        t = train.make_task(a, torch.device('cpu'), lambda *k, **kw: None)
    logits, _ = t.model(torch.zeros(2, 3, 32, 32))
    views = (t.images_per_step - a.batch_size) // (a.mu * a.batch_size) - 1 if t.ssl else 0
    assert ltssl.shape_of(alg, vars(a)) == (views, len(logits))
