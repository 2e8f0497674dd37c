"""BEM wired into the frameworks (issue 17): where the ECB weights act, the loss-mass accounting, one d^u under
ACR, the dynamics records and their figure.

Oracles: losses written out by hand from log-sum-exp (CE(z, k) = log sum_j exp z_j - z_k); a hand count of
the loss mass per class; the framework's loss without any mix (the unweighted reference); ACR's own u_py in
the checkpoint."""
import math

import numpy as np
import pytest
import torch

import bem
import ltssl
from conftest import TINY, read_metrics, run_train

C = 3
Z = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [0.3, 0.1, -0.4]])
Y, Y_SRC, MASK = torch.tensor([1, 0, 2]), torch.tensor([2, 2, 0]), torch.tensor([1.0, 0.5, 1.0])
LAM, W = torch.tensor([0.7, 0.25, 1.0]), torch.tensor([0.5, 1.0, 2.0])   # sample 2 is unmixed (lam = 1)


def ce_hand(i, k):
    row = Z[i].tolist()
    return math.log(sum(math.exp(v) for v in row)) - row[k]


def expected_terms(scope):
    """(target part, source part) per sample, written out for each --ecb-scope."""
    out = []
    for i in range(3):
        y, s, lam, m = int(Y[i]), int(Y_SRC[i]), float(LAM[i]), float(MASK[i])
        w_t, w_s = float(W[y]), float(W[s])
        if scope == 'target':
            w_s = 1.0
        if lam == 1.0 and scope != 'all':        # unmixed: the framework's own loss
            out.append((m * ce_hand(i, y), 0.0))
        else:
            out.append((m * lam * w_t * ce_hand(i, y), m * (1 - lam) * w_s * ce_hand(i, s)))
    return out


@pytest.mark.parametrize('scope', ['mixed', 'target', 'all'])
def test_mixed_ce_by_hand_for_each_scope(scope):
    mix = dict(lam=LAM, y_src=Y_SRC, w=W, ecb_scope=scope)
    want = expected_terms(scope)
    got = bem.mixed_ce(Z, Y, MASK, mix)
    assert torch.allclose(got, torch.tensor([t + s for t, s in want]), rtol=1e-6)
    t, s = bem.mixed_ce_terms(Z, Y, MASK, mix)
    assert torch.allclose(t, torch.tensor([a for a, _ in want]), rtol=1e-6)
    assert torch.allclose(s, torch.tensor([b for _, b in want]), rtol=1e-6, atol=1e-7)


def test_unmixed_sample_is_bit_identical_to_plain_ce():
    plain = ltssl.ce(Z, Y, MASK)
    for scope in ('mixed', 'target'):
        got = bem.mixed_ce(Z, Y, MASK, dict(lam=torch.ones(3), y_src=Y_SRC, w=W, ecb_scope=scope))
        assert torch.equal(got, plain)
    with pytest.raises(ValueError, match='ecb_scope'):
        bem.mixed_ce(Z, Y, MASK, dict(lam=LAM, y_src=Y_SRC, w=W, ecb_scope='both'))


@pytest.mark.parametrize('scope', ['mixed', 'target', 'all'])
def test_loss_mass_by_hand_count(scope):
    mass = bem.loss_mass(Z, Y, MASK, dict(lam=LAM, y_src=Y_SRC, w=W, ecb_scope=scope))
    want = np.zeros((3, C))
    for i, (t, s) in enumerate(expected_terms(scope)):
        mixed = float(LAM[i]) < 1
        want[1 if mixed else 0, int(Y[i])] += t
        want[2, int(Y_SRC[i])] += s
    assert np.allclose(mass.numpy(), want, rtol=1e-6)
    assert float(mass.sum()) == pytest.approx(float(bem.mixed_ce(Z, Y, MASK, dict(lam=LAM, y_src=Y_SRC, w=W,
                                                                                   ecb_scope=scope)).sum()), rel=1e-6)
    # BEM's shares since the last record: accumulate twice, the shares sum to 1 and equal the hand shares
    b = bem.BEM(C, (3, 4, 4), [5, 3, 1], 20, 'cpu')
    for _ in range(2):   # a term's loss adds its mass to the BEM that made the Mix; a re-balanced term adds none
        got = bem.Mix(LAM, Y_SRC, W, scope, b).loss(Z, Y, MASK)
        bem.Mix(LAM, Y_SRC, W, scope, b).loss(Z, Y, MASK, rebalanced=True)
        assert torch.equal(got, bem.mixed_ce(Z, Y, MASK, dict(lam=LAM, y_src=Y_SRC, w=W, ecb_scope=scope)))
    st = b.stats(reset=True)
    shares = torch.stack([st['mass_unmixed'], st['mass_target'], st['mass_source']])
    assert float(shares.sum()) == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(shares.numpy(), want / want.sum())
    assert float(b.acc_mass.sum()) == 0.0   # reset


def _fw_logs(alg, mix, seed=0):
    """One framework loss on fixed random logits (B=6, C=4); the generator is re-seeded so draws match."""
    g = torch.Generator().manual_seed(1)
    Cn, B = 4, 6
    fw = ltssl.make_framework(alg, num_classes=Cn, labeled_counts=[40, 20, 8, 2], total_steps=100,
                              steps_per_epoch=10, threshold=0.3)
    H = fw.num_heads
    ll, lw = torch.randn(H, B, Cn, generator=g), torch.randn(H, B, Cn, generator=g)
    ls = torch.randn(fw.strong_views, H, B, Cn, generator=g)
    y = torch.randint(0, Cn, (B,), generator=g)
    _, logs, _ = fw.loss(ll, y, lw, ls, torch.ones(B, dtype=torch.bool), 0, torch.Generator().manual_seed(seed), mix)
    return logs, fw.strong_views


