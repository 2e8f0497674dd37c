"""Tests for jitter.py against independent oracles: Monte-Carlo simulations built from the paper's
definition of an effective sample, numerical optimisation, binomial tolerances, hand values, published
parameter counts, and a fresh interpreter that imports a lone copy of the file."""
import copy
import math
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import jitter as J

REPO = pathlib.Path(__file__).resolve().parents[1]
COUNTS = np.array([60, 30, 12])
A = np.array([0.25, 0.5, 5 / 6])  # a_i n_i = 15, 15, 10 representatives


# ------------------------------------------------------------------------------------------------
# 1. Theory vs Monte-Carlo simulation of the sampling process
# ------------------------------------------------------------------------------------------------
def simulate(counts, a, u, n, replacement, trials, rng, quota=False):
    """Effective samples per class after n draws, averaged over trials (mean, standard error).

    Paper §3.1 definition: class i holds a_i n_i non-redundant 'representatives' (a random subset); the rest
    are redundant with data already in the class. A draw is effective iff it is a representative that was
    not drawn before (a repeat is redundant with itself). Classes are drawn i.i.d. from u (or, quota=True,
    exactly round(u_i n) times); items uniformly (with replacement) or from a shuffled queue (without).
    """
    m = len(counts)
    out = np.zeros((trials, m))
    for t in range(trials):
        reps = [rng.permutation(c) < round(ai * c) for c, ai in zip(counts, a)]
        k = np.round(u * n).astype(int) if quota else np.bincount(rng.choice(m, n, p=u), minlength=m)
        for i in range(m):
            if replacement:
                items = rng.integers(0, counts[i], k[i])
            else:  # a queue in random order; after a full pass no new representative can appear anyway
                items = rng.permutation(counts[i])[: min(k[i], counts[i])]
            out[t, i] = reps[i][np.unique(items)].sum()
    return out.mean(0), out.std(0) / math.sqrt(trials)


@pytest.mark.parametrize("n", [20, 100, 300])
def test_with_replacement_closed_form_matches_simulation(n):
    rng = np.random.default_rng(n)
    u = np.array([0.5, 0.3, 0.2])
    mean, se = simulate(COUNTS, A, u, n, True, 1500, rng)
    np.testing.assert_array_less(np.abs(mean - J.effective_samples(COUNTS, A, u, n, True)), 4 * se + 1e-9)


@pytest.mark.parametrize("n", [20, 600])  # far below / far above the cap, where min(E k, n_i) = E min(k, n_i)
def test_without_replacement_closed_form_matches_simulation(n):
    rng = np.random.default_rng(n)
    u = np.array([0.5, 0.3, 0.2])
    mean, se = simulate(COUNTS, A, u, n, False, 1500, rng)
    np.testing.assert_array_less(np.abs(mean - J.effective_samples(COUNTS, A, u, n, False)), 4 * se + 1e-9)


def test_without_replacement_quota_simulation_through_the_cap():
    rng = np.random.default_rng(0)
    u = np.array([0.5, 0.3, 0.2])  # 100 draws: 50 < 60, 30 = 30, 20 > 12 class draws
    mean, se = simulate(COUNTS, A, u, 100, False, 1500, rng, quota=True)
    np.testing.assert_array_less(np.abs(mean - J.effective_samples(COUNTS, A, u, 100, False)), 4 * se + 1e-9)


def test_one_epoch_without_replacement_reaches_all_effective_samples():
    rng = np.random.default_rng(1)
    N = COUNTS.sum()
    mean, se = simulate(COUNTS, A, COUNTS / N, N, False, 50, rng, quota=True)  # one shuffled epoch
    assert mean.sum() == pytest.approx((A * COUNTS).sum())
    assert J.total_effective_samples(COUNTS, A, COUNTS / N, N, False) == pytest.approx((A * COUNTS).sum())
    # with replacement one epoch gives only 1 - (1 - 1/N)^N ~ 63% of it (spec §1.3)
    ratio = J.total_effective_samples(COUNTS, A, COUNTS / N, N, True) / (A * COUNTS).sum()
    assert ratio == pytest.approx(1 - (1 - 1 / N) ** N)


