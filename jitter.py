"""Effective sampling theory and jitter sampling (anonymous ICLR 2023 submission 5WOIluv9Xop).

Self-contained: imports torch, numpy and the stdlib only, so this file can be copied alone.
Sections follow the paper:
  1. Theory (§3.1; App. A.1): E_{i,n}, S_n, R_{i,n}, Q_{i,j,n}, optimal u, G(x), utilisation KL.
  2. The jitter factor schedule delta_t (§3.2.1).
  3. Samplers (§3.2.1): instance | balanced | reversed | jitter1 | jitter2 | jitter-noreplace | shuffle.
     Batches of indices are drawn on the device of `labels` with an explicit torch.Generator (sampler.next_batch());
     BatchSampler puts any of them into a torch DataLoader (batch_sampler=..., examples/lt_jitter.py).
  4. Models (§4.2): LDAM-DRW's CIFAR ResNet-32 and the group L2norm head.
Symbols: m classes, n_i class sizes, N = sum n_i, a_i effective proportion, u_i sampling frequency,
n number of draws so far. Reconstructed choices are keywords marked "# reconstructed:" (see README).
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# ================================================================================================
# 1. Effective sampling theory (paper §3.1, spec/jitter.md §1)
# ================================================================================================
def _arrays(*xs):
    """Same formula for numpy and torch: cast to float64 arrays of whichever library was passed."""
    if any(isinstance(x, torch.Tensor) for x in xs):
        return [torch.as_tensor(x, dtype=torch.float64) for x in xs]
    return [np.asarray(x, dtype=np.float64) for x in xs]


def effective_samples_recurrence(n_i, a_i, u_i, n, replacement=True):
    """E_{i,n} by iterating the paper's recurrence n times from E_{i,0} = 0 (§3.1.1 / §3.1.2)."""
    n_i, a_i, u_i = _arrays(n_i, a_i, u_i)
    E = 0 * (n_i * a_i * u_i)
    for _ in range(int(n)):
        if replacement:  # a draw is new-effective w.p. u_i * (a_i n_i - E)^+ / n_i
            p_new = u_i * (a_i * n_i - E).clip(0) / n_i
            E = p_new * (E + 1) + (1 - p_new) * E
        else:            # without replacement every class draw adds a_i until the class is used up
            E = u_i * (E + a_i).clip(max=a_i * n_i) + (1 - u_i) * E
    return E


def effective_samples_with(n_i, a_i, u_i, n):
    """§3.1.1 closed form: E_{i,n} = a_i n_i (1 - (1 - u_i/n_i)^n) (exact below the cap)."""
    n_i, a_i, u_i = _arrays(n_i, a_i, u_i)
    return a_i * n_i * (1 - (1 - u_i / n_i) ** n)


def effective_samples_without(n_i, a_i, u_i, n):
    """§3.1.2 closed form: E_{i,n} = min(a_i u_i n, a_i n_i) (the recurrence only approaches the cap)."""
    n_i, a_i, u_i = _arrays(n_i, a_i, u_i)
    return (a_i * u_i * n).clip(max=a_i * n_i)


def effective_samples(n_i, a_i, u_i, n, replacement=True):
    """Expected number of effective samples of class i after n draws (paper §3.1)."""
    f = effective_samples_with if replacement else effective_samples_without
    return f(n_i, a_i, u_i, n)


def total_effective_samples(counts, a, u, n, replacement=True):
    """S_n = sum_j E_{j,n}; classes on the last axis, so n may be an array of shape [T, 1]."""
    return effective_samples(counts, a, u, n, replacement).sum(-1)


def utilisation(counts, a, u, n, replacement=True):
    """R_{i,n} = E_{i,n} / (u_i n): effective samples per class draw (§3.1.1)."""
    counts, a, u = _arrays(counts, a, u)
    return effective_samples(counts, a, u, n, replacement) / (u * n)


def utilisation_ratio(counts, a, u, n, replacement=True):
    """Q_{i,j,n} = R_{i,n} / R_{j,n} as an m x m matrix; Q == 1 iff u ∝ a n (large n)."""
    R = utilisation(counts, a, u, n, replacement)
    return R[:, None] / R[None, :]


