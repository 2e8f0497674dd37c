"""Run summaries -> markdown tables beside the papers' numbers, and the figures.

    python report.py <table> [--runs runs] [--out results]      e.g. bem_table1, jitter_table3
    python report.py fig1 [--runs runs] [--out results]           BEM Fig. 1 (a)-(d)
    python report.py fig_cammix [--run RUN_DIR] [--out results]   CAM / CamMix vs SaliencyMix on test images
    python report.py demo --runs runs/demo [--out results]        the `make demo` table and per-class PNG
    python report.py sampler TABLE|RUN_DIR... [--runs] [--out]    jitter: δt and tail/head sampling ratio per epoch
    python report.py dynamics --run RUN_DIR [--out results]       BEM's bank over training (bem_dynamics.png)
    python report.py eval RUN_DIR [--checkpoint last|prev] [--weights ema|raw] [--heads all|NAME]
                                                                  a run's checkpoint on its test set -> RUN_DIR/eval/
    python report.py curves RUN_DIR [RUN_DIR ...] [--out PNG]     accuracy, losses, mask rate, lr over steps

Run-dir convention (written by reproduce/common.sh):
    <runs>/<table>/<row>/<setting>/seed<k>/{args.json, summary.json, metrics.jsonl, checkpoint.pt}
    <runs>/<table>/plan.tsv  row<TAB>setting<TAB>dir: every planned cell, also those whose run dir belongs to
                             another table (dir is relative to <runs>, without seed<k>)
Row and setting are directory names and the `row`/`setting` keys of reproduce/paper_numbers.csv.
Only runs whose summary.json says "finished": true count.

The file reads in four parts (search for "PART n"):
    PART 1  tables beside the papers: finished runs -> one record each -> ours | paper | Δ cells, and the demo table
    PART 2  figures from what runs recorded: BEM Fig. 1, the bank's dynamics, the jitter sampler, curves
    PART 3  a checkpoint reloaded: eval (train.py's own evaluation loop, per class / group / confusion), fig_cammix
    PART 4  the CLI: one subcommand per table or figure, every bad input one line and exit 2
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

PAPER_CSV = Path(__file__).resolve().parent / 'reproduce' / 'paper_numbers.csv'
BEM_STAT = ('EMA model, reported head (balanced head for ACR, ABC head for ABC), mean of the last 20 evaluations '
            '(summary.json `mean_last20`), top-1 % on the test set')
JITTER_STAT = ("best evaluation (summary.json `best`, mean per-class accuracy %): RIDE's public code keeps the best "
               "epoch with test = validation, and the paper's * rows are that code's numbers (jitter.md §6.1); the "
               "paper's own J-sampling + RIDE number is stated relative to one (+0.6), so it is compared the same way; "
               "`last` = the final model, beside it; many / medium / few = RIDE's groups (>100, 20-100, <20 training "
               'images) of the final model; all columns are means over seeds')
# the statistic each table compares, the one its sources reported (the header names it)
TABLE_STAT = {'bem': 'mean_last20', 'jitter': 'best'}
STD_NOTE = ('± = population std over seeds (ddof = 0, numpy\'s default, as the LTSSL code bases compute it); '
            'n = finished seeds. Δ = ours − paper. "not run": no finished run yet; "–": no number.')
TAG_NOTE = ('tag = where the paper number comes from: `stated` = printed in the text of the paper reproduced; '
            '`quoted:<src>` = printed by <src>, another paper or repository (its own run or a copy), because the '
            'reproduced paper\'s cell is lost or is a baseline; `inferred` = the number is printed but which cell it '
            'belongs to is our reading, or it is derived from a stated relation; `unverified` = not found in any '
            'stored source. The csv\'s `source` column says which table and why.')
PROTOCOL_NOTE = ('protocol = how the paper number was made (csv `protocol`, read off its source): `ACR` (first-k '
                 'split, μ = 1, cosine lr, mean of the last 20), `DASO` (disjoint split, μ = 2, constant lr, median of '
                 'the last 20; DASO\'s and SEVAL\'s runs), `CoSSL` (Adam 0.002), `USB` (SC-SSL\'s re-runs), '
                 '`RIDE-code` (RIDE\'s public code, best epoch), `LDAM-code`, `paper` (the reproduced paper\'s own '
                 'number), `unknown`. Ours: summary.json `protocol` (runio.protocol: ACR for the ACR settings; '
                 'RIDE-code for RIDE\'s loss from epoch 0; paper for the jitter paper\'s CE stage 1 and single-expert '
                 'recipe). Δ is printed only where the dataset, the schedule (csv `schedule`), the protocol (`paper` '
                 'takes any named one) and the WRN width (`?` = not stated; `W?` = presumed, labelled) all match, '
                 'else "no Δ: <why>"; a SMOKE run never gets one. The count is below the table.')
TABLES = {
    'bem_table1': 'BEM Table 1 (inferred layout): consistent setting, CIFAR-10-LT / CIFAR-100-LT',
    'bem_table2': 'BEM Table 2 (inferred layout): uniform / reversed CIFAR-10-LT and STL-10-LT',
    'bem_table3': 'BEM Table 3: ImageNet-127 at 32 and 64 px (ResNet-50)',
    'bem_table4': 'BEM ablation (inferred): parts added one at a time on FixMatch+ACR, CIFAR-10-LT',
    'bem_table5': 'BEM ablation (inferred): mixing method, in-batch vs mix bank, FixMatch+ACR, CIFAR-10-LT',
    'jitter_table1': 'Jitter Table 1: CIFAR-100-LT, imbalance 100',
    'jitter_table2': 'Jitter Table 2: CIFAR-10-LT, imbalance 100',
    'jitter_table3': 'Jitter Table 3: sampling with vs without replacement (RIDE 4 experts, CIFAR-100-LT)',
    'jitter_table4': 'Jitter Table 4: jitter vs none, CIFAR-100-LT and ImageNet-LT',
    'jitter_table5': 'Jitter Table 5: normal (200 epochs) vs long (400 epochs) training',
}
FIGURES = {'fig1': 'bem_fig1', 'bem_fig1': 'bem_fig1', 'fig_cammix': 'bem_fig_cammix', 'bem_fig_cammix': 'bem_fig_cammix'}
KEYS = ('mean_last20', 'median_last20', 'last', 'best', 'many', 'medium', 'few')
MADE = ('protocol', 'dataset', 'schedule')
# dataset of a paper cell from its setting key: c10-..., c100-..., stl10-..., in127-32 / in127-64, imagenet-lt
SETTING_DATASET = {'c10': 'cifar10', 'c100': 'cifar100', 'stl10': 'stl10', 'in127': 'imagenet127',
                   'imagenet': 'imagenet_lt'}
FIG1_ROW, FIG1_GAIN = 'fixmatch+acr+bem', 'c10-consistent-gain'
FRAMEWORKS = ('fixmatch', 'fixmatch+la', 'fixmatch+abc', 'fixmatch+acr')


def die(msg):
    print(f'report.py: {msg}', file=sys.stderr)
    sys.exit(2)


class _Parser(argparse.ArgumentParser):
    def error(self, message):       # one line, exit 2 (argparse's default prints the whole usage block)
        die(f'{message}; see python {self.prog} --help')


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# ################################################################################################
# PART 1. Tables beside the papers: run summaries -> markdown, ours | paper | Δ (bem_table*, jitter_table*, demo)
# ################################################################################################

# ================================================================================================
# Runs -> one record per finished run
# ================================================================================================

def plan_cells(runs, table):
    """[(row, setting, dir)] in plan order: plan.tsv first, then run dirs found under <runs>/<table>."""
    cells, plan = [], runs / table / 'plan.tsv'
    if plan.exists():
        cells += [tuple(line.split('\t')[:3]) for line in plan.read_text().splitlines() if line.count('\t') >= 2]
    for s in sorted((runs / table).glob('*/*/seed*/summary.json')):
        row, setting = s.parts[-4], s.parts[-3]
        cells.append((row, setting, f'{table}/{row}/{setting}'))
    seen = set()
    return [c for c in cells if c[:2] not in seen and not seen.add(c[:2])]


def run_width(args):
    """WRN width of a run from its args.json (train.py writes the resolved --model and --width); None if not a WRN
    or not recorded."""
    args = args or {}
    return args.get('width') if args.get('model', 'wrn') == 'wrn' else None


def run_protocol(summary, args):
    """summary.json's `protocol` entry (name, dataset, schedule); a run written before it existed gets it from its
    args.json through the same function (runio.protocol, imported only then: it needs torch)."""
    if isinstance(summary.get('protocol'), dict):
        return summary['protocol']
    if not args:
        return {}
    import runio
    return runio.protocol(args)


def load_runs(runs, cells):
    """DataFrame: row, setting, seed, dir, WRN width, protocol (name, dataset, schedule) and the summary's numbers
    of every finished run of `cells`."""
    recs = []
    for row, setting, d in cells:
        for path in sorted((runs / d).glob('seed*/summary.json')):
            s = read_json(path)
            if not isinstance(s, dict):       # torn (a full disk, a copy cut short): named, not silently n - 1
                die(f'{path} is unreadable (not a JSON summary); delete it and rerun that seed\'s train.py command '
                    f'with --resume to rewrite it')
            if s.get('finished'):
                args = read_json(path.parent / 'args.json')
                made = run_protocol(s, args)
                recs.append({'row': row, 'setting': setting, 'seed': path.parent.name, 'dir': path.parent,
                             'width': run_width(args), 'protocol': made.get('name'), 'dataset': made.get('dataset'),
                             'schedule': made.get('schedule'), **{k: s.get(k) for k in KEYS}})
    df = pd.DataFrame(recs, columns=['row', 'setting', 'seed', 'dir', 'width', *MADE, *KEYS])
    df[list(KEYS)] = df[list(KEYS)].apply(pd.to_numeric, errors='coerce')
    return df


def ordered(cells):
    """Rows in order of first appearance, and within a row the settings in order of first appearance."""
    rows = list(dict.fromkeys(c[0] for c in cells))
    sets = list(dict.fromkeys(c[1] for c in cells))
    return sorted(cells, key=lambda c: (rows.index(c[0]), sets.index(c[1])))


def load_paper(path, table):
    # strings keep the paper's printed precision; width is '', '2', '8', '2?', '8?' or '?' (presumed / not stated)
    p = pd.read_csv(path, dtype={'value': str, 'std': str, 'width': str, 'tag': str, 'protocol': str, 'schedule': str},
                    keep_default_na=False, na_values={'std': ['']})
    return p[p.table == table].set_index(['row', 'setting'])


# ================================================================================================
# Cells of the markdown table
# ================================================================================================

def ours_cell(values):
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return 'not run', None
    return f'{v.mean():.2f} ± {v.std():.2f} (n={v.size})', float(v.mean())


def mean_cell(values):
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return f'{v.mean():.2f}' if v.size else '–'


def paper_cell(p):
    if p is None:
        return '–'
    return p['value'] + (f" ± {p['std']}" if pd.notna(p['std']) else '')


def width_check(paper_width, ours):
    """(why not, label) for the paper's WRN width ('' = not one WRN cell, 'W', 'W?' = presumed, '?' = not stated)
    against our runs' widths.

    A different width refuses Δ: the CIFAR-100 baselines of DASO/CCL are WRN-28-2, ACR's CVPR numbers (and
    presumably BEM's) WRN-28-8, e.g. 48.0 vs ~44.5 for ACR at gamma 20, N1 50 (baselines.md §3.0, ACR issue #5).
    So does an unstated paper width (SC-SSL's CIFAR-100 cells sit at WRN-28-2's level, bem.md §3.2) or an unrecorded
    one of ours; a presumed paper width gives Δ, labelled."""
    if not paper_width:
        return None, ''
    want, presumed = paper_width.rstrip('?'), paper_width.endswith('?')
    have = sorted({int(w) for w in ours if pd.notna(w)})
    if not want:
        return 'width: the paper\'s is not stated', ''
    if not have:
        return 'width: ours not recorded', ''
    if len(have) > 1:
        return f'width: seeds mix {have}', ''
    if int(want) != have[0]:
        return f'width: paper WRN-28-{want}{"?" if presumed else ""}, ours WRN-28-{have[0]}', ''
    return None, f'paper WRN-28-{want} presumed' if presumed else ''


def paper_dataset(setting):
    head, _, rest = setting.partition('-')
    ds = SETTING_DATASET.get(head)
    return f'{ds}-{rest.split("-")[0]}px' if ds == 'imagenet127' else ds


def same(what, paper, ours):
    """Why `what` of the paper cell and of our seeds differ, or None."""
    have = sorted({str(v) for v in ours if pd.notna(v)})
    if not have:
        return f'{what}: ours not recorded'
    if len(have) > 1:
        return f'{what}: seeds differ ({", ".join(have)})'
    if paper in (None, '', '?'):
        return f'{what}: the paper\'s is not stated'
    return None if have[0] == paper else f'{what}: paper {paper}, ours {have[0]}'


def same_protocol(paper, ours):
    """Like `same`; the reproduced paper's own number (`paper`) takes any named protocol of ours, `unknown` none."""
    have = sorted({str(v) for v in ours if pd.notna(v)})
    if paper == 'unknown':
        return 'protocol: the paper number\'s is unknown'
    if paper == 'paper' and len(have) == 1 and have[0] != 'unknown':
        return None
    return same('protocol', paper, ours)