def test_recurrences_match_closed_forms():
    u = np.array([0.5, 0.3, 0.2])
    for n in (1, 7, 50, 400):
        np.testing.assert_allclose(J.effective_samples_recurrence(COUNTS, A, u, n, True),
                                   J.effective_samples(COUNTS, A, u, n, True), rtol=1e-10)
    for n in (1, 7, 30):  # below the cap: u_i (n - 1) <= n_i - 1
        np.testing.assert_allclose(J.effective_samples_recurrence(COUNTS, A, u, n, False),
                                   J.effective_samples(COUNTS, A, u, n, False), rtol=1e-10)
    t = J.effective_samples(torch.tensor(COUNTS), A, u, 50, True)  # torch in, torch out
    assert isinstance(t, torch.Tensor) and np.allclose(t.numpy(), J.effective_samples(COUNTS, A, u, 50))


def test_balanced_utilisation_iff_u_proportional_to_a_n():
    u = A * COUNTS / (A * COUNTS).sum()
    for rep in (True, False):  # large n: R_i = a_i n_i / (u_i n) is the same for every class
        np.testing.assert_allclose(J.utilisation_ratio(COUNTS, A, u, 10 ** 6, rep), 1.0, atol=1e-6)
    Q = J.utilisation_ratio(COUNTS, A, COUNTS / COUNTS.sum(), 10 ** 6, True)
    assert Q[0, 2] == pytest.approx(A[0] / A[2], rel=1e-6)  # u ∝ n: Q -> a_i / a_j


def numerical_optimum(counts, a, n, steps=20000, lr=1e-3):
    """Exponentiated-gradient ascent of S_n on the simplex (the oracle for the optimal u)."""
    u = counts / counts.sum()
    for _ in range(steps):
        u = u * np.exp(lr * a * n * (1 - u / counts) ** (n - 1))
        u /= u.sum()
    return u


