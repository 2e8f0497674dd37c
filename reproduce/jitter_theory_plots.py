"""Theory figure for the jitter-sampling paper, computed from jitter.py alone (CPU, a few seconds).

Panels: (a) E_{i,n} with vs without replacement, head and tail class of CIFAR-100-LT; (b) S_n against the
exponent x of u ∝ n^x; (c) the utilisation KL(Q||P) of Method 2 against δt (App. A.1 proof 2); (d) the δt
schedules of Method 1 / Method 2 / no replacement in the single-expert and RIDE settings.
a_i is not observable; as in spec §1.5 we take a_i = 0.9 sqrt(n_min / n_i) (a ∝ n^{-1/2}, App. 4's trend).
"""
import argparse
import pathlib
import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import jitter as J  # noqa: E402


def lt_counts(n_max, C, imb=100):
    """CIFAR-LT's per-class counts, as data.py builds them (one formula, data.lt_counts)."""
    return np.array(data.lt_counts(n_max, C, imb), dtype=np.float64)


def redundancy(n):
    return 0.9 * np.sqrt(n.min() / n)  # assumed a_i (see module docstring)


def panel_effective(ax, n_j, a):
    N, u = n_j.sum(), n_j / n_j.sum()
    draws = np.linspace(0, 3 * N, 300)
    for i, name in ((0, "head"), (len(n_j) - 1, "tail")):
        for rep, ls in ((True, "-"), (False, "--")):
            E = J.effective_samples(n_j[i], a[i], u[i], draws, replacement=rep)
            ax.plot(draws / N, E, ls, label=f"{name} (n={int(n_j[i])}), {'with' if rep else 'without'} repl.")
    ax.set(yscale="log", xlabel="epochs n / N", ylabel="E_{i,n}", title="(a) effective samples, u ∝ n")
    ax.legend(fontsize=7)


def panel_total(ax, n_j, a):
    N, xs = n_j.sum(), np.linspace(-1, 2, 121)
    for mult, c in ((0.5, "C0"), (1, "C1"), (3, "C2")):
        for rep, ls in ((True, "-"), (False, "--")):
            S = [J.total_effective_samples(n_j, a, J.sampling_power(n_j, x), mult * N, rep) for x in xs]
            ax.plot(xs, np.array(S) / (a * n_j).sum(), ls, color=c,
                    label=f"n = {mult:g}N, {'with' if rep else 'without'}")
    ax.axvline(1, color="k", lw=0.5)
    ax.set(xlabel="exponent x of u ∝ n^x", ylabel="S_n / Σ a n", title="(b) total effective samples")
    ax.legend(fontsize=7)


def panel_kl(ax):
    deltas = np.linspace(0, 1, 201)
    for name, n_j in (("CIFAR-100-LT", lt_counts(500, 100)), ("CIFAR-10-LT", lt_counts(5000, 10))):
        kl = [J.utilisation_kl(J.method2_utilisation(n_j, redundancy(n_j), d)) for d in deltas]
        ax.plot(deltas, kl, label=name)
    ax.axvline(0.5, color="k", lw=0.5, ls=":")
    ax.set(xlabel="δt (prob. of the reversed loader)", ylabel="KL(Q || P)", title="(c) Method 2 utilisation KL")
    ax.legend(fontsize=7)


def schedule(kind, setting, seed=0):
    """δt per epoch for one sampler kind under a SETTINGS preset (ξ drawn like the sampler does)."""
    st = dict(J.SETTINGS[setting])
    E = st.pop("epochs")
    st = {k: st[k] for k in ("alpha", "beta", "gamma", "delta_fixed", "delta_fixed_from")}
    out = []
    for e in range(E):
        fixed = e >= st["delta_fixed_from"]
        out.append(J.delta_t(e, E, xi=1.0 if fixed else J.draw_xi(J.XI_DEFAULT[kind], seed, e), **st))
    return np.array(out)


def panel_schedule(ax):
    """δt / α against training progress e / E_tot, so both settings share one axis."""
    runs = (("jitter2", "single", "-", "Method 2, single expert (paper)"),
            ("jitter2", "ride", "--", "Method 2, RIDE (ablation)"),
            ("jitter1", "ride", ".", "Method 1, RIDE (default, ξ~U(0,1))"),
            ("jitter-noreplace", "ride", ".", "no replacement, RIDE (ξ~U(-.5,.5))"))
    for kind, setting, style, label in runs:
        d = schedule(kind, setting)
        t = np.arange(len(d)) / len(d)
        ax.plot(t, d / J.SETTINGS[setting]["alpha"], style, ms=2.5, lw=1, label=label)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="e / E_tot (single: 500 epochs, RIDE: 200)", ylabel="δt / α",
           title="(d) δt = ξ α max((e/E_tot)^β, γ); stage override at 350 / 160")
    ax.legend(fontsize=7, loc="upper left")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/jitter_fig_theory.png")
    args = ap.parse_args()
    n_j = lt_counts(500, 100)
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    panel_effective(axes[0, 0], n_j, redundancy(n_j))
    panel_total(axes[0, 1], n_j, redundancy(n_j))
    panel_kl(axes[1, 0])
    panel_schedule(axes[1, 1])
    fig.tight_layout()
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