def _mix(V, lam, w, scope='mixed', B=6):
    return [bem.Mix(lam, torch.arange(B) % 4, w, scope) for _ in range(V)]


@pytest.mark.parametrize('alg', ['fixmatch', 'la', 'abc', 'acr'])
def test_nothing_mixed_ecb_on_off_identical(alg):
    """lam = 1 everywhere (empty bank): ECB on, ECB off and no mix at all give the same logged terms, bit for bit."""
    V = _fw_logs(alg, None)[1]
    ref = _fw_logs(alg, None)[0]
    w = torch.tensor([0.2, 0.5, 1.3, 2.0])
    for ww in (w, None):
        logs = _fw_logs(alg, _mix(V, torch.ones(6), ww))[0]
        assert logs.keys() == ref.keys()
        for k in ref:
            assert torch.equal(logs[k], ref[k]), (alg, k)


@pytest.mark.parametrize('alg,rebalanced', [('acr', 'Lu_b'), ('abc', 'L_con')])
def test_rebalanced_terms_are_unweighted_unless_scope_all(alg, rebalanced):
    """Mixed samples: ACR's L_u^b / ABC's L_con see the mixed labels but not ECB's weights (scope all: they do)."""
    V = _fw_logs(alg, None)[1]
    lam, w = torch.tensor([0.3, 0.6, 1.0, 0.8, 0.5, 1.0]), torch.tensor([0.2, 0.5, 1.3, 2.0])
    unweighted = _fw_logs(alg, _mix(V, lam, None))[0]
    on = _fw_logs(alg, _mix(V, lam, w))[0]
    assert torch.equal(on[rebalanced], unweighted[rebalanced])
    assert not torch.equal(on['Lu'], unweighted['Lu'])
    everywhere = _fw_logs(alg, _mix(V, lam, w, 'all'))[0]
    assert not torch.equal(everywhere[rebalanced], unweighted[rebalanced])


def test_external_distribution_drives_effective_numbers():
    b = bem.BEM(C, (3, 4, 4), [5, 3, 1], 20, 'cpu', d_u_fn=lambda: torch.tensor([0.2, 0.3, 0.5]))
    n_u = 20 * torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    want = bem.effective_number(torch.tensor([5., 3., 1.])) + bem.effective_number(n_u)
    assert torch.allclose(b.effective_numbers(), want.clamp_min(1))
    assert 'd_u' not in b.state_dict()


@pytest.mark.parametrize('alg', ['fixmatch', 'acr'])
def test_step0_ecb_on_off_identical_end_to_end(tmp_path, alg):
    """Step 0 through train.py (empty bank: nothing mixed): --ecb on and off log the same terms exactly."""
    base = TINY + ['--alg', alg, '--bem', '--iters', '1', '--threshold', '0.05']
    on = read_metrics(run_train(base + ['--ecb', 'on'], tmp_path / 'on'))[0]['train']
    off = read_metrics(run_train(base + ['--ecb', 'off'], tmp_path / 'off'))[0]['train']
    assert on == off
    every = read_metrics(run_train(base + ['--ecb', 'on', '--ecb-scope', 'all'], tmp_path / 'all'))[0]['train']
    assert every['Lu'] != on['Lu']      # the first implementation weighted the unmixed views


def test_acr_bem_distribution_is_acr_u_py_and_dynamics_figure(tmp_path):
    """ACR+BEM: after the estimation start (epoch > est_epoch = 5, here step >= 6 with 1-step epochs) BEM's d^u
    is ACR's u_py, saved once; every evaluation record carries the dynamics; report.py draws them."""
    run = run_train(TINY + ['--alg', 'acr', '--bem', '--iters', '9', '--eval-every', '3', '--epoch-steps', '1',
                            '--threshold', '0.05'], tmp_path / 'acr')
    ck = torch.load(run / 'checkpoint.pt', weights_only=False)
    u_py = ck['fw']['u_py'].double()
    assert not torch.allclose(u_py, torch.full_like(u_py, 0.1))       # the estimate has moved
    recs = read_metrics(run)
    assert recs[-1]['bem']['d_u'] == pytest.approx(u_py.tolist(), abs=1e-5)
    assert 'd_u' not in ck['bem']                                    # one place in the checkpoint
    keys = ('s_c', 'r_c', 'w_c', 'e_x', 'e_u', 'fill_x', 'fill_u', 'mass_unmixed', 'mass_target', 'mass_source')
    for r in recs:
        assert all(len(r['bem'][k]) == 10 for k in keys)
        total = sum(sum(r['bem'][k]) for k in ('mass_unmixed', 'mass_target', 'mass_source'))
        assert total == pytest.approx(1.0, abs=1e-3)
    assert sum(recs[-1]['bem']['mass_source']) > 0                     # the bank filled and mixing started
    import report
    report.main(['dynamics', '--run', str(run), '--out', str(tmp_path / 'fig')])
    png = tmp_path / 'fig' / 'bem_dynamics.png'
    assert png.exists() and png.stat().st_size > 20_000
    assert 'step 9) of 3' in (tmp_path / 'fig' / 'bem_dynamics.md').read_text()


def test_empty_bank_leaves_cutmix_views_unmixed(tmp_path):
    """An invalid draw (step 0: empty bank) must not paste a blank bank row, whatever the mixing method: with
    --mix cutmix, ECB on and off still give the same step-0 terms."""
    base = TINY + ['--alg', 'fixmatch', '--bem', '--mix', 'cutmix', '--iters', '1', '--threshold', '0.05']
    on = read_metrics(run_train(base + ['--ecb', 'on'], tmp_path / 'on'))[0]['train']
    off = read_metrics(run_train(base + ['--ecb', 'off'], tmp_path / 'off'))[0]['train']
    assert on == off