def _u_parts(n_j, a, n, exact):
    """Numerator and denominator of the §3.1.1 closed form; only the numerator can turn negative."""
    A = (a[:, None] / a[None, :]) ** (1.0 / (n - 1 if exact else n))
    off = 1 - np.eye(len(n_j))                 # the sums run over j != i
    num = 1 - (off * (1 - A) * n_j[None, :]).sum(1)
    den = 1 + (off * A * n_j[None, :] / n_j[:, None]).sum(1)
    return num, den


def optimal_u_with_replacement(counts, a, n, exact=False):
    """§3.1.1: u_i = [1 - sum_{j!=i} n_j (1 - A_ijn)] / [1 + sum_{j!=i} A_ijn n_j/n_i].

    A_ijn = (a_i/a_j)^{1/n} as printed; the stationarity condition really gives 1/(n-1) (`exact=True`).
    The closed form is the stationary point of the Lagrangian without the constraint u_i >= 0: for small n
    (roughly n < N/2 when the a_i differ) it gives negative frequencies. Then it raises ValueError naming
    the smallest valid n (`min_n_with_replacement`); it never returns a negative u_i.
    """
    n_j, a = np.asarray(counts, np.float64), np.asarray(a, np.float64)
    num, den = _u_parts(n_j, a, n, exact)
    if (num < 0).any():
        i = int(np.argmin(num))
        raise ValueError(f"optimal_u_with_replacement: n = {n} gives a negative frequency (u_{i} = {num[i] / den[i]:.3f}); "
                         f"the closed form (§3.1.1, no u_i >= 0 constraint) holds for n >= "
                         f"{min_n_with_replacement(n_j, a, exact)} with these counts and a")
    return num / den


def min_n_with_replacement(counts, a, exact=False):
    """Smallest n from which on every u_i of the §3.1.1 closed form is >= 0 (u -> n_i/N as n grows).

    u_i < 0 iff h_i(x) = sum_{j!=i} n_j (1 - (a_i/a_j)^x) > 1 at x = 1/n. h_i is concave with h_i(0) = 0, so
    once h_i(x) <= 1 with h_i'(x) >= 0 (or h_i'(0) <= 0), every smaller x (larger n) is valid too: double n
    until that holds for every class, then walk down to the last invalid n.
    """
    n_j, a = np.asarray(counts, np.float64), np.asarray(a, np.float64)
    off = 1 - np.eye(len(n_j))
    log_r = np.log(a[:, None] / a[None, :])
    x_of = lambda n: 1.0 / (n - 1 if exact else n)
    h = lambda x: (off * n_j * (1 - np.exp(x * log_r))).sum(1)
    dh = lambda x: -(off * n_j * log_r * np.exp(x * log_r)).sum(1)
    never = dh(0.0) <= 0                       # h_i <= 0 for all x: u_i >= 0 at every n
    n = 2
    while not ((h(x_of(n)) <= 1) & ((dh(x_of(n)) >= 0) | never)).all():
        n *= 2
    while n > 2 and (_u_parts(n_j, a, n - 1, exact)[0] >= 0).all():
        n -= 1
    return n


def optimal_u_without_replacement(counts, a, n):
    """§3.1.2: greedy fill, least redundant class (largest a_i) first; u_i = n_i/N once n >= N."""
    n_j, a = np.asarray(counts, np.float64), np.asarray(a, np.float64)
    if n >= n_j.sum():
        return n_j / n_j.sum()
    u, left = np.zeros_like(n_j), float(n)
    for i in np.argsort(-a, kind="stable"):
        take = min(n_j[i], left)
        u[i], left = take / n, left - take
    return u


def sampling_power(counts, x):
    """u_j(x) = n_j^x / sum_k n_k^x (App. A.1): x=1 original, x=0 balanced, x<0 towards reversed."""
    (n_j,) = _arrays(counts)
    w = n_j ** x
    return w / w.sum(-1, keepdims=True) if isinstance(w, np.ndarray) else w / w.sum(-1, keepdim=True)