def delta_reasons(p, setting, sub):
    """([why not], label) for a Δ of the runs `sub` against paper cell p: SMOKE runs alone, else every mismatch of
    protocol, dataset, schedule and WRN width."""
    if (sub.dataset == 'synthetic').any():
        return ['SMOKE run (synthetic data)'], ''
    why = [same_protocol(p['protocol'], sub.protocol), same('dataset', paper_dataset(setting), sub.dataset),
           same('schedule', p['schedule'], sub.schedule)]
    w, label = width_check(p['width'], sub.width)
    return [r for r in why + [w] if r], label


def delta_cell(mean, p, setting, sub):
    """(cell text, reasons withheld): ours − paper, or "no Δ: <why>"."""
    if p is None or mean is None:
        return '–', []
    why, label = delta_reasons(p, setting, sub)
    if why:
        return 'no Δ: ' + '; '.join(why), why
    return f"{mean - float(p['value']):+.2f}" + (f' ({label})' if label else ''), []


def table_stat(table):
    return TABLE_STAT[table.split('_')[0]]


def table_rows(table, cells, df, paper):
    """(head, body, printed, withheld): one line per planned cell; printed = Δs printed, withheld = the reasons of
    each Δ not printed."""
    jitter, stat = table.startswith('jitter'), table_stat(table)
    out, withheld, printed = [], [], 0
    for row, setting, _ in ordered(cells):
        sub = df[(df.row == row) & (df.setting == setting)]
        ours, mean = ours_cell(sub[stat])
        p = paper.loc[(row, setting)] if (row, setting) in paper.index else None
        extra = [mean_cell(sub[k]) for k in ('last', 'many', 'medium', 'few')] if jitter else []
        tag, made = ('–', '–') if p is None else (p['tag'], p['protocol'])
        delta, why = delta_cell(mean, p, setting, sub)
        withheld += [why] if why else []
        printed += delta != '–' and not why
        out.append([row, setting, ours, *extra, paper_cell(p), tag, made, delta])
    head = ['row', 'setting', f'ours: {stat} (mean ± std, n)']
    head += ['last', 'many', 'medium', 'few'] if jitter else []
    return head + ['paper', 'tag', 'protocol', 'Δ'], out, printed, withheld


