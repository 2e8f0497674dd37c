"""Run summaries -> markdown tables beside the papers' numbers, and the figures.

    python report.py <table> [--runs runs] [--out results]      e.g. bem_table1, jitter_table3
    python report.py fig1 [--runs runs] [--out results]           BEM Fig. 1 (a)-(d)
    python report.py fig_cammix [--run RUN_DIR] [--out results]   CAM / CamMix vs SaliencyMix on test images
    python report.py demo --runs runs/demo [--out results]        the `make demo` table and per-class PNG
    python report.py eval RUN_DIR [--checkpoint last|prev] [--weights ema|raw] [--heads all|NAME]
                                                                  a run's checkpoint on its test set -> RUN_DIR/eval/
    python report.py curves RUN_DIR [RUN_DIR ...] [--out PNG]     accuracy, losses, mask rate, lr over steps

Run-dir convention (written by reproduce/common.sh):
    <runs>/<table>/<row>/<setting>/seed<k>/{args.json, summary.json, metrics.jsonl, checkpoint.pt}
    <runs>/<table>/plan.tsv  row<TAB>setting<TAB>dir: every planned cell, also those whose run dir belongs to
                             another table (dir is relative to <runs>, without seed<k>)
Row and setting are directory names and the `row`/`setting` keys of reproduce/paper_numbers.csv.
Only runs whose summary.json says "finished": true count.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

PAPER_CSV = Path(__file__).resolve().parent / 'reproduce' / 'paper_numbers.csv'
BEM_STAT = ('EMA model, reported head (balanced head for ACR, ABC head for ABC), mean of the last 20 evaluations '
            '(summary.json `mean_last20`), top-1 % on the test set')
JITTER_STAT = ('mean per-class accuracy % of the final model (summary.json `last`); `best` = best evaluation (RIDE '
               "keeps the best epoch, with test = validation); many / medium / few = RIDE's groups (>100, 20-100, "
               '<20 training images) of the final model; all columns are means over seeds')
STD_NOTE = ('± = population std over seeds (ddof = 0, numpy\'s default, as the LTSSL code bases compute it); '
            'n = finished seeds. Δ = ours − paper. "not run": no finished run yet; "–": no number.')
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
KEYS = ('mean_last20', 'last', 'best', 'many', 'medium', 'few')
FIG1_ROW, FIG1_GAIN = 'fixmatch+acr+bem', 'c10-consistent-gain'
FRAMEWORKS = ('fixmatch', 'fixmatch+la', 'fixmatch+abc', 'fixmatch+acr')


def die(msg):
    print(f'report.py: {msg}', file=sys.stderr)
    sys.exit(2)


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


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


def load_runs(runs, cells):
    """DataFrame: row, setting, seed, dir and the summary's numbers of every finished run of `cells`."""
    recs = []
    for row, setting, d in cells:
        for path in sorted((runs / d).glob('seed*/summary.json')):
            s = read_json(path)
            if s and s.get('finished'):
                recs.append({'row': row, 'setting': setting, 'seed': path.parent.name, 'dir': path.parent,
                             **{k: s.get(k) for k in KEYS}})
    df = pd.DataFrame(recs, columns=['row', 'setting', 'seed', 'dir', *KEYS])
    df[list(KEYS)] = df[list(KEYS)].apply(pd.to_numeric, errors='coerce')
    return df


def ordered(cells):
    """Rows in order of first appearance, and within a row the settings in order of first appearance."""
    rows = list(dict.fromkeys(c[0] for c in cells))
    sets = list(dict.fromkeys(c[1] for c in cells))
    return sorted(cells, key=lambda c: (rows.index(c[0]), sets.index(c[1])))


def load_paper(path, table):
    p = pd.read_csv(path, dtype={'value': str, 'std': str})   # strings keep the paper's printed precision
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


def table_rows(table, cells, df, paper):
    jitter = table.startswith('jitter')
    stat = 'last' if jitter else 'mean_last20'
    out = []
    for row, setting, _ in ordered(cells):
        sub = df[(df.row == row) & (df.setting == setting)]
        ours, mean = ours_cell(sub[stat])
        p = paper.loc[(row, setting)] if (row, setting) in paper.index else None
        delta = f"{mean - float(p['value']):+.2f}" if p is not None and mean is not None else '–'
        extra = [mean_cell(sub[k]) for k in ('best', 'many', 'medium', 'few')] if jitter else []
        out.append([row, setting, ours, *extra, paper_cell(p), delta])
    head = ['row', 'setting', 'ours (mean ± std, n)']
    head += ['best', 'many', 'medium', 'few'] if jitter else []
    return head + ['paper', 'Δ'], out