def reversed_u(counts):
    """ū_i = u_i^{-1} / sum_j u_j^{-1} (Method 2's second loader; BBN's reversed sampler)."""
    return sampling_power(counts, -1.0)


def G(counts, a, x, n):
    """App. A.1 proof 1: G(x) = sum_j a_j n_j [1 - (1 - u_j(x)/n_j)^n] = S_n with u = u(x)."""
    return total_effective_samples(counts, a, sampling_power(counts, x), n, replacement=True)


def method1_total(counts, a, delta, n, p=(1 / 3, 1 / 3, 1 / 3)):
    """App. A.1 proof 1: J_n = p1 G(1) + p2 G(1+δt) + p3 G(1-δt)."""
    return p[0] * G(counts, a, 1.0, n) + p[1] * G(counts, a, 1 + delta, n) + p[2] * G(counts, a, 1 - delta, n)


def method2_utilisation(counts, a, delta, n=1.0):
    """App. A.1 proof 2, large n: R_i = x a_i n_i/(u_i n) + (1-x) a_i n_i/(ū_i n), x = 1 - δt.

    The paper mixes the two loaders' utilisations linearly (not R of the mixed distribution); n cancels in the KL.
    """
    counts, a = _arrays(counts, a)
    u, u_rev = sampling_power(counts, 1.0), reversed_u(counts)
    return (1 - delta) * a * counts / (u * n) + delta * a * counts / (u_rev * n)


def utilisation_kl(R):
    """KL(Q||P), Q uniform, P_i = R_i / sum_k R_k: 0 iff utilisation is balanced (App. A.1 proof 2)."""
    (R,) = _arrays(R)
    log = torch.log if isinstance(R, torch.Tensor) else np.log
    return -math.log(R.shape[-1]) - log(R).mean(-1) + log(R.sum(-1))


# ================================================================================================
# 2. The jitter factor schedule (paper §3.2.1, spec §2.1)
# ================================================================================================
XI_DEFAULT = {"jitter1": "uniform", "jitter2": "one", "jitter-noreplace": "symmetric"}  # random factor ξ


def draw_xi(xi, seed, epoch):
    """ξ of epoch `epoch`: 'uniform' U(0,1) (Method 1), 'one' (Method 2), 'symmetric' U(-0.5,0.5) (no replacement).
    A host draw from (seed, epoch) alone: no device sync, and a resumed run draws the same ξ."""
    if xi == "one":
        return 1.0
    r = float(np.random.default_rng([seed, epoch]).random())
    return r if xi == "uniform" else r - 0.5


def delta_t(epoch, e_total, *, alpha, beta, gamma=0.01, xi=1.0, delta_fixed=None, delta_fixed_from=None,
            floor="max", exponent_on="ratio"):
    """δt(e) = ξ α max((e/E_tot)^β, γ), with a stage override δt = delta_fixed from epoch delta_fixed_from."""
    if delta_fixed is not None and epoch >= (delta_fixed_from or 0):
        return float(delta_fixed)  # e.g. 0.5 in the single-expert stage 2 (§4.2)
    # reconstructed: β is an exponent on the ratio e/E_tot ("epoch/epoch_total" was a PDF fraction);
    # 'total' = e / E_tot^β is the other reading (it leaves δt ~ 0, see spec §2.1)
    ramp = (epoch / e_total) ** beta if exponent_on == "ratio" else epoch / e_total ** beta
    # reconstructed: max (γ is a floor, δt grows from αγ to α); 'min' would cap δt at αγ
    return xi * alpha * (max(ramp, gamma) if floor == "max" else min(ramp, gamma))


# reconstructed: presets of spec §4.2/§4.3; E_tot = total epochs, γ = 0.01 for the single-expert run,
# Method 1 with p = 1/3 each for RIDE, and δt = 0 in RIDE's stage 2 (DRW re-balances there).
SETTINGS = {
    "single": dict(kind="jitter2", epochs=500, alpha=1.0, beta=1.5, gamma=0.01, delta_fixed=0.5, delta_fixed_from=350),
    "ride": dict(kind="jitter1", epochs=200, alpha=0.05, beta=2.0, gamma=0.01, p=(1 / 3, 1 / 3, 1 / 3),
                 delta_fixed=0.0, delta_fixed_from=160),
}