def test_optimal_u_with_replacement():
    counts, a, n = np.array([100, 50, 20, 10.0]), np.array([0.3, 0.5, 0.8, 0.9]), 150
    S = lambda u: J.total_effective_samples(counts, a, u, n, True)
    u_num = numerical_optimum(counts, a, n)
    u_exact = J.optimal_u_with_replacement(counts, a, n, exact=True)
    np.testing.assert_allclose(u_exact, u_num, atol=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(50):  # beats every nearby perturbation within the simplex
        d = rng.normal(size=4)
        assert S(u_exact) >= S(u_exact + 1e-3 * (d - d.mean())) - 1e-12
    u_paper = J.optimal_u_with_replacement(counts, a, n)  # printed 1/n exponent: close, not exact
    assert np.abs(u_paper - u_num).max() < 5e-3 and S(u_paper) > S(u_num) - 1e-3
    big = J.optimal_u_with_replacement(counts, a, 10 ** 7)  # n -> inf: u -> n / N
    np.testing.assert_allclose(big, counts / counts.sum(), atol=1e-4)


def test_greedy_fill_beats_random_u():
    counts, a = np.array([100, 50, 20, 10.0]), np.array([0.3, 0.5, 0.8, 0.9])
    rng = np.random.default_rng(0)
    for n in (15, 60, 150, 180, 400):
        S = lambda u: J.total_effective_samples(counts, a, u, n, False)
        u_g = J.optimal_u_without_replacement(counts, a, n)
        assert u_g.sum() == pytest.approx(1.0)
        assert all(S(u_g) >= S(rng.dirichlet(np.ones(4))) - 1e-12 for _ in range(200))
    assert J.optimal_u_without_replacement(counts, a, 60)[[2, 3]] == pytest.approx([20 / 60, 10 / 60])


def cifar100_lt():
    return np.array([int(500 * 0.01 ** (i / 99)) for i in range(100)])


def test_G_hand_values_and_derivative():
    n_j = cifar100_lt()
    N = n_j.sum()
    a = 0.9 * np.sqrt(n_j.min() / n_j)  # a ∝ n^{-1/2}; spec §1.5: G(0.95)=1128 > G(1)=1111 > G(1.05)=1093
    assert [round(J.G(n_j, a, x, N)) for x in (0.95, 1.0, 1.05)] == [1128, 1111, 1093]
    # App. A.1: dG/dx at x=1 = n (1-1/N)^{n-1} sum_j a_j [n_j ln n_j N - n_j sum_k n_k ln n_k] / N^2
    n = N
    hand = n * (1 - 1 / N) ** (n - 1) * (a * (n_j * np.log(n_j) * N - n_j * (n_j * np.log(n_j)).sum())).sum() / N ** 2
    fd = (J.G(n_j, a, 1 + 1e-6, n) - J.G(n_j, a, 1 - 1e-6, n)) / 2e-6
    assert fd == pytest.approx(hand, rel=1e-5)
    assert J.method1_total(n_j, a, 0.05, n, p=(1, 0, 0)) == pytest.approx(J.G(n_j, a, 1.0, n))


def test_method2_utilisation_kl_derivative():
    n_j = cifar100_lt().astype(float)
    a = 0.9 * np.sqrt(n_j.min() / n_j)
    u = n_j / n_j.sum()
    kl = lambda d: J.utilisation_kl(J.method2_utilisation(n_j, a, d))
    # App. A.1 proof 2 with x = 1 - δt: dKL/dx|_{x=1} = (sum u^-1) [(1/m) sum u^2 - sum a u^2 / sum a]
    dkl_dx = (1 / u).sum() * ((u ** 2).mean() - (a * u ** 2).sum() / a.sum())
    assert dkl_dx > 0
    assert (kl(1e-7) - kl(0.0)) / 1e-7 == pytest.approx(-dkl_dx, rel=1e-3)
    assert kl(0.05) < kl(0.0)
    assert J.utilisation_kl(np.ones(5)) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# 2. The δt schedule
# ------------------------------------------------------------------------------------------------
def test_delta_t_hand_values():
    single = dict(alpha=1.0, beta=1.5, gamma=0.01, delta_fixed=0.5, delta_fixed_from=350)
    assert J.delta_t(0, 500, **single) == pytest.approx(0.01)         # γ floor
    assert J.delta_t(100, 500, **single) == pytest.approx(0.2 ** 1.5)  # 0.0894
    assert J.delta_t(349, 500, **single) == pytest.approx(0.698 ** 1.5)
    assert J.delta_t(350, 500, **single) == 0.5 and J.delta_t(499, 500, **single) == 0.5
    ride = dict(alpha=0.05, beta=2.0, gamma=0.01)
    assert J.delta_t(10, 200, **ride) == pytest.approx(0.05 * 0.01)   # (0.05)^2 < γ
    assert J.delta_t(100, 200, **ride, xi=0.4) == pytest.approx(0.4 * 0.05 * 0.25)
    assert J.delta_t(100, 200, **ride, floor="min") == pytest.approx(0.05 * 0.01)
    assert J.delta_t(100, 200, **ride, exponent_on="total") == pytest.approx(0.05 * max(100 / 200 ** 2, 0.01))


def test_schedule_defaults_have_one_source():
    """The paper's stated schedules (spec jitter.md §4.2 single expert, §4.3 RIDE; typed here, not read from the
    code) are what jitter.SETTINGS holds, what train.py resolves by default, and what make_sampler uses when no
    schedule keyword is given (the RIDE preset)."""
    import flags
    paper = {'single': dict(kind='jitter2', epochs=500, alpha=1.0, beta=1.5, gamma=0.01, delta_fixed=0.5,
                            delta_fixed_from=350),
             'ride': dict(kind='jitter1', epochs=200, alpha=0.05, beta=2.0, gamma=0.01, delta_fixed=0.0,
                          delta_fixed_from=160)}
    for name, st in paper.items():
        assert {k: J.SETTINGS[name][k] for k in st} == st
        argv = ['--task', 'lt'] + (['--model', 'ride'] if name == 'ride' else [])
        a = flags.resolve(flags.build_parser().parse_args(argv))
        assert (a.sampler, a.epochs, a.jitter_alpha, a.jitter_beta, a.jitter_gamma, a.delta_fixed,
                a.delta_fixed_from) == tuple(st.values())
    y = torch.arange(60) % 6
    s = J.make_sampler("jitter1", y, 6, 16, 10, gen=torch.Generator().manual_seed(0))
    assert {k: s.schedule[k] for k in ("alpha", "beta", "gamma")} == dict(alpha=0.05, beta=2.0, gamma=0.01)
    assert s.p == pytest.approx((1 / 3, 1 / 3, 1 / 3))


def test_delta_fixed_from_alone_moves_the_stage_2_start():
    """--delta-fixed-from alone is not ignored: delta_t is fixed at the preset's value (single expert: 0.5, paper
    §4.2) from the given epoch on, in the sampler the run builds; before that epoch the schedule still runs."""
    import flags
    a = flags.resolve(flags.build_parser().parse_args(['--task', 'lt', '--epochs', '20', '--delta-fixed-from', '12']))
    assert (a.delta_fixed, a.delta_fixed_from) == (0.5, 12)
    y = torch.arange(600) % 10
    s = J.make_sampler(a.sampler, y, 10, 64, a.epochs, alpha=a.jitter_alpha, beta=a.jitter_beta, gamma=a.jitter_gamma,
                       delta_fixed=a.delta_fixed, delta_fixed_from=a.delta_fixed_from, gen=torch.Generator().manual_seed(0))
    deltas = []
    for e in range(20):
        s.set_epoch(e)
        deltas.append(s.delta)
    assert all(d == 0.5 for d in deltas[12:]) and any(d != 0.5 for d in deltas[:12]), deltas


@pytest.mark.parametrize("kind,lo,hi", [("jitter1", 0.0, 1.0), ("jitter2", 1.0, 1.0), ("jitter-noreplace", -0.5, 0.5)])
def test_sampler_delta_within_bounds(kind, lo, hi):
    labels = torch.randint(0, 5, (200,), generator=torch.Generator().manual_seed(0))
    s = J.make_sampler(kind, labels, 5, 16, 40, alpha=0.8, beta=2.0, gamma=0.05, delta_fixed=0.25,
                       delta_fixed_from=30, gen=torch.Generator().manual_seed(1))
    deltas = []
    for e in range(40):
        s.set_epoch(e)
        env = 0.8 * max((e / 40) ** 2, 0.05)
        if e >= 30:
            assert s.delta == 0.25  # stage override
        else:
            assert lo * env - 1e-12 <= s.delta <= hi * env + 1e-12
            deltas.append(s.delta / env)
    assert len(set(deltas)) == (1 if kind == "jitter2" else 30)  # ξ random per epoch except Method 2


# ------------------------------------------------------------------------------------------------
# 3. Samplers
# ------------------------------------------------------------------------------------------------
N_CLS = np.array([200, 100, 50, 25, 12, 6])


def lt_labels(seed=0):
    y = torch.repeat_interleave(torch.arange(6), torch.tensor(N_CLS))
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def mixture_z(counts, T, B, U, p):
    """z-scores of class counts over T batches when each batch picks loader k (freqs U[k]) w.p. p[k]."""
    U, p = np.asarray(U), np.asarray(p)[:, None]
    mu = (p * U).sum(0)
    var = (p * (B * U * (1 - U) + B ** 2 * U ** 2)).sum(0) - B ** 2 * mu ** 2  # per-batch count variance
    return (counts - T * B * mu) / np.sqrt(T * var)


def empirical(s, labels, T):
    idx = torch.cat([s.next_batch() for _ in range(T)])
    return torch.bincount(labels[idx], minlength=6).numpy()


@pytest.mark.parametrize("kind", ["instance", "balanced", "reversed", "jitter1", "jitter2"])
def test_with_replacement_class_frequencies(kind):
    y, T, B, d = lt_labels(), 3000, 32, 0.3
    s = J.make_sampler(kind, y, 6, B, 10, delta_fixed=d, delta_fixed_from=0, gen=torch.Generator().manual_seed(2))
    u = N_CLS / N_CLS.sum()
    pw = lambda x: N_CLS ** x / (N_CLS ** x).sum()
    U, p = {"instance": ([u], [1]), "balanced": ([np.full(6, 1 / 6)], [1]), "reversed": ([pw(-1.0)], [1]),
            "jitter1": ([u, pw(1 + d), pw(1 - d)], [1 / 3] * 3),       # Method 1 mixture
            "jitter2": ([u, pw(-1.0)], [1 - d, d])}[kind]              # Method 2: (1-δ)u + δū
    s.set_epoch(0)
    assert s.iters_per_epoch == math.ceil(len(y) / B)
    np.testing.assert_allclose(s.class_probs().numpy(), (np.array(p)[:, None] * np.array(U)).sum(0), atol=1e-12)
    assert np.abs(mixture_z(empirical(s, y, T), T, B, U, p)).max() < 5


def epochs_of(s, y, E):
    """Yields the indices of each of E whole epochs (lazily, so s.delta is that epoch's δt)."""
    for e in range(E):
        s.set_epoch(e)
        yield torch.cat([s.next_batch() for _ in range(s.iters_per_epoch)])


@pytest.mark.parametrize("kind", ["jitter-noreplace", "shuffle"])
def test_no_delta_is_a_permutation_per_epoch(kind):
    y = lt_labels()
    s = J.make_sampler(kind, y, 6, 32, 3, alpha=0.0, gen=torch.Generator().manual_seed(3))
    for ep in epochs_of(s, y, 3):
        assert torch.equal(torch.sort(ep).values, torch.arange(len(y)))


def test_noreplace_quotas_and_queues_across_epochs():
    y = lt_labels()
    N = len(y)
    # β = 0 makes the ramp 1, so δt = ξ 1.6 with ξ ~ U(-0.5, 0.5): quotas overshoot head or tail classes
    s = J.make_sampler("jitter-noreplace", y, 6, 32, 12, alpha=1.6, beta=0.0, gen=torch.Generator().manual_seed(4))
    seen = [np.zeros(c, int) for c in N_CLS]
    members = [torch.nonzero(y == c).flatten() for c in range(6)]
    pos = {int(i): (c, j) for c in range(6) for j, i in enumerate(members[c])}
    for e, ep in enumerate(epochs_of(s, y, 12)):
        assert len(ep) == N
        target = N_CLS ** (1 + s.delta) / (N_CLS ** (1 + s.delta)).sum() * N  # ũ_i N
        got = np.bincount(y[ep].numpy(), minlength=6)
        assert np.abs(got - target).max() < 1.0 + 1e-9
        for i in ep.tolist():
            c, j = pos[i]
            seen[c][j] += 1
        for c in range(6):  # no index is repeated before its class is used up, across epoch boundaries
            assert seen[c].max() - seen[c].min() <= 1, (e, c)


@pytest.mark.parametrize("kind,kw", [("jitter-noreplace", {}), ("jitter-noreplace", {"quota_rounding": "multinomial"}),
                                     ("jitter1", {}), ("jitter2", {}), ("shuffle", {})])
def test_resume_is_bit_identical(kind, kw):
    y = lt_labels()
    mk = lambda seed: J.make_sampler(kind, y, 6, 32, 6, alpha=0.6, beta=1.0, gen=torch.Generator().manual_seed(seed), **kw)
    s = mk(5)
    for _ in range(20):  # crosses the first epoch boundary (13 iterations per epoch)
        s.next_batch()
    sd = copy.deepcopy(s.state_dict())
    ref = [s.next_batch() for _ in range(15)]
    r = mk(99)
    r.load_state_dict(sd)
    r.set_epoch(sd["epoch"])  # a trainer's set_epoch for the current epoch must not reshuffle
    assert all(torch.equal(a, b) for a, b in zip(ref, [r.next_batch() for _ in range(15)]))
    assert r.epoch == s.epoch and r.delta == s.delta and torch.equal(r.class_probs(), s.class_probs())


# ------------------------------------------------------------------------------------------------
# 4. Models
# ------------------------------------------------------------------------------------------------
def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_resnet32_parameter_counts():
    assert n_params(J.resnet32(10)) == 464_154  # LDAM-DRW / Idelbayev ResNet-32
    assert n_params(J.resnet32(100)) == 470_004  # spec §6.1: 0.470M
    assert n_params(J.resnet32(10, norm_linear=True)) == 464_154 - 10  # no bias
    assert n_params(J.resnet32(10, group_l2norm=True)) == 464_154 - 650 + 256 * 10 + 10


@pytest.mark.parametrize("mode,groups", [("multi", (1, 2, 4, 8)), ("single4", (4,)), ("expand", (4,))])
def test_group_l2norm(mode, groups):
    torch.manual_seed(0)
    model = J.resnet32(10, group_l2norm=mode)
    x = torch.randn(4, 3, 16, 16)  # any size: the pool is global
    h = model.gl2n(model.features(x))
    assert h.shape == (4, model.gl2n.out_dim)
    off = 0
    for g in groups:  # every chunk of every granularity has unit norm
        width = model.gl2n.out_dim // len(groups)
        chunks = h[:, off:off + width].reshape(4, g, -1)
        torch.testing.assert_close(chunks.norm(dim=2), torch.ones(4, g))
        off += width
    logits = model(x)
    assert logits.shape == (4, 10)
    logits.logsumexp(1).sum().backward()
    assert model.conv1.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# Copy test: jitter.py works alone in an empty directory
# ------------------------------------------------------------------------------------------------
def test_jitter_py_works_alone(tmp_path):
    shutil.copy(REPO / "jitter.py", tmp_path / "jitter.py")
    code = (
        "import sys, torch, jitter\n"
        "y = torch.randint(0, 10, (500,))\n"
        "s = jitter.make_sampler('jitter1', y, 10, 64, 5, alpha=0.5, beta=1.0, gamma=0.01, gen=torch.Generator().manual_seed(0))\n"
        "s.set_epoch(2); b = s.next_batch(); assert b.shape == (64,) and b.dtype == torch.int64\n"
        "repo, venv = %r, %r\n"
        "bad = [m for m, v in list(sys.modules.items()) if (getattr(v, '__file__', None) or '').startswith(repo)"
        " and not (getattr(v, '__file__', None) or '').startswith(venv)]\n"
        "assert bad == [], bad\n"
        "assert jitter.__file__.startswith(%r), jitter.__file__\n"
        "print('ok')\n" % (str(REPO), str(REPO / ".venv"), str(tmp_path))
    )
    r = subprocess.run([sys.executable, "-E", "-s", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin"}, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# ================================================================================================
# issue 12: the closed form never returns a negative frequency
# ================================================================================================
def closed_form_numerators(counts, a, n):
    """1 - sum_{j!=i} n_j (1 - (a_i/a_j)^{1/n}) for each i, written out with loops (the sign of u_i)."""
    m = len(counts)
    return np.array([1 - sum(counts[j] * (1 - (a[i] / a[j]) ** (1 / n)) for j in range(m) if j != i)
                     for i in range(m)])


def test_optimal_u_with_replacement_refuses_negative_frequencies():
    counts = np.array([500, 300, 150, 80, 40, 20, 10, 5.0])   # the shape: u_0 < 0 at n = 50
    a = np.linspace(0.5, 0.9, 8)
    assert closed_form_numerators(counts, a, 50)[0] < 0
    invalid = [n for n in range(2, 20000) if (closed_form_numerators(counts, a, n) < 0).any()]
    n_min = max(invalid) + 1                                   # brute-force oracle of the valid range
    assert J.min_n_with_replacement(counts, a) == n_min
    with pytest.raises(ValueError, match=rf"n = 50 .*negative.*n >= {n_min}\b"):
        J.optimal_u_with_replacement(counts, a, 50)
    for n in (n_min, n_min + 1, 4 * n_min, 10 ** 6):
        assert (J.optimal_u_with_replacement(counts, a, n) >= 0).all()
    with pytest.raises(ValueError):
        J.optimal_u_with_replacement(counts, a, n_min - 1)


# ================================================================================================
# issue 12: the sampler, visible -- each epoch's δt and realised class frequencies in metrics.jsonl
# ================================================================================================
def lt_run(tmp_path, sampler, *extra):
    import json
    from conftest import LT_SYNTHETIC, TINY_LT, run_train
    run = run_train(TINY_LT + ['--sampler', sampler, *extra], tmp_path / sampler, synthetic=LT_SYNTHETIC)
    recs = [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines() if x.strip()]
    return json.loads((run / 'summary.json').read_text())['class_counts'], recs


def test_epoch_records_shuffle_draws_every_image_once(tmp_path):
    counts, recs = lt_run(tmp_path, 'shuffle')
    eps = [e for r in recs for e in r['sampling']]
    assert [e['epoch'] for e in eps] == [0, 1]                       # one entry per epoch, every epoch
    for e in eps:                                                    # one pass over the data: freq = n_i / N
        assert e['draws'] == sum(counts) and e['delta'] == 0
        assert e['freq'] == pytest.approx(np.array(counts) / sum(counts), abs=1e-6)


def test_epoch_records_noreplace_follow_the_quota_formula(tmp_path):
    counts, recs = lt_run(tmp_path, 'jitter-noreplace', '--jitter-alpha', '0.8', '--jitter-beta', '1')
    n = np.array(counts, float)
    N = n.sum()
    eps = [e for r in recs for e in r['sampling']]
    assert len(eps) == 2 and any(e['delta'] != 0 for e in eps)
    for e in eps:                                                    # quota_i = round(ũ_i N), ũ ∝ n^{1+δt}
        u_tilde = n ** (1 + e['delta']) / (n ** (1 + e['delta'])).sum()
        assert e['draws'] == N
        assert np.abs(np.array(e['freq']) - u_tilde).max() <= 1 / N + 1e-6


def test_evaluation_is_fp32_unless_eval_bf16(monkeypatch):
    import flags
    import train
    seen = []
    real = train.autocast
    monkeypatch.setattr(train, 'autocast', lambda device, bf16=None: seen.append(bf16) or real(device, bf16))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    x, y = torch.randint(0, 255, (10, 3, 4, 4), dtype=torch.uint8), torch.arange(10) % 3
    for bf16 in (False, True):
        seen.clear()
        train.eval_confusion(model, x, y, (0.5,) * 3, (0.25,) * 3, 3, lambda out: out[None], batch=4, bf16=bf16)
        assert seen == [None if bf16 else False] * 3                 # 3 batches of <= 4; None = as training
    assert not torch.is_autocast_enabled()
    assert flags.build_parser().parse_args([]).eval_bf16 is False and \
        flags.build_parser().parse_args(['--eval-bf16']).eval_bf16 is True


def test_report_sampler_figure(tmp_path):
    """Hand-built metrics: the table's δt range, tail/head ratio and × instance are computed from them."""
    import json
    import report
    run = tmp_path / 'run' / 'seed0'
    run.mkdir(parents=True)
    (run / 'summary.json').write_text(json.dumps({'class_counts': [8, 4, 2]}))
    (run / 'args.json').write_text(json.dumps({'sampler': 'jitter2'}))
    eps = [{'epoch': 0, 'delta': 0.01, 'draws': 14, 'freq': [0.5, 0.25, 0.25]},
           {'epoch': 1, 'delta': 0.03, 'draws': 14, 'freq': [0.4, 0.3, 0.3]}]
    (run / 'metrics.jsonl').write_text(json.dumps({'step': 1, 'sampling': eps[:1]}) + '\n' +
                                       json.dumps({'step': 2, 'sampling': eps[1:]}) + '\n')
    report.main(['sampler', str(run), '--out', str(tmp_path / 'res')])
    md = (tmp_path / 'res' / 'runs_sampler.md').read_text()
    ratio = (0.25 + 0.3) / (0.5 + 0.4)                               # tail = class 2 (2 images), head = class 0
    line = next(x for x in md.splitlines() if 'jitter2' in x)
    assert '0.0100 – 0.0300' in line and '0.5000 – 0.7500' in line       # δt and per-epoch tail/head ranges
    assert f'{ratio:.4f}' in line and '0.2500' in line and f'{ratio / 0.25:.3f}' in line
    assert (tmp_path / 'res' / 'runs_sampler.png').stat().st_size > 1000


def test_jitter_table_baselines_dry_run(tmp_path):
    """Tables 1-5 (issue 12): baselines = instance sampling + RIDE's loss from epoch 0; shuffle is its own row;
    J-sampling rows keep CE in stage 1; Method 2 + RIDE is marked beyond the paper; the sampler figure is drawn."""
    import os
    import re
    env = dict(os.environ, DRY_RUN='1', RUNS=str(tmp_path / 'runs'), RESULTS=str(tmp_path / 'res'), SEEDS='1')
    cmds = {}
    for t in range(1, 6):
        out = subprocess.run(['bash', f'reproduce/jitter_table{t}.sh'], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=60, check=True).stdout
        assert f'report.py sampler jitter_table{t}' in out
        for row, cmd in re.findall(r'cell (\S+) \| \S+ \| seed 0\n\+ \S+ train\.py (.*)', out):
            cmds.setdefault((t, row), []).append(cmd)
    flat = lambda t, row: ' '.join(cmds[(t, row)])
    for t, rows in {1: ('ride-4e', 'ride-4e-reduce'), 3: ('with-replacement-ride-code',),
                    4: ('with-replacement-ride-code',), 5: ('with-replacement-ride-code',)}.items():
        for row in rows:
            assert all('--sampler instance --ride-stage1 ldam' in c for c in cmds[(t, row)]), (t, row)
    for t, row in [(1, 'ride-4e-shuffle'), (1, 'ride-4e-reduce-shuffle'), (3, 'without-replacement-ride-code'),
                   (4, 'without-replacement-ride-code'), (5, 'without-replacement-ride-code')]:
        assert all('--sampler shuffle --ride-stage1 ldam' in c for c in cmds[(t, row)]), (t, row)
    for t, row in [(1, 'j-sampling+ride-4e'), (1, 'j-sampling+ride-4e-reduce'), (3, 'jitter-with-replacement'),
                   (3, 'jitter-without-replacement'), (4, 'jitter-with-replacement')]:
        assert '--ride-stage1' not in flat(t, row) and '--sampler jitter' in flat(t, row)    # CE in stage 1
    for t in (1, 2):
        assert '--sampler jitter2' in flat(t, 'j-sampling-m2+ride-4e-beyond-paper')
        assert '--model ride' in flat(t, 'j-sampling-m2+ride-4e-reduce-beyond-paper')


# ================================================================================================
# issue 22: the samplers as a torch DataLoader batch sampler
# ================================================================================================
BS_COUNTS = [40, 20, 9, 5, 2]


def _bs_sampler(kind):
    y = torch.arange(len(BS_COUNTS)).repeat_interleave(torch.tensor(BS_COUNTS))
    return J.make_sampler(kind, y, len(BS_COUNTS), 8, 3, alpha=1.0, beta=1.0, gen=torch.Generator().manual_seed(3))


def _device_batches(kind, epochs=3):
    """The oracle: the sampler's own next_batch() sequence, epoch by epoch, from the same generator state."""
    s, out = _bs_sampler(kind), []
    for e in range(epochs):
        s.set_epoch(e)
        out += [s.next_batch().tolist() for _ in range(s.iters_per_epoch)]
    return out


def _loader(bs):
    ds = torch.utils.data.TensorDataset(torch.arange(sum(BS_COUNTS)))
    return torch.utils.data.DataLoader(ds, batch_sampler=bs)


@pytest.mark.parametrize("kind", J.KINDS)
def test_batch_sampler_gives_the_device_sampler_batches_and_resumes_mid_epoch(kind):
    want = _device_batches(kind)
    bs = J.BatchSampler(_bs_sampler(kind))
    loader, got = _loader(bs), []
    assert len(loader) == bs.sampler.iters_per_epoch
    for e in range(3):
        bs.set_epoch(e)
        got += [b[0].tolist() for b in loader]
    assert got == want
    # killed after 2 batches of epoch 1: a new process resumes from the state and ends on the same sequence
    first = J.BatchSampler(_bs_sampler(kind))
    seen = [b[0].tolist() for b in _loader(first)]          # epoch 0 (set_epoch left out: the first pass is epoch 0)
    it = iter(_loader(first))                               # epoch 1 (no set_epoch: the next epoch)
    seen += [next(it)[0].tolist() for _ in range(2)]
    state = first.state_dict(done=2)
    resumed = J.BatchSampler(_bs_sampler(kind))
    resumed.load_state_dict(copy.deepcopy(state))
    seen += [b[0].tolist() for b in _loader(resumed)]       # the rest of epoch 1
    resumed.set_epoch(2)
    seen += [b[0].tolist() for b in _loader(resumed)]
    assert seen == want


def test_theory_figure_runs_and_its_schedule_is_the_samplers(tmp_path):
    """reproduce/jitter_fig_theory.sh writes its figure (CI's smoke run once died here on a stale call), and panel
    (d)'s δt per epoch is the δt a real sampler of that kind and preset sets at each epoch (same seed)."""
    root = pathlib.Path(__file__).resolve().parents[1]
    out = tmp_path / 'theory.png'
    r = subprocess.run([sys.executable, str(root / 'reproduce' / 'jitter_theory_plots.py'), '--out', str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 10_000
    sys.path.insert(0, str(root / 'reproduce'))
    import jitter_theory_plots as plots
    labels = torch.arange(10).repeat_interleave(torch.tensor([50, 30, 20, 10, 8, 6, 5, 4, 3, 2]))
    for kind, setting in (('jitter1', 'ride'), ('jitter2', 'single'), ('jitter-noreplace', 'ride')):
        st = dict(J.SETTINGS[setting])
        E = st.pop('epochs')
        sched = {k: st[k] for k in ('alpha', 'beta', 'gamma', 'delta_fixed', 'delta_fixed_from')}
        s = J.make_sampler(kind, labels, 10, 16, E, gen=torch.Generator().manual_seed(0), **sched)
        seen = []
        for e in range(E):
            s.set_epoch(e)
            seen.append(s.delta)
        np.testing.assert_allclose(plots.schedule(kind, setting, seed=0), seen, rtol=0, atol=0)