def withheld_note(printed, withheld):
    """The footnote: how many Δs were printed, how many withheld and why (a cell counts under each of its reasons)."""
    kinds = pd.Series([w.split(':')[0] for why in withheld for w in why], dtype=str).value_counts()
    why = ', '.join(f'{k} {n}' for k, n in kinds.items())
    return (f'Δ printed: {printed}; withheld: {len(withheld)}' + (f' ({why}; a cell counts under each of its '
            'reasons)' if why else '') + '.')


def pairs_md(runs, table, df):
    """The compared pairs the script declares (runs/<table>/pairs.tsv): each differs in one flag; B − A of ours."""
    path, stat = runs / table / 'pairs.tsv', table_stat(table)
    if not path.exists():
        return []
    mean = lambda r, s: df[(df.row == r) & (df.setting == s)][stat].mean()  # noqa: E731
    body = []
    for line in path.read_text().splitlines():
        name, ra, sa, rb, sb, differs = line.split('\t')[:6]
        a, b = mean(ra, sa), mean(rb, sb)
        gap = '–' if np.isnan(a) or np.isnan(b) else f'{b - a:+.2f}'
        body.append([name, f'{ra} / {sa}', f'{rb} / {sb}', differs, mean_cell([a]), mean_cell([b]), gap])
    head = ['pair', 'A (row / setting)', 'B', 'differs in (A -> B)', f'A: {stat}', f'B: {stat}', 'B − A']
    return ['', '## Compared pairs (each pair of runs differs in one flag)', '',
            tabulate(body, head, tablefmt='github', disable_numparse=True)]


def table_md(table, runs, paper_csv):
    cells = plan_cells(runs, table)
    df, paper = load_runs(runs, cells), load_paper(paper_csv, table)
    head, body, printed, withheld = table_rows(table, cells, df, paper)
    stat = JITTER_STAT if table.startswith('jitter') else BEM_STAT
    md = [f'# {table}: {TABLES[table]}', '', f'Statistic compared (`{table_stat(table)}`): {stat}.', '', STD_NOTE,
          '', TAG_NOTE, '', PROTOCOL_NOTE,
          f'Paper numbers and their sources: reproduce/paper_numbers.csv. Runs: {runs}/.', '',
          tabulate(body, head, tablefmt='github', disable_numparse=True) if body else '(no runs planned or found)',
          '', withheld_note(printed, withheld)]
    md += pairs_md(runs, table, df)
    done = {c[:2] for c in cells}
    cited = [[r, s, paper_cell(p), p['tag'], p['protocol'], p['source']] for (r, s), p in paper.iterrows()
             if (r, s) not in done]
    if cited:
        md += ['', '## Cited rows (paper numbers only; not trained by this script)', '',
               tabulate(cited, ['row', 'setting', 'paper', 'tag', 'protocol', 'source'], tablefmt='github',
                        disable_numparse=True)]
    return '\n'.join(md) + '\n'


# ================================================================================================
# make demo: supervised vs FixMatch (+BEM) on Fashion-MNIST-LT
# ================================================================================================

# The demo's rows at the demo's length, 2 seeds (docs/results.md "Fashion-MNIST-LT on CPU", bash
# reproduce/fmnist_cpu.sh: its LTSSL part is the demo's recipe): top-1 % of the EMA model, mean ± std.
DEMO_MEASURED = {'supervised': '30.5 ± 3.7', 'fixmatch': '40.7 ± 1.9', 'fixmatch+bem': '43.6 ± 11.2'}
PAPER_STEPS = 250_000   # ACR's total_steps, the LTSSL tables' schedule (= flags.DEFAULTS['iters']; anchors.md §1.6)


def demo_note(dataset, steps):
    """The lines under the demo's table: what a number at this length is, what the same rows measured, how to
    run longer."""
    lines = [f'What these numbers are: top-1 after {steps:,} steps, {100 * steps / PAPER_STEPS:.2g} % of the papers\' '
             f'{PAPER_STEPS:,}-step schedule: far from converged, so they check that the pipeline learns and how the '
             f'rows order, not what the methods reach (the papers\' tables: bash reproduce/bem_table1.sh, on a GPU).']
    if dataset == 'fmnist' and steps == 250:
        ref = ', '.join(f'{k} {v} %' for k, v in DEMO_MEASURED.items())
        lines.append(f'The same rows, same length, 2 seeds (docs/results.md, bash reproduce/fmnist_cpu.sh): {ref}; '
                     f'the spread between seeds is as large as the gaps. Longer: ITERS=1500 EVAL=750 make demo '
                     f'(6x the time).')
    return '\n'.join(lines)


def demo(runs, out):
    """Table of the demo's runs (overall, head/tail halves, many/few) and a per-class accuracy PNG.
    Rows in run order: the order the run directories were created (args.json is written once, at the start)."""
    rows, curves = [], {}
    started = lambda p: ((p / 'args.json').stat().st_mtime if (p / 'args.json').exists() else 0, p.name)  # noqa: E731
    for run in sorted((p for p in runs.iterdir() if (p / 'summary.json').exists()), key=started):
        s, a = read_json(run / 'summary.json'), read_json(run / 'args.json')
        if not s or not s.get('finished'):
            continue
        name = run.name
        rows.append([name, a['dataset'], s['steps'], s['last'], s['mean_last20'], s['head_half'], s['tail_half'],
                     s['many'], s['few'], s['timing']['wall_time_s']])
        curves[name] = s['per_class']
    rows or die(f'no finished demo runs under {runs}')
    stat = read_json(runs / rows[0][0] / 'summary.json')['statistic']
    md = (f'# demo: long-tailed SSL on {rows[0][1]}-LT (gamma = 100, ACR split)\n\nStatistic: {stat}. '
          f'head/tail = first/second half of the classes; many/few = classes with >100 / <20 labeled images.\n\n')
    md += tabulate(rows, headers=['run', 'data', 'steps', 'last', 'mean_last20', 'head half', 'tail half',
                                  'many', 'few', 'wall s'], tablefmt='github', floatfmt='.2f')
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for k, (name, pc) in enumerate(curves.items()):
        ax.bar(np.arange(len(pc)) + (k - (len(curves) - 1) / 2) * 0.8 / len(curves), pc, 0.8 / len(curves), label=name)
    ax.set(xlabel='class (0 = head)', ylabel='test accuracy %', title='per-class accuracy (final EMA model)')
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / 'demo_per_class.png', dpi=120)
    note = demo_note(rows[0][1], rows[0][2])
    return md + f'\n\n{note}\n\nper-class accuracy: {out / "demo_per_class.png"}\n'


# ################################################################################################
# PART 2. Figures from what runs recorded (summary.json, metrics.jsonl): fig1, dynamics, sampler, curves
# ################################################################################################

# ================================================================================================
# BEM Fig. 1: (a)-(c) unlabeled quantity vs entropy per class, (d) BEM's gain per framework
# ================================================================================================

def pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def last_record(run_dir, *keys):
    """The last metrics.jsonl record that carries all `keys`, or None."""
    path, rec = Path(run_dir) / 'metrics.jsonl', None
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line) if line.strip() else {}
            rec = r if all(k in r for k in keys) else rec
    return rec