# ================================================================================================
# 3. Samplers (paper §3.2.1, spec §2.2-2.5)
# ================================================================================================
class _Sampler:
    """Common epoch bookkeeping. Call set_epoch(e) before each epoch (next_batch advances on its own too)."""

    def __init__(self, kind, labels, num_classes, batch_size, epochs, gen, schedule, counts=None):
        self.kind, self.labels, self.device, self.gen = kind, labels, labels.device, gen
        self.C, self.B, self.N = num_classes, batch_size, len(labels)
        if counts is None:   # n_i on the host: one copy at init (pass counts to skip it)
            counts = torch.zeros(num_classes, dtype=torch.long, device=labels.device).index_add_(
                0, labels, torch.ones_like(labels)).cpu()
        self.counts = [int(c) for c in counts]                                    # n_i, host ints
        self.n = torch.as_tensor(counts, dtype=torch.float64)
        self.u = self.n / self.N                                                 # original u_i ∝ n_i
        self.iters_per_epoch = math.ceil(self.N / batch_size)  # reconstructed: ceil(N/B) for every kind
        self.epochs, self.schedule = epochs, schedule
        self.epoch, self.it, self.delta = None, 0, 0.0

    def set_epoch(self, e):
        """Recompute δt and the sub-loader frequencies; a no-op for the current epoch (resume keeps its place)."""
        if e == self.epoch:
            return
        self.epoch, self.it = e, 0
        xi = self.schedule.get("xi")
        if xi is not None:
            sched = {k: v for k, v in self.schedule.items() if k != "xi"}
            fixed = sched["delta_fixed"] is not None and e >= (sched["delta_fixed_from"] or 0)
            self.delta = delta_t(e, xi=1.0 if fixed else draw_xi(xi, self.gen.initial_seed(), e), **sched)
        self._build()

    def next_batch(self):
        if self.epoch is None:
            self.set_epoch(0)
        elif self.it >= self.iters_per_epoch:
            self.set_epoch(self.epoch + 1)
        self.it += 1
        return self._draw(self.it - 1)

    def state_dict(self):
        return dict(kind=self.kind, epoch=self.epoch, it=self.it, delta=self.delta, gen=self.gen.get_state())

    def load_state_dict(self, sd):
        assert sd["kind"] == self.kind, (sd["kind"], self.kind)
        self.gen.set_state(sd["gen"])
        self.epoch, self.it, self.delta = sd["epoch"], sd["it"], sd["delta"]


def _power(n, x):
    """u_i^x renormalised (= n_i^x / sum n_k^x); empty classes get 0."""
    w = torch.where(n > 0, n.clamp(min=1).pow(x), 0.0)
    return w / w.sum()


class WithReplacement(_Sampler):
    """Meta-loader of with-replacement sub-loaders u^(k), one picked per batch with prob p_k (§3.2.1)."""

    def __init__(self, *args, p=(1 / 3, 1 / 3, 1 / 3), **kw):
        super().__init__(*args, **kw)
        self.p = p

    def subloaders(self):
        """[K, C] class frequencies of the sub-loaders and their [K] selection probabilities."""
        u, d = self.u, self.delta
        pw = lambda x: _power(self.n, x)
        if self.kind == "instance":
            return u[None], [1.0]               # §2.2: u ∝ n, i.e. uniform over the dataset
        if self.kind == "balanced":
            return pw(0.0)[None], [1.0]
        if self.kind == "reversed":
            return pw(-1.0)[None], [1.0]
        if self.kind == "jitter1":              # Method 1: u, u^{1+δt}, u^{1-δt}
            return torch.stack([u, pw(1 + d), pw(1 - d)]), list(self.p)
        return torch.stack([u, pw(-1.0)]), [1 - d, d]  # Method 2: original w.p. 1-δt, reversed w.p. δt

    def class_probs(self):
        U, p = self.subloaders()
        return (torch.tensor(p, dtype=torch.float64)[:, None] * U).sum(0)

    def _build(self):
        U, p = self.subloaders()
        w = torch.where(self.n > 0, U / self.n.clamp(min=1), 0.0)  # §2.2: per-sample weight u_y / n_y
        self._W = w.float().to(self.device)[:, self.labels]         # [K, N]
        self._p = torch.tensor(p, dtype=torch.float32, device=self.device)

    def _draw(self, it):
        W = self._W[0]
        if len(self._W) > 1:  # pick the sub-loader on the device: index_select keeps it free of host syncs
            k = torch.multinomial(self._p, 1, generator=self.gen)
            W = self._W.index_select(0, k)[0]
        return torch.multinomial(W, self.B, replacement=True, generator=self.gen)

    def load_state_dict(self, sd):
        super().load_state_dict(sd)
        if self.epoch is not None:
            self._build()  # the frequencies are a function of δt