def table_md(table, runs, paper_csv):
    cells = plan_cells(runs, table)
    df, paper = load_runs(runs, cells), load_paper(paper_csv, table)
    head, body = table_rows(table, cells, df, paper)
    stat = JITTER_STAT if table.startswith('jitter') else BEM_STAT
    md = [f'# {table}: {TABLES[table]}', '', f'Statistic: {stat}.', '', STD_NOTE,
          f'Paper numbers and their sources: reproduce/paper_numbers.csv. Runs: {runs}/.', '',
          tabulate(body, head, tablefmt='github', disable_numparse=True) if body else '(no runs planned or found)']
    done = {c[:2] for c in cells}
    cited = [[r, s, paper_cell(p), p['source']] for (r, s), p in paper.iterrows() if (r, s) not in done]
    if cited:
        md += ['', '## Cited rows (paper numbers only; not trained by this script)', '',
               tabulate(cited, ['row', 'setting', 'paper', 'source'], tablefmt='github', disable_numparse=True)]
    return '\n'.join(md) + '\n'


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


# ================================================================================================
# make demo: supervised vs FixMatch (+BEM) on Fashion-MNIST-LT
# ================================================================================================

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
    return md + f'\n\nper-class accuracy: {out / "demo_per_class.png"}\n'


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
    """Names of the dataset's classes where it has them (CIFAR-100: its own meta file), else class numbers."""
    names = CLASS_NAMES.get(args.dataset)
    if args.dataset == 'cifar100':
        import pickle
        try:
            with open(Path(args.data_dir) / 'cifar-100-python' / 'meta', 'rb') as f:
                names = pickle.load(f, encoding='latin1')['fine_label_names']
        except Exception:  # noqa: BLE001  names are a nicety: fall back to numbers
            names = None
    return list(names) if names is not None and len(names) == C else [str(c) for c in range(C)]


def confusion(y, pred, C):
    """counts[i, j] = test images of true class i predicted as j."""
    return np.bincount(np.asarray(y) * C + np.asarray(pred), minlength=C * C).reshape(C, C)


def head_to_tail(counts):
    """Class order by training count, largest first (ties keep the class order)."""
    return np.argsort(-np.asarray(counts), kind='stable')


def normalised(cm, order):
    """Rows and columns in `order`, each row divided by its true-class total (a row without images stays 0)."""
    m = cm[np.ix_(order, order)].astype(float)
    return m / np.maximum(m.sum(1, keepdims=True), 1)


def run_args(run):
    """args.json on top of this train.py's defaults; an argument this version does not know ends the call."""
    import train
    a = read_json(run / 'args.json')
    if not isinstance(a, dict):
        die(f'{run}/args.json is missing or unreadable: {run} is not a run directory of train.py')
    ns = train.build_parser().parse_args([])
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
    train._CHANNELS_LAST = device.type == 'cuda'
    try:
        return train.make_task(args, device, lambda *a, **k: None)
    except (UsageError, data.DataError) as e:
        die(f'cannot rebuild the run\'s data: {e}')


def predict(task, net, batch=1024):
    """argmax of every head on the run's test set: (pred [H, N], y [N]) as numpy."""
    import torch
    import train
    from augment import normalize
    if hasattr(task, 'fw'):
        head_fn = lambda out: task.fw.test_logits(out[0].float())              # noqa: E731  [H,B,C]
    else:
        head_fn = (lambda out: out[0][None]) if task.ride else (lambda out: out[None])  # noqa: E731
    test = task._test_set() if hasattr(task, '_test_set') else (task.test_x, task.test_y)   # LT / LTSSL
    if isinstance(test, tuple):
        x, y = test
        test = ((x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch))
    net.eval()
    preds, ys = [], []
    with torch.no_grad():
        for xb, yb in test:
            with train.autocast(xb.device):
                logits = head_fn(net(train.prep_input(normalize(xb, task.mean, task.std)))).float()
            preds.append(logits.argmax(-1).cpu())
            ys.append(yb.cpu())
    return torch.cat(preds, 1).numpy(), torch.cat(ys).numpy()


def head_names(task):
    """{head name: index} and the head the run reports."""
    if hasattr(task, 'fw'):
        return dict(task.fw.eval_heads), task._eval_name()
    return {'model': 0}, 'model'


def eval_stats(pred, y, counts, C):
    """Top-1, mean per-class, RIDE's many/medium/few and the head/tail halves of one head, and its per-class %."""
    import runio
    per_class = 100 * np.diag(confusion(y, pred, C)) / np.maximum(np.bincount(y, minlength=C), 1)
    top1 = 100 * float((pred == y).mean())
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