def true_unlabeled(args, num_classes):
    """Per-class size of the unlabeled set: M_k from the split formula (+ N_k: ACR's unlabeled set holds the labeled)."""
    try:
        from data import setting_counts
    except ImportError as e:
        die(f'fig1 needs data.setting_counts ({e})')
    n, m = setting_counts(args['n1'], args['m1'], args['imb_l'], args.get('imb_u'), args['setting'], num_classes)
    return np.add(m, n) if args.get('split', 'acr') == 'acr' else np.asarray(m)


def fig1_panel(ax, runs_df, kind):
    """Mean over seeds of the last u_counts / u_entropy of the FixMatch+ACR+BEM runs in setting `kind`."""
    recs, args = [], None
    for d in runs_df[runs_df.row == FIG1_ROW].dir:
        a, r = read_json(Path(d) / 'args.json'), last_record(d, 'u_counts', 'u_entropy')
        if a and r and a.get('setting') == kind and a.get('dataset') != 'stl10':
            recs.append(r)
            args = a
    ax.set_title(f'{kind}')
    if not recs:
        ax.text(0.5, 0.5, 'not run', ha='center', transform=ax.transAxes)
        ax.set_xticks([]), ax.set_yticks([])
        return
    pseudo = np.mean([r['u_counts'] for r in recs], axis=0)
    ent = np.mean([r['u_entropy'] for r in recs], axis=0)
    k = np.arange(len(pseudo))
    ax.bar(k - 0.2, true_unlabeled(args, len(pseudo)), 0.4, label='true unlabeled count', color='0.6')
    ax.bar(k + 0.2, pseudo, 0.4, label='pseudo-label count', color='tab:blue')
    ax.set_xlabel('class'), ax.set_ylabel('images')
    ax2 = ax.twinx()
    ax2.plot(k, ent, 'o-', color='tab:red', label='class-wise entropy')
    ax2.set_ylabel('entropy')
    (h1, l1), (h2, l2) = ax.get_legend_handles_labels(), ax2.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, fontsize=7, loc='upper center', framealpha=0.6)


def fig1_gains(df):
    """BEM's gain per framework: mean over consistent CIFAR-10 settings run with and without BEM."""
    out = {}
    for f in FRAMEWORKS:
        a, b = (df[df.row == r].groupby('setting').mean_last20.mean() for r in (f, f + '+bem'))
        common = [s for s in a.index.intersection(b.index) if s.startswith('c10-') and 'uniform' not in s
                  and 'reversed' not in s]
        out[f] = (float((b[common] - a[common]).mean()) if common else None, common)
    return out


def fig1(runs, out, paper_csv):
    plt, df = pyplot(), load_runs(runs, plan_cells(runs, 'bem_fig1'))
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for ax, kind, tag in zip(axes, ('consistent', 'uniform', 'reversed'), 'abc'):
        fig1_panel(ax, df, kind)
        ax.set_title(f'({tag}) {kind}: quantity vs entropy')
    paper, gains = load_paper(paper_csv, 'bem_fig1'), fig1_gains(df)
    pap = [float(paper.value.get((f, FIG1_GAIN), 'nan')) for f in FRAMEWORKS]
    ours = [np.nan if gains[f][0] is None else gains[f][0] for f in FRAMEWORKS]
    x = np.arange(len(FRAMEWORKS))
    axes[3].bar(x - 0.2, ours, 0.4, label='ours'), axes[3].bar(x + 0.2, pap, 0.4, label='paper (text)')
    axes[3].set_xticks(x, FRAMEWORKS, fontsize=8), axes[3].legend(), axes[3].axhline(0, color='k', lw=0.5)
    axes[3].set_title('(d) BEM gain, consistent CIFAR-10-LT'), axes[3].set_ylabel('accuracy gain (points)')
    fig.tight_layout()
    fig.savefig(out / 'bem_fig1.png', dpi=120)
    body = [[f, '–' if g is None else f'{g:+.2f}', '–' if np.isnan(p) else f'{p:g}', ', '.join(s) or 'not run']
            for (f, (g, s)), p in zip(gains.items(), pap)]
    return ('# bem_fig1: BEM Fig. 1 (d), gain of BEM per framework\n\nStatistic: difference of the seed means of '
            f'`mean_last20` ({BEM_STAT}), averaged over the settings listed. Paper: Fig. 1(d) text (absolute '
            'points or relative % is unclear). Figure: bem_fig1.png\n\n'
            + tabulate(body, ['framework', 'ours gain', 'paper gain', 'settings'], tablefmt='github', disable_numparse=True) + '\n')


# ================================================================================================
# BEM's bank over one run: the `bem` block of every evaluation record in metrics.jsonl
# ================================================================================================

DYN_PANELS = (('s_c', 'ESS: P(source class c)', None), ('r_c', 'ESM: P(partner from labeled queue)', None),
              ('w_c', 'ECB weight w_c', None), ('e', 'entropy e^x_c (solid), e^u_c (dashed)', None),
              ('fill', 'queue fill: labeled (solid), unlabeled (dashed)', None),
              ('mass', 'share of L_u mass since last record: target (solid), pasted (dashed)', None))


def dynamics_records(run):
    """(steps, {key: array [records, C]}) from the evaluation records that carry BEM's statistics."""
    path = Path(run) / 'metrics.jsonl'
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    recs = [r for r in recs if 'bem' in r and 'mass_source' in r['bem']]
    recs or die(f'{path} has no BEM dynamics records; run train.py --bem (or a --mix) first')
    return [r['step'] for r in recs], {k: np.array([r['bem'][k] for r in recs]) for k in recs[0]['bem']}


def dynamics(run, out):
    """bem_dynamics.png: per class (colour: head -> tail) s_c, r_c, w_c, e^x/e^u, queue fill and loss-mass share."""
    steps, b = dynamics_records(run)
    a = read_json(Path(run) / 'args.json') or {}
    K = a.get('bank_size') or max(1, int(b['fill_x'].max()), int(b['fill_u'].max()))
    C, plt = b['s_c'].shape[1], pyplot()
    colors = plt.cm.viridis(np.linspace(0, 0.9, C))
    target = b['mass_unmixed'] + b['mass_target']
    series = {'s_c': [(b['s_c'], '-')], 'r_c': [(b['r_c'], '-')], 'w_c': [(b['w_c'], '-')],
              'e': [(b['e_x'], '-'), (b['e_u'], '--')], 'fill': [(b['fill_x'] / K, '-'), (b['fill_u'] / K, '--')],
              'mass': [(target, '-'), (b['mass_source'], '--')]}
    fig, axes = plt.subplots(2, 3, figsize=(15, 7), sharex=True)
    for ax, (key, title, yscale) in zip(axes.flat, DYN_PANELS):
        for vals, ls in series[key]:
            for c in range(C):
                ax.plot(steps, vals[:, c], ls, color=colors[c], lw=1.2, label=f'class {c}' if ls == '-' else None)
        ax.set_title(title, fontsize=10)
        if yscale:
            ax.set_yscale(yscale)
    axes[0, 1].axhline(0.5, color='k', lw=0.5, ls=':')
    for ax in axes[1]:
        ax.set_xlabel('step')
    h, lab = axes[0, 0].get_legend_handles_labels()
    fig.legend(h, lab, loc='center right', fontsize=8, title='0 = head')
    name = f"{a.get('dataset', '?')} {a.get('alg', '?')}+BEM (ecb {a.get('ecb')}, scope {a.get('ecb_scope', 'all')})"
    fig.suptitle(f'BEM bank dynamics: {name}, {Path(run)}', fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.92, 0.97))
    fig.savefig(out / 'bem_dynamics.png', dpi=110)
    last = {k: v[-1] for k, v in b.items()}
    body = [[c, f"{last['s_c'][c]:.3f}", f"{last['r_c'][c]:.3f}", f"{last['w_c'][c]:.3f}", f"{last['e_x'][c]:.3f}",
             f"{last['e_u'][c]:.3f}", f"{last['fill_x'][c]:g}/{K}", f"{last['fill_u'][c]:g}/{K}",
             f"{target[-1][c]:.3f}", f"{last['mass_source'][c]:.3f}",
             next((str(s) for s, f in zip(steps, b['fill_u'][:, c]) if f >= K), '–')] for c in range(C)]
    return (f'# bem_dynamics: {run}\n\nLast record (step {steps[-1]}) of {len(steps)}; mass = share of the L_u loss '
            'mass since the previous record (target = unmixed + target label of mixed samples; pasted = source '
            'label). Figure: bem_dynamics.png\n\n'
            + tabulate(body, ['class', 's_c', 'r_c', 'w_c', 'e^x', 'e^u', 'fill x', 'fill u', 'mass target',
                              'mass pasted', 'u queue full at step'], tablefmt='github', disable_numparse=True) + '\n')