class Shuffle(_Sampler):
    """Plain DataLoader(shuffle=True): one randperm per epoch, last batch partial (LDAM/RIDE code)."""

    def class_probs(self):
        return self.u.clone()

    def _build(self):
        self._order = torch.randperm(self.N, generator=self.gen, device=self.device)

    def _draw(self, it):
        return self._order[it * self.B:(it + 1) * self.B]

    def state_dict(self):
        return dict(super().state_dict(), order=getattr(self, "_order", None))

    def load_state_dict(self, sd):
        super().load_state_dict(sd)
        self._order = None if sd["order"] is None else sd["order"].to(self.device)


class NoReplace(Shuffle):
    """§3.2.1 without replacement: per-class shuffled queues, quota_i from ũ ∝ u^{1+δt} per epoch."""

    def __init__(self, *args, quota_rounding="round", **kw):
        super().__init__(*args, **kw)
        self.quota_rounding = quota_rounding
        idx = torch.argsort(self.labels, stable=True)
        self._members = list(torch.split(idx, self.counts))               # indices of each class
        self._queues = [m[:0] for m in self._members]                      # filled lazily, when empty
        self._heads = [0] * self.C

    def u_tilde(self):
        return _power(self.n, 1 + self.delta)

    def quotas(self):
        """quota_i = round(ũ_i N) with the sum fixed to N (largest rounding residuals adjusted)."""
        n = np.asarray(self.counts, np.float64)        # on the host: the quotas are host numbers (no device read)
        w = np.where(n > 0, np.maximum(n, 1) ** (1 + self.delta), 0.0)
        target = w / w.sum() * self.N
        if self.quota_rounding == "multinomial":  # alternative: Multinomial(N, ũ) on the generator
            cls = torch.multinomial(self.u_tilde().float().to(self.device), self.N, True, generator=self.gen)
            return torch.bincount(cls, minlength=self.C).cpu().numpy()
        q = np.rint(target).astype(np.int64)  # reconstructed: round, then fix the sum (spec §7 #11)
        diff = self.N - int(q.sum())
        order = np.argsort(q - target, kind="stable")  # most rounded-down first
        q[order[:diff] if diff > 0 else order[len(order) + diff:]] += 1 if diff > 0 else -1
        return q

    def _pop(self, c, k):
        """Next k indices of class c; a queue is refilled with a fresh permutation only when empty."""
        out = []
        while k > 0:
            if self._heads[c] == len(self._queues[c]):
                perm = torch.randperm(len(self._members[c]), generator=self.gen, device=self.device)
                self._queues[c], self._heads[c] = self._members[c][perm], 0
            take = min(k, len(self._queues[c]) - self._heads[c])
            out.append(self._queues[c][self._heads[c]:self._heads[c] + take])
            self._heads[c] += take
            k -= take
        return out

    def class_probs(self):
        """This epoch's realised class distribution quota_i / N (ũ before the first epoch)."""
        q = getattr(self, "_quota", None)
        return self.u_tilde() if q is None else torch.as_tensor(q, dtype=torch.float64) / self.N

    def _build(self):
        self._quota = self.quotas()
        drawn = torch.cat([x for c in range(self.C) for x in self._pop(c, int(self._quota[c]))])
        # reconstructed: shuffle the epoch's indices before cutting batches (spec §7 #11)
        self._order = drawn[torch.randperm(len(drawn), generator=self.gen, device=self.device)]

    def state_dict(self):
        return dict(super().state_dict(), queues=[q.clone() for q in self._queues], heads=list(self._heads),
                    quota=getattr(self, "_quota", None))

    def load_state_dict(self, sd):
        super().load_state_dict(sd)
        self._queues, self._heads = [q.to(self.device) for q in sd["queues"]], list(sd["heads"])
        self._quota = sd["quota"]