def eval_main(argv):
    ap = argparse.ArgumentParser(prog='report.py eval', description='evaluate a run\'s checkpoint on its test set')
    ap.add_argument('run', help='run directory (holds args.json and checkpoint.pt)')
    ap.add_argument('--checkpoint', default='last', choices=['last', 'prev'],
                    help='checkpoint.pt (last) or checkpoint.prev.pt (the one before)')
    ap.add_argument('--weights', default=None, choices=['ema', 'raw'],
                    help='ltssl: ema (the evaluated model, default) or raw; lt keeps raw weights only')
    ap.add_argument('--heads', default='all', help='all (default) or one head name (ABC: standard|abc, '
                    'ACR: standard|balanced); confusion.png shows the reported head, or the one named')
    ap.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    ap.add_argument('--data-dir', default=None, help='where the dataset is (default: the run\'s --data-dir)')
    a = ap.parse_args(argv)
    import train
    from runio import UsageError, write_json
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
    pred, y = predict(task, net)
    C, counts = task.C, np.asarray(task.counts)
    names = class_names(args, C)
    stats, per_class = {}, {}
    for h in chosen:
        stats[h], per_class[h] = eval_stats(pred[heads[h]], y, counts, C)
    shown = reported if reported in chosen else chosen[0]
    out = run / 'eval'
    out.mkdir(exist_ok=True)
    table = pd.DataFrame({'class': range(C), 'name': names, 'train_count': counts,
                          **{f'accuracy_{h}' if len(chosen) > 1 else 'accuracy': per_class[h].round(3) for h in chosen}})
    table.to_csv(out / 'per_class.csv', index=False)
    cm = confusion(y, pred[heads[shown]], C)
    confusion_png(cm, counts, names, out / 'confusion.png',
                  f'{run.name}: {shown} head, {weights} weights, step {step} (rows normalised)')
    summ = read_json(run / 'summary.json') or {}
    rec = {'run': str(run), 'checkpoint': a.checkpoint, 'step': step, 'weights': weights, 'device': str(device),
           'reported_head': reported, 'heads': stats, 'class_counts': counts.tolist(), 'class_names': names,
           'order_head_to_tail': head_to_tail(counts).tolist(), 'confusion_head': shown,
           'confusion_counts': cm.tolist(), 'summary_last': summ.get('last')}
    write_json(str(out / 'eval.json'), rec)
    cols = ['top1', 'mean_per_class', 'many', 'medium', 'few', 'head_half', 'tail_half']
    rows = [[h + (' (reported)' if h == reported else ''), *[stats[h][k] for k in cols]] for h in chosen]
    print(f'{run}: {args.task} {args.dataset} {args.alg if args.task == "ltssl" else args.model}, checkpoint '
          f'{a.checkpoint} (step {step}), {weights} weights, {len(y)} test images on {device}\n')
    print(tabulate(rows, ['head', 'top-1', 'mean per-class', 'many', 'medium', 'few', 'head half', 'tail half'],
                   tablefmt='github', floatfmt='.2f', missingval='–'))
    print('\nmany / medium / few: >100 / 20-100 / <20 training images (RIDE); head/tail half: the first/second '
          f'half of the classes.\nwrote {out}/per_class.csv, eval.json, confusion.png')
    return 0


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
    ap = argparse.ArgumentParser(prog='report.py curves', description='training curves of one or several runs')
    ap.add_argument('runs', nargs='+', help='run directories (each holds metrics.jsonl)')
    ap.add_argument('--out', default=None, help='PNG path (default: RUN_DIR/curves.png for one run, '
                    'results/curves.png for several)')
    a = ap.parse_args(argv)
    out = Path(a.out) if a.out else (Path(a.runs[0]) / 'curves.png' if len(a.runs) == 1 else Path('results/curves.png'))
    out.parent.mkdir(parents=True, exist_ok=True)
    panels = curves_figure(a.runs, out)
    print(f'wrote {out}: {", ".join(panels)}')
    return 0


SUBCOMMANDS = {'eval': eval_main, 'curves': curves_main}


# ================================================================================================
# CLI
# ================================================================================================

def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('table', help=f'one of {", ".join([*TABLES, "fig1", "fig_cammix"])}')
    ap.add_argument('--runs', default='runs', help='runs root (reproduce/*.sh: runs, or runs/smoke)')
    ap.add_argument('--out', default='results', help='where <table>.md and figures go')
    ap.add_argument('--paper', default=str(PAPER_CSV), help='paper numbers CSV')
    ap.add_argument('--run', default=None, help='fig_cammix: the run dir (seed<k>) to plot')
    ap.add_argument('--n', type=int, default=6, help='fig_cammix: number of images')
    a = ap.parse_args(argv)
    name = FIGURES.get(a.table, a.table)
    if name == 'demo':
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        md = demo(Path(a.runs), out)
        (out / 'demo.md').write_text(md)
        print(md)
        return
    if name not in TABLES and name not in FIGURES.values():
        die(f'unknown table {a.table!r}; choose one of: {", ".join([*TABLES, "fig1", "fig_cammix"])}')
    runs, out = Path(a.runs), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if name == 'bem_fig1':
        md = fig1(runs, out, a.paper)
    elif name == 'bem_fig_cammix':
        md = fig_cammix(cammix_run(runs, a.run), out, a.n)
    else:
        md = table_md(name, runs, a.paper)
    (out / f'{name}.md').write_text(md)
    print(md)
    print(f'wrote {out / (name + ".md")}', file=sys.stderr)


if __name__ == '__main__':
    main()