# ================================================================================================
# Jitter: the sampler beside the table -- δt and the realised tail/head sampling ratio per epoch
# ================================================================================================

def sampler_targets(runs, targets):
    """[(label, run dir)]: a jitter table name gives its planned cells (first seed with metrics); else run dirs."""
    out = []
    for t in targets:
        if t in TABLES:
            for row, setting, d in plan_cells(runs, t):
                seeds = sorted((runs / d).glob('seed*/metrics.jsonl'))
                if seeds:
                    out.append((f'{row}/{setting}', seeds[0].parent))
        elif (Path(t) / 'metrics.jsonl').exists():
            out.append((Path(t).name if Path(t).name[:4] != 'seed' else '/'.join(Path(t).parts[-3:-1]), Path(t)))
        else:
            die(f'{t}: neither a jitter table name nor a run dir with metrics.jsonl')
    return out


def head_tail(run):
    """Classes with the most and with the fewest training images (summary.json; LDAM order 0 / C-1 before)."""
    s = read_json(Path(run) / 'summary.json') or {}
    counts = s.get('class_counts')
    if not counts:
        return None, None, None
    c = np.asarray(counts)
    return np.flatnonzero(c == c.max()), np.flatnonzero(c == c.min()), c.min() / c.max()


def sampler_epochs(run):
    """DataFrame epoch, delta, head, tail, ratio: per epoch δt, the realised frequency of the head and the tail
    class (mean over tied classes) and freq(tail) / freq(head) (metrics.jsonl 'sampling')."""
    path, rows = Path(run) / 'metrics.jsonl', []
    head, tail, inst = head_tail(run)
    for line in path.read_text().splitlines():
        for e in (json.loads(line).get('sampling') or []) if line.strip() else []:
            f = np.asarray(e['freq'])
            h, t = (head, tail) if head is not None else ([0], [len(f) - 1])
            rows.append({'epoch': e['epoch'], 'delta': e['delta'], 'f_head': f[h].mean(), 'f_tail': f[t].mean(),
                         'ratio': f[t].mean() / max(f[h].mean(), 1e-12)})
    return pd.DataFrame(rows, columns=['epoch', 'delta', 'f_head', 'f_tail', 'ratio']), inst


def sampler_fig(runs, targets, out, name):
    """Two panels per run group: δt over epochs, and tail/head sampling ratio (log) with instance sampling dashed."""
    found = sampler_targets(runs, targets)
    if not found:
        return f'# {name}: sampler\n\n(no runs with metrics.jsonl yet)\n'
    plt, rows = pyplot(), []
    fig, (ax_d, ax_r) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, run in found:
        df, inst = sampler_epochs(run)
        args = read_json(Path(run) / 'args.json') or {}
        if df.empty:
            continue
        ax_d.plot(df.epoch, df.delta, label=label)
        ax_r.plot(df.epoch, df.ratio, lw=0.8, label=label)
        ratio = df.f_tail.sum() / max(df.f_head.sum(), 1e-12)     # over all epochs: a tail class has few draws per epoch
        x_inst = ratio / inst if inst else float('nan')
        rows.append([label, args.get('sampler', '?'), len(df), f'{df.delta.min():.4f} – {df.delta.max():.4f}',
                     f'{df.ratio.min():.4f} – {df.ratio.max():.4f}', f'{ratio:.4f}', f'{inst:.4f}' if inst else '?',
                     f'{x_inst:.3f}'])
    insts = {r[6] for r in rows if r[6] != '?'}
    for v in insts:
        ax_r.axhline(float(v), ls='--', c='k', lw=0.8)
    ax_d.set(xlabel='epoch', ylabel='δt', title='jitter factor δt per epoch')
    ax_r.set(xlabel='epoch', ylabel='freq(tail) / freq(head)', yscale='log',
             title='realised tail/head sampling ratio (dashed: n_tail / n_head)')
    ax_d.legend(fontsize=7)
    fig.tight_layout()
    png = out / f'{name}_sampler.png'
    fig.savefig(png, dpi=120)
    head = ['run', 'sampler', 'epochs', 'δt min – max', 'tail/head per epoch', 'tail/head (all epochs)', 'n_tail/n_head',
            '× instance']
    return '\n'.join([f'# {name}: the sampler per epoch', '', 'Realised per-class frequency = draws of the class / '
                      'all draws of the epoch (metrics.jsonl `sampling`, counted on the device); head / tail = the '
                      'classes with the most / fewest training images (mean over tied classes); "× instance" = tail/head over all '
                      'epochs / (n_tail/n_head) '
                      '(1 = instance sampling).', '', tabulate(rows, head, tablefmt='github', disable_numparse=True),
                      '', f'figure: {png}']) + '\n'


# ================================================================================================
# curves: metrics.jsonl of one or several runs over steps, one figure
# ================================================================================================

def read_records(run):
    path = Path(run) / 'metrics.jsonl'
    if not path.exists():
        die(f'{path} not found: {run} is not a run directory, or has not evaluated yet')
    try:
        recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except ValueError:
        die(f'{path} has a line that is not JSON; the file is damaged')
    return [r for r in recs if isinstance(r, dict) and 'step' in r]


def _mean(v):
    return float(np.mean(v)) if isinstance(v, list) and v else (v if isinstance(v, (int, float)) else None)


def _train_panel(key):
    if key.startswith('mask'):
        return 'mask rate'
    if key.startswith('tau'):
        return 'thresholds (ACR adaptive tau)'
    return 'loss parts (train mean since the last evaluation)'


def curve_series(recs):
    """{panel: {series: (steps, values)}} from one run's records; panels a run lacks are left out."""
    panels = {}

    def put(panel, name, step, v):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            s = panels.setdefault(panel, {}).setdefault(name, ([], []))
            s[0].append(step), s[1].append(v)
    for r in recs:
        st = r['step']
        for h, v in (r.get('acc') or {}).items():
            put('test accuracy % (per head)', h, st, v)
        for k, v in (r.get('train') or {}).items():
            put(_train_panel(k), k, st, v)
        put('learning rate', 'lr', st, r.get('lr'))
        bem = r.get('bem') if isinstance(r.get('bem'), dict) else {}
        for k in ('u_entropy', 'box_area', 'fallback_frac', 'e_u', 'd_u'):     # per-class lists: class mean
            if k in bem and k != 'd_u':
                put('BEM dynamics (class means)', k, st, _mean(bem[k]))
        if isinstance(bem.get('w_c'), list) and bem['w_c']:
            put('BEM dynamics (class means)', 'w_c tail/head', st, bem['w_c'][-1] / max(bem['w_c'][0], 1e-12))
        if 'delta' in r:
            put('sampler (jitter)', 'delta_t', st, r['delta'])
        for k, v in (r.get('sampler') or {}).items() if isinstance(r.get('sampler'), dict) else ():
            put('sampler (jitter)', k, st, _mean(v))
        if isinstance(r.get('class_probs'), list) and r['class_probs']:
            p = r['class_probs']
            put('sampler (jitter)', 'p(tail)/p(head)', st, p[-1] / max(p[0], 1e-12))
        if 'top1' in r:
            put('test accuracy % (per head)', 'top-1 (all test images)', st, r['top1'])
        for k, v in r.items():          # records other code adds later: numbers, or class means of lists
            if k in _DRAWN:
                continue
            if isinstance(v, dict):
                for kk, vv in v.items():
                    put(f'other records: {k}', kk, st, _mean(vv))
            else:
                put('other records', k, st, _mean(v))
    return panels