KINDS = ("instance", "balanced", "reversed", "jitter1", "jitter2", "jitter-noreplace", "shuffle")


def make_sampler(kind, labels, num_classes, batch_size, epochs, *, alpha=None, beta=None, gamma=None,
                 p=None, delta_fixed=None, delta_fixed_from=None, gen, counts=None,
                 e_total=None, xi=None, floor="max", exponent_on="ratio", quota_rounding="round"):
    """Build a sampler of index batches on labels.device; `gen` must live on that device. counts: the class sizes
    n_i on the host if known (else one device -> host copy here). For a torch DataLoader wrap it in BatchSampler.

    alpha/beta/gamma/p left None take the RIDE CIFAR preset SETTINGS["ride"] (§4.3), the one source of these
    defaults. Reconstructed keywords (see README): e_total (None: total `epochs`), xi (None: per-kind ξ), floor,
    exponent_on, quota_rounding, p.
    """
    assert kind in KINDS, kind
    ride = SETTINGS["ride"]
    alpha, beta, gamma, p = (ride[k] if v is None else v for k, v in
                             (("alpha", alpha), ("beta", beta), ("gamma", gamma), ("p", p)))
    schedule = {}
    if kind in XI_DEFAULT:
        # reconstructed: E_tot = total epochs; γ = 0.01; p = 1/3 each (Method 1)
        schedule = dict(xi=xi or XI_DEFAULT[kind], e_total=e_total or epochs, alpha=alpha, beta=beta, gamma=gamma,
                        delta_fixed=delta_fixed, delta_fixed_from=delta_fixed_from, floor=floor,
                        exponent_on=exponent_on)
    args = (kind, labels, num_classes, batch_size, epochs, gen, schedule)
    if kind == "shuffle":
        return Shuffle(*args, counts=counts)
    if kind == "jitter-noreplace":
        return NoReplace(*args, quota_rounding=quota_rounding, counts=counts)
    return WithReplacement(*args, p=p, counts=counts)


class BatchSampler(torch.utils.data.Sampler):
    """Any sampler above as a torch DataLoader batch sampler (LDAM-DRW's and RIDE's loops build DataLoaders):

        sampler = jitter.BatchSampler(jitter.make_sampler("jitter1", labels, C, 128, epochs, gen=torch.Generator()))
        loader = DataLoader(train_set, batch_sampler=sampler, num_workers=4)
        for epoch in range(epochs):
            sampler.set_epoch(epoch)          # δt of this epoch (without it, each pass takes the next epoch)
            for x, y in loader: ...

    One pass = one epoch of len(self) batches: lists of dataset indices, the same batches as the wrapped sampler's
    next_batch() gives from the same generator state. state_dict(done=k) / load_state_dict resume mid-epoch: the
    epoch is re-drawn from its start state and its first k batches skipped (k: the batches your loop finished;
    default the batches yielded, which a prefetching DataLoader has taken ahead of the loop)."""

    def __init__(self, sampler):
        self.sampler, self.epoch = sampler, 0
        self._start, self._yielded, self._resume = None, 0, None

    def __len__(self):
        return self.sampler.iters_per_epoch

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        s, skip = self.sampler, 0
        if self._resume is not None:            # the interrupted epoch, re-drawn from its start
            (self.epoch, start, skip), self._resume = self._resume, None
            s.load_state_dict(start)
        else:
            if s.epoch == self.epoch and s.it >= len(self):   # no set_epoch since the last pass: the next epoch
                self.epoch += 1
            s.set_epoch(self.epoch)
        self._start, self._yielded = s.state_dict(), 0
        for i in range(len(self)):
            batch = s.next_batch()
            self._yielded = i + 1
            if i >= skip:
                yield batch.tolist()

    def state_dict(self, done=None):
        return dict(epoch=self.epoch, start=self._start, done=self._yielded if done is None else done)

    def load_state_dict(self, sd):
        self._resume = (sd["epoch"], sd["start"], sd["done"])