# record keys drawn above, or not worth a curve (per-class lists are in eval's per_class.csv)
_DRAWN = {'step', 'epoch', 'acc', 'per_class', 'top1', 'lr', 'train', 'bem', 'delta', 'sampler', 'class_probs',
          'u_counts', 'u_entropy', 'box_area'}


def run_labels(runs):
    """Short unique labels: the run directory's name, with its parents where names repeat."""
    for k in range(1, 6):
        labels = ['/'.join(Path(r).resolve().parts[-k:]) for r in runs]
        if len(set(labels)) == len(labels):
            return labels
    return [str(r) for r in runs]


def curves_figure(runs, path):
    data = {lab: curve_series(read_records(r)) for lab, r in zip(run_labels(runs), runs)}
    order = ['test accuracy % (per head)', 'loss parts (train mean since the last evaluation)', 'mask rate',
             'learning rate', 'thresholds (ACR adaptive tau)', 'BEM dynamics (class means)', 'sampler (jitter)']
    other = sorted({p for d in data.values() for p in d if p not in order})
    panels = [p for p in order + other if any(p in d for d in data.values())]
    if not panels:
        die(f'no evaluation records in {", ".join(map(str, runs))}/metrics.jsonl')
    plt = pyplot()
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 3.4 * rows), squeeze=False)
    styles = ['-', '--', ':', '-.']
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for ax, panel in zip(axes.flat, panels):
        for i, (lab, d) in enumerate(data.items()):
            for j, (name, (st, v)) in enumerate(sorted(d.get(panel, {}).items())):
                one = len(data) == 1          # one run: a colour per series; several: a colour per run
                ax.plot(st, v, '-' if one else styles[j % len(styles)], color=colours[(j if one else i) % len(colours)],
                        marker='.', ms=3, label=name if one else f'{lab}: {name}')
        ax.set(title=panel, xlabel='step')
        if panel == 'learning rate':
            ax.ticklabel_format(axis='y', style='sci', scilimits=(-3, 3))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis('off')
    fig.suptitle(' | '.join(data) if len(data) > 1 else next(iter(data)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return panels


def curves_main(argv):
    ap = _Parser(prog='report.py curves', description='training curves of one or several runs')
    ap.add_argument('runs', nargs='+', help='run directories (each holds metrics.jsonl)')
    ap.add_argument('--out', default=None, help='PNG path (default: RUN_DIR/curves.png for one run, '
                    'results/curves.png for several)')
    a = ap.parse_args(argv)
    out = Path(a.out) if a.out else (Path(a.runs[0]) / 'curves.png' if len(a.runs) == 1 else Path('results/curves.png'))
    out.parent.mkdir(parents=True, exist_ok=True)
    panels = curves_figure(a.runs, out)
    print(f'wrote {out}: {", ".join(panels)}')
    return 0


# ################################################################################################
# PART 3. A checkpoint, reloaded: eval (per class, groups, confusion), fig_cammix (CAM / CamMix boxes)
# ################################################################################################

# ================================================================================================
# eval: a run's checkpoint on its test set (USB eval.py / RIDE test.py): per class, per group, confusion
# ================================================================================================

_SHAPES, _COLOURS = ('square', 'disc', 'triangle', 'plus', 'bar'), ('red', 'blue')   # data.make_synthetic
CLASS_NAMES = {
    'cifar10': 'airplane automobile bird cat deer dog frog horse ship truck'.split(),
    'stl10': 'airplane bird car cat deer dog horse monkey ship truck'.split(),
    'fmnist': ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
               'Ankle boot'],
    'svhn': [str(d) for d in range(10)],
    'synthetic': [f'{_COLOURS[c // 5]} {_SHAPES[c % 5]}' for c in range(10)],
}


def class_names(args, C):
    """Names of the dataset's classes where it has them (CIFAR-100: its own meta file; a folder: its class folders,
    head to tail as data.py numbers them), else class numbers."""
    names = CLASS_NAMES.get(args.dataset)
    if args.dataset == 'folder':
        import data
        names = data.folder_layout(args.data_dir).classes      # rebuilding the task has just checked the folder
    elif args.dataset == 'cifar100':
        import pickle
        try:
            with open(Path(args.data_dir) / 'cifar-100-python' / 'meta', 'rb') as f:
                names = pickle.load(f, encoding='latin1')['fine_label_names']
        except Exception:  # noqa: BLE001  names are a nicety: fall back to numbers
            names = None
    return list(names) if names is not None and len(names) == C else [str(c) for c in range(C)]


def head_to_tail(counts):
    """Class order by training count, largest first (ties keep the class order)."""
    return np.argsort(-np.asarray(counts), kind='stable')


def normalised(cm, order):
    """Rows and columns in `order`, each row divided by its true-class total (a row without images stays 0)."""
    m = cm[np.ix_(order, order)].astype(float)
    return m / np.maximum(m.sum(1, keepdims=True), 1)


def run_args(run):
    """args.json on top of this train.py's defaults; an argument this version does not know ends the call."""
    import flags
    a = read_json(run / 'args.json')
    if not isinstance(a, dict):
        die(f'{run}/args.json is missing or unreadable: {run} is not a run directory of train.py')
    ns = flags.build_parser().parse_args([])
    unknown = sorted(set(a) - set(vars(ns)))
    if unknown or a.get('task') not in ('ltssl', 'lt'):
        commit = (read_json(run / 'env.json') or {}).get('git_commit') or 'unknown'
        die(f'{run} was written by another version of train.py (argument {(unknown or ["task"])[0]!r}); '
            f'evaluate it from that version (git commit {commit}, in env.json)')
    vars(ns).update(a)
    return ns


def load_weights(run, which, task, weights):
    """Load the checkpoint's raw or EMA weights into the task's model; returns (model, checkpoint step)."""
    import torch
    path = run / ('checkpoint.pt' if which == 'last' else 'checkpoint.prev.pt')
    if not path.exists():
        die(f'{path} not found: the run has written no {"" if which == "last" else "previous "}checkpoint yet '
            f'(one is written at each evaluation); train it further or use --checkpoint '
            f'{"prev" if which == "last" else "last"}')
    try:
        state = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:  # noqa: BLE001
        die(f'{path} is unreadable ({type(e).__name__}); try --checkpoint prev')
    key = 'ema' if weights == 'ema' else 'model'
    net = task.ema.model if weights == 'ema' else task.model
    try:
        sd = {k.removeprefix('module.').removeprefix('_orig_mod.'): v for k, v in state[key].items()}
        net.load_state_dict(sd)
        if hasattr(task, 'fw'):
            task.fw.load_state_dict(state['fw'])        # a framework's test-time logits may read its state
    except (KeyError, RuntimeError) as e:
        die(f'{path} does not fit the model args.json describes ({type(e).__name__}: '
            f'{str(e).splitlines()[0][:120]}); it was written by another version of train.py')
    return net, int(state.get('step', -1))


def build_task(args, device):
    """The run's task exactly as train.py builds it (same data, split and test set); DataError -> exit 2."""
    import data
    import train
    from runio import UsageError
    try:
        return train.make_task(args, device, lambda *a, **k: None)
    except (UsageError, data.DataError) as e:
        die(f'cannot rebuild the run\'s data: {e}')


def head_names(task):
    """{head name: index} and the head the run reports."""
    if hasattr(task, 'fw'):
        return dict(task.fw.eval_heads), task._eval_name()
    return {'model': 0}, 'model'


def eval_stats(cm, counts):
    """Top-1, mean per-class, RIDE's many/medium/few and the head/tail halves of one head, and its per-class %,
    from the head's confusion counts cm [C true, C predicted]."""
    import runio
    per_class = 100 * np.diag(cm) / np.maximum(cm.sum(1), 1)
    top1 = 100 * float(np.trace(cm) / cm.sum())
    g = runio.head_stats([top1], per_class, counts)
    out = {'top1': round(top1, 4), 'mean_per_class': round(float(per_class.mean()), 4)}
    out.update({k: g[k] for k in ('many', 'medium', 'few', 'head_half', 'tail_half')})
    return out, per_class


def confusion_png(cm, counts, names, path, title):
    plt = pyplot()
    order = head_to_tail(counts)
    m = normalised(cm, order)
    C = len(order)
    fig, ax = plt.subplots(figsize=(min(4 + 0.35 * C, 14), min(3.5 + 0.3 * C, 12)))
    im = ax.imshow(m, cmap='Blues', vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label='fraction of the true class')
    if C <= 40:
        labels = [f'{names[c]} ({counts[c]})' for c in order]
        ax.set_xticks(range(C), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(C), labels, fontsize=7)
        if C <= 12:
            for i in range(C):
                for j in range(C):
                    if m[i, j] >= 0.005:
                        ax.text(j, i, f'{m[i, j]:.2f}', ha='center', va='center', fontsize=6,
                                color='white' if m[i, j] > 0.5 else 'black')
    ax.set(xlabel='predicted class (head -> tail)', ylabel='true class (train count), head -> tail', title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _eval_parser():
    ap = _Parser(prog='report.py eval', description='evaluate a run\'s checkpoint on its test set')
    ap.add_argument('run', help='run directory (holds args.json and checkpoint.pt)')
    ap.add_argument('--checkpoint', default='last', choices=['last', 'prev'],
                    help='checkpoint.pt (last) or checkpoint.prev.pt (the one before)')
    ap.add_argument('--weights', default=None, choices=['ema', 'raw'],
                    help='ltssl: ema (the evaluated model, default) or raw; lt keeps raw weights only')
    ap.add_argument('--heads', default='all', help='all (default) or one head name (ABC: standard|abc, '
                    'ACR: standard|balanced); confusion.png shows the reported head, or the one named')
    ap.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    ap.add_argument('--data-dir', default=None, help='where the dataset is (default: the run\'s --data-dir)')
    return ap


def eval_main(argv):
    a = _eval_parser().parse_args(argv)
    import train
    from runio import UsageError, count_groups, write_json
    run = Path(a.run)
    args = run_args(run)
    args.data_dir = a.data_dir or args.data_dir
    weights = a.weights or ('ema' if args.task == 'ltssl' else 'raw')
    if args.task == 'lt' and weights == 'ema':
        die('--weights ema: --task lt runs keep no EMA model (the jitter paper evaluates the final model); '
            'use --weights raw')
    if not (run / ('checkpoint.pt' if a.checkpoint == 'last' else 'checkpoint.prev.pt')).exists():
        load_weights(run, a.checkpoint, None, weights)               # the one-line "not found" answer
    try:
        device = train.pick_device(a.device)
    except UsageError as e:
        die(str(e))
    task = build_task(args, device)
    net, step = load_weights(run, a.checkpoint, task, weights)
    heads, reported = head_names(task)
    chosen = list(heads) if a.heads == 'all' else [a.heads]
    if any(h not in heads for h in chosen):
        die(f'--heads {a.heads}: this {args.alg if args.task == "ltssl" else args.model} run has the heads '
            f'{", ".join(heads)}; use all or one of them')
    cms = task.confusion(net).round().long().cpu().numpy()       # [H, C, C]: train.py's own evaluation loop
    C, counts = task.C, np.asarray(task.counts)
    names = class_names(args, C)
    groups = {g: [names[c] for c in np.flatnonzero(m)] for g, m in count_groups(counts).items()}
    stats, per_class = {}, {}
    for h in chosen:
        stats[h], per_class[h] = eval_stats(cms[heads[h]], counts)
    shown = reported if reported in chosen else chosen[0]
    out = run / 'eval'
    out.mkdir(exist_ok=True)
    table = pd.DataFrame({'class': range(C), 'name': names, 'train_count': counts,
                          **{f'accuracy_{h}' if len(chosen) > 1 else 'accuracy': per_class[h].round(3) for h in chosen}})
    table.to_csv(out / 'per_class.csv', index=False)
    cm = cms[heads[shown]]
    confusion_png(cm, counts, names, out / 'confusion.png',
                  f'{run.name}: {shown} head, {weights} weights, step {step} (rows normalised)')
    summ = read_json(run / 'summary.json') or {}
    rec = {'run': str(run), 'checkpoint': a.checkpoint, 'step': step, 'weights': weights, 'device': str(device),
           'reported_head': reported, 'heads': stats, 'class_counts': counts.tolist(), 'class_names': names,
           'groups': groups, 'order_head_to_tail': head_to_tail(counts).tolist(), 'confusion_head': shown,
           'confusion_counts': cm.tolist(), 'summary_last': summ.get('last')}
    write_json(str(out / 'eval.json'), rec)
    cols = ['top1', 'mean_per_class', 'many', 'medium', 'few', 'head_half', 'tail_half']
    rows = [[h + (' (reported)' if h == reported else ''), *[stats[h][k] for k in cols]] for h in chosen]
    print(f'{run}: {args.task} {args.dataset} {args.alg if args.task == "ltssl" else args.model}, checkpoint '
          f'{a.checkpoint} (step {step}), {weights} weights, {int(cm.sum())} test images on {device}\n')
    print(tabulate(rows, ['head', 'top-1', 'mean per-class', 'many', 'medium', 'few', 'head half', 'tail half'],
                   tablefmt='github', floatfmt='.2f', missingval='–'))
    print('\nmany / medium / few: >100 / 20-100 / <20 training images (RIDE); head/tail half: the first/second '
          'half of the classes.')
    for g, members in groups.items():
        shown_names = ', '.join(members[:12]) + (f', ... ({len(members)} classes)' if len(members) > 12 else '')
        print(f'  {g}: {shown_names or "(none)"}')
    print(f'wrote {out}/per_class.csv, eval.json, confusion.png')
    return 0


# ================================================================================================
# CamMix visualisation from a checkpoint
# ================================================================================================

def load_model(run, args):
    """EMA weights of a WRN run (plain CAM needs the head to read the CAM feature map)."""
    import models
    import torch
    if args.get('model', 'wrn') != 'wrn':
        die(f'fig_cammix draws plain CAMs and needs a WRN run; {run} is {args.get("model")}')
    state = torch.load(run / 'checkpoint.pt', map_location='cpu', weights_only=False)['ema']
    state = {k.removeprefix('module.').removeprefix('_orig_mod.'): v for k, v in state.items()}
    model = models.wrn28(state['heads.0.weight'].shape[0], args.get('width', 2), 'heads.1.weight' in state)
    model.load_state_dict(state)
    return model.eval()


def cammix_images(run, n):
    """Sources x[:n] are pasted into targets x[n:2n]; boxes from CAM (CamMix) and from saliency (SaliencyMix)."""
    import torch
    import augment
    import bem
    import data
    args = read_json(run / 'args.json') or die(f'{run}/args.json is missing')
    model, ds = load_model(run, args), data.load_dataset(args['dataset'], args.get('data_dir', './datasets'),
                                                         args.get('img_size', 32), with_unlabeled=False)
    pick = np.linspace(0, len(ds.test_x) - 1, 2 * n).astype(int)   # spread over the (class-ordered) test set
    x = torch.as_tensor(ds.test_x[pick])
    src, tgt = x[:n], x[n:2 * n]
    with torch.no_grad():
        logits, fmap = model(augment.normalize(src, ds.mean, ds.std))
    summ = read_json(run / 'summary.json') or {}
    head = 0 if summ.get('eval_head', 'standard') == 'standard' else len(model.heads) - 1  # ACR: balanced, ABC: abc
    w = model.heads[head].weight[logits[head].argmax(1)].detach()    # CAM weights of the predicted class
    size, cam = x.shape[-1], bem.cam(fmap, w)
    box_c = bem.cam_boxes(cam, size, args.get('tau_c', 0.5))
    box_c = bem.fallback_box(box_c, size, size, torch.Generator().manual_seed(0))  # as in training: CutMix box
    lam = bem.paste(tgt, src, box_c)[1]
    box_s = bem.saliency_box(src, lam)  # SaliencyMix box of the same area as CamMix's
    return dict(src=src, tgt=tgt, cam=cam, box_c=box_c, box_s=box_s, mix_c=bem.paste(tgt, src, box_c)[0],
                mix_s=bem.paste(tgt, src, box_s)[0])


def fig_cammix(run, out, n=6):
    if not (run / 'checkpoint.pt').exists():
        die(f'{run}/checkpoint.pt not found; train the run first (reproduce/bem_fig_cammix.sh) or pass --run DIR')
    try:
        im = cammix_images(run, n)
    except ImportError as e:
        die(f'fig_cammix needs torch and the repo modules models, bem, data ({e})')
    except Exception as e:  # noqa: BLE001  one line, not a traceback: the run or a module does not fit
        die(f'fig_cammix could not use {run}: {type(e).__name__}: {e}')
    from matplotlib.patches import Rectangle
    plt = pyplot()
    size = im['src'].shape[-1]
    show = lambda t: t.permute(1, 2, 0).numpy()  # noqa: E731
    cols = ['source', 'CAM; box: CamMix red, SalMix blue', 'target', 'CamMix', 'SaliencyMix']
    fig, axes = plt.subplots(n, 5, figsize=(10, 2 * n), squeeze=False)
    for i in range(n):
        imgs = [im['src'][i], im['src'][i], im['tgt'][i], im['mix_c'][i], im['mix_s'][i]]
        for j, ax in enumerate(axes[i]):
            ax.imshow(show(imgs[j])), ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=7)
        axes[i, 1].imshow(im['cam'][i].float().numpy(), cmap='jet', alpha=0.5, extent=(0, size, size, 0))
        for box, color in ((im['box_c'][i], 'red'), (im['box_s'][i], 'blue')):
            x1, y1, x2, y2 = (int(v) for v in box)
            axes[i, 1].add_patch(Rectangle((x1 - .5, y1 - .5), x2 - x1, y2 - y1, fill=False, color=color, lw=1.5))
    fig.tight_layout()
    fig.savefig(out / 'bem_fig_cammix.png', dpi=120)
    return f'# bem_fig_cammix\n\nRun: {run}. Figure: bem_fig_cammix.png\n'


def cammix_run(runs, run):
    if run:
        return Path(run)
    cells = plan_cells(runs, 'bem_fig_cammix')
    cells or die(f'no {runs}/bem_fig_cammix/plan.tsv; run reproduce/bem_fig_cammix.sh or pass --run DIR')
    return runs / cells[0][2] / 'seed0'


# ################################################################################################
# PART 4. CLI: one subcommand per table or figure; bad input -> one line, exit 2
# ################################################################################################

SUBCOMMANDS = {'eval': eval_main, 'curves': curves_main}


def _emit(path, md):
    """Write a figure command's markdown beside its figure and print it."""
    write_text(path, md)
    print(md)


def write_text(path, text):
    """A results file written whole or not at all (Ctrl-C or a full disk mid-write leaves the previous one)."""
    tmp = path.with_name(f'.tmp-{path.name}')
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv=None):
    """The CLI; a file that cannot be written (a read-only run directory, --out below a file) ends in one line."""
    try:
        return _main(argv)
    except KeyboardInterrupt:           # Ctrl-C: one line; every results file is either the old one or the new one
        print('report.py: interrupted (Ctrl-C); run the command again', file=sys.stderr)
        return 130
    except OSError as e:
        die(f'cannot write {e.filename or "the output"} ({e.strerror}); check its permissions or choose another '
            f'--out')


def _main(argv):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    ap = _Parser(prog='report.py', description=__doc__.split('\n')[0])
    ap.add_argument('table', help=f'one of {", ".join([*TABLES, "fig1", "fig_cammix", "sampler"])}')
    ap.add_argument('targets', nargs='*', help='sampler: jitter table names and/or run dirs (seed<k>)')
    ap.add_argument('--runs', default='runs', help='runs root (reproduce/*.sh: runs, or runs/smoke)')
    ap.add_argument('--out', default='results', help='where <table>.md and figures go')
    ap.add_argument('--paper', default=str(PAPER_CSV), help='paper numbers CSV')
    ap.add_argument('--run', default=None, help='fig_cammix, dynamics: the run dir (seed<k>) to plot')
    ap.add_argument('--n', type=int, default=6, help='fig_cammix: number of images')
    a = ap.parse_args(argv)
    name = FIGURES.get(a.table, a.table)
    if name == 'sampler':
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        if not a.targets:
            die('sampler needs jitter table names or run dirs, e.g. python report.py sampler jitter_table1')
        tag = a.targets[0] if len(a.targets) == 1 and a.targets[0] in TABLES else 'runs'
        return _emit(out / f'{tag}_sampler.md', sampler_fig(Path(a.runs), a.targets, out, tag))
    if name == 'demo':
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        return _emit(out / 'demo.md', demo(Path(a.runs), out))
    if name == 'dynamics':
        a.run or die('dynamics needs --run RUN_DIR (a run with --bem or a --mix)')
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        return _emit(out / 'bem_dynamics.md', dynamics(Path(a.run), out))
    if name not in TABLES and name not in FIGURES.values():
        die(f'unknown table {a.table!r}; choose one of: {", ".join([*TABLES, "fig1", "fig_cammix"])}')
    runs, out = Path(a.runs), Path(a.out)
    if not runs.is_dir() and not (name == 'bem_fig_cammix' and a.run):
        die(f'--runs {runs} is not a directory; point it at the runs root (reproduce/*.sh: runs, or runs/smoke)')
    out.mkdir(parents=True, exist_ok=True)
    if name == 'bem_fig1':
        md = fig1(runs, out, a.paper)
    elif name == 'bem_fig_cammix':
        md = fig_cammix(cammix_run(runs, a.run), out, a.n)
    else:
        md = table_md(name, runs, a.paper)
    write_text(out / f'{name}.md', md)
    print(md)
    print(f'wrote {out / (name + ".md")}', file=sys.stderr)


if __name__ == '__main__':
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:              # `report.py ... | head`: quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(code)