# ================================================================================================
# 4. Models: LDAM-DRW's CIFAR ResNet-32 (models/resnet_cifar.py) and group L2norm (§4.2, spec §3)
# ================================================================================================
def kaiming_init(m):
    """LDAM-DRW/RIDE `_weights_init`: Kaiming-normal weights for every Conv2d and Linear."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight)


class ShortcutA(nn.Module):
    """Option-A shortcut: stride-2 subsample, zero-pad (planes - in_planes)//2 channels on each side."""

    def __init__(self, in_planes, planes):
        super().__init__()
        self.pad = (planes - in_planes) // 2

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = ShortcutA(in_planes, planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


def make_stage(in_planes, planes, blocks=5, stride=1):
    """One ResNet-32 stage: `blocks` BasicBlocks, the first with the given stride."""
    return nn.Sequential(*[BasicBlock(in_planes if b == 0 else planes, planes, stride if b == 0 else 1)
                           for b in range(blocks)])


class NormedLinear(nn.Module):
    """Cosine classifier of LDAM-DRW/RIDE: normalize(x) @ normalize(W), W [in, out], no bias."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5))

    def forward(self, x):
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


class GroupL2Norm(nn.Module):
    """Split the feature into g chunks for each g in `groups`, L2-normalise each chunk, concatenate.

    reconstructed (spec §3): groups {1,2,4,8} on the 64-d feature, scale s = 1 -> 256-d ('multi');
    'single4' = one split into 4 groups (64-d); 'expand' = Linear(64, 256) then 4 groups of 64.
    """

    def __init__(self, dim=64, mode="multi", scale=1.0):
        super().__init__()
        self.groups = {"multi": (1, 2, 4, 8), "single4": (4,), "expand": (4,)}[mode]
        self.expand = nn.Linear(dim, 4 * dim, bias=False) if mode == "expand" else None
        self.scale = scale
        self.out_dim = 4 * dim if mode in ("multi", "expand") else dim

    def forward(self, f):
        if self.expand is not None:
            f = self.expand(f)
        # unit norm per group: the net cannot lower the loss by inflating feature norms (§4.2)
        return torch.cat([self.scale * F.normalize(f.view(len(f), g, -1), dim=2).flatten(1) for g in self.groups], 1)


class ResNet32(nn.Module):
    """3 stages x 5 BasicBlocks at 16/32/64 channels, global average pool, classifier. Returns logits [B, C]."""

    def __init__(self, num_classes, group_l2norm=False, norm_linear=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1, self.layer2, self.layer3 = make_stage(16, 16), make_stage(16, 32, stride=2), make_stage(32, 64, stride=2)
        mode = "multi" if group_l2norm is True else group_l2norm
        self.gl2n = GroupL2Norm(64, mode) if mode else nn.Identity()
        d = self.gl2n.out_dim if mode else 64
        self.linear = NormedLinear(d, num_classes) if norm_linear else nn.Linear(d, num_classes)
        self.apply(kaiming_init)

    def features(self, x):
        out = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return out.mean((2, 3))  # global average pool -> [B, 64]

    def forward(self, x):
        return self.linear(self.gl2n(self.features(x)))


def resnet32(num_classes, group_l2norm=False, norm_linear=False):
    """LDAM-DRW ResNet-32 (464,154 parameters for C=10, plain Linear). norm_linear: cosine logits (LDAM)."""
    return ResNet32(num_classes, group_l2norm=group_l2norm, norm_linear=norm_linear)
