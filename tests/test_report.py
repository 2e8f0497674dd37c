"""report.py, reproduce/*.sh and reproduce/paper_numbers.csv, without training anything (CPU, seconds).

Oracles: means/stds worked out by hand below; paper numbers copied by hand from spec baselines.md §3.1 and
jitter.md §5; run counts of the scripts from their table layouts (rows x settings x seeds).
"""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
REPRO = ROOT / 'reproduce'
OWNED = ['bem_table1', 'bem_table2', 'bem_table3', 'bem_table4', 'bem_table5', 'bem_fig1', 'bem_fig_cammix',
         'jitter_table1', 'jitter_table2', 'jitter_table3', 'jitter_table4', 'jitter_table5']


WRN2 = dict(model='wrn', width=2)   # args.json as train.py writes it: the resolved --model and --width
WRN8 = dict(model='wrn', width=8)
# summary.json `protocol` entries as train.py writes them for the scripts' full-length runs (ACR settings, 250k steps)
ACR10 = dict(name='ACR', dataset='cifar10', schedule='250000 steps')
ACR100 = dict(ACR10, dataset='cifar100')
RIDE_CODE = dict(name='RIDE-code', dataset='cifar100', schedule='200 epochs')


def fake_run(runs, rel, finished=True, args=None, metrics=None, protocol=None, **stats):
    d = runs / rel
    d.mkdir(parents=True)
    made = {'protocol': protocol} if protocol else {}
    (d / 'summary.json').write_text(json.dumps({'finished': finished, **made, **stats}, indent=1))
    (d / 'args.json').write_text(json.dumps(args or {}))
    if metrics:
        (d / 'metrics.jsonl').write_text(''.join(json.dumps(m) + '\n' for m in metrics))


def report(*argv):
    return subprocess.run([sys.executable, str(ROOT / 'report.py'), *map(str, argv)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def md_row(md, row, setting):
    """Cells of the markdown line for (row, setting)."""
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip('|').split('|')]
        if cells[:2] == [row, setting]:
            return cells
    raise AssertionError(f'no line for {row} / {setting} in:\n{md}')


# ------------------------------------------------------------------------------------------------
# report.py on hand-made runs
# ------------------------------------------------------------------------------------------------

def test_bem_table_mean_std_delta_not_run(tmp_path):
    """A DASO-protocol paper cell against ACR-protocol runs prints no Δ; an ACR-protocol cell prints it."""
    runs, out = tmp_path / 'runs', tmp_path / 'results'
    s = 'c10-g100-n500-m4000'
    for k, v in enumerate([70.0, 71.5, 73.0]):
        fake_run(runs, f'bem_table1/fixmatch/{s}/seed{k}', args=WRN2, protocol=ACR10, mean_last20=v, last=0.0)
        fake_run(runs, f'bem_table1/fixmatch+acr/{s}/seed{k}', args=WRN2, protocol=ACR10, mean_last20=v + 10)
    fake_run(runs, f'bem_table1/fixmatch/{s}/seed3', finished=False, mean_last20=10.0)  # killed: not counted
    (runs / 'bem_table1' / 'plan.tsv').write_text(
        f'fixmatch\t{s}\tbem_table1/fixmatch/{s}\n'
        f'fixmatch+la\t{s}\tbem_table1/fixmatch+la/{s}\n'
        f'fixmatch+la+bem\t{s}\tbem_table1/fixmatch+la+bem/{s}\n')
    r = report('bem_table1', '--runs', runs, '--out', out)
    assert r.returncode == 0, r.stderr
    md = (out / 'bem_table1.md').read_text()
    assert md in r.stdout
    # mean 71.5; population std sqrt((1.5^2 + 0 + 1.5^2) / 3) = sqrt(1.5) = 1.2247; paper 67.8 ± 1.13 is DASO's run
    # (median of the last 20, mu = 2, constant lr: baselines.md §3.0), ours the ACR protocol
    assert md_row(md, 'fixmatch', s) == ['fixmatch', s, '71.50 ± 1.22 (n=3)', '67.8 ± 1.13', 'quoted:DASO', 'DASO',
                                         'no Δ: protocol: paper DASO, ours ACR']
    # ACR's own row (CCL-P Table 2: 81.6 ± 0.19, ACR protocol): 81.5 - 81.6
    assert md_row(md, 'fixmatch+acr', s)[2:] == ['81.50 ± 1.22 (n=3)', '81.6 ± 0.19', 'quoted:CCL', 'ACR', '-0.10']
    assert md_row(md, 'fixmatch+la', s) == ['fixmatch+la', s, 'not run', '75.3 ± 2.45', 'quoted:DASO', 'DASO', '–']
    assert md_row(md, 'fixmatch+la+bem', s) == ['fixmatch+la+bem', s, 'not run', '–', '–', '–', '–']
    assert 'ours: mean_last20 (mean ± std, n)' in md and 'mean of the last 20 evaluations' in md and 'ddof = 0' in md
    assert 'Δ printed: 1; withheld: 1 (protocol 1;' in md
    assert 'Cited rows' in md and '| fixmatch+daso' in md          # paper-only rows listed apart, with their tag
    assert md_row(md, 'fixmatch+daso', s)[2:5] == ['76.0 ± 0.37', 'quoted:DASO', 'DASO']
    assert '`quoted:<src>`' in md and '`inferred`' in md             # the tags are explained above the table


def test_usb_and_unknown_width_cells_get_no_delta(tmp_path):
    """SC-SSL's BEM cells (bem.md §3.2: FixMatch+BEM 80.30 ± 0.62 on CIFAR-10-LT gamma 100, N1/M1 1500/3000; 59.00
    on CIFAR-100 gamma 10, width not stated) are its USB re-runs: no Δ against ACR-protocol runs, and none against
    an unstated width. LoFT's +ACR+BEM cells are BEM's own numbers: a Δ, the presumed width labelled."""
    runs, out = tmp_path / 'runs', tmp_path / 'results'
    c10, c100 = 'c10-g100-n1500-m3000', 'c100-g10-n150-m300'
    fake_run(runs, f'bem_table1/fixmatch+bem/{c10}/seed0', args=WRN2, protocol=ACR10, mean_last20=79.0)
    fake_run(runs, f'bem_table1/fixmatch+bem/{c100}/seed0', args=WRN8, protocol=ACR100, mean_last20=60.0)
    for k, v in enumerate([66.0, 66.8]):
        fake_run(runs, f'bem_table1/fixmatch+acr+bem/{c100}/seed{k}', args=WRN8, protocol=ACR100, mean_last20=v)
    r = report('bem_table1', '--runs', runs, '--out', out)
    assert r.returncode == 0, r.stderr
    md = (out / 'bem_table1.md').read_text()
    assert md_row(md, 'fixmatch+bem', c10)[3:] == ['80.30 ± 0.62', 'quoted:SC-SSL', 'USB', (
        "no Δ: protocol: paper USB, ours ACR; schedule: the paper's is not stated")]
    assert md_row(md, 'fixmatch+bem', c100)[-1].endswith("width: the paper's is not stated")
    # mean 66.4 - 66.3 (LoFT Table 2, "+ACR+BEM")
    assert md_row(md, 'fixmatch+acr+bem', c100)[3:] == ['66.3', 'quoted:LoFT', 'paper', '+0.10 (paper WRN-28-8 presumed)']
    assert 'Δ printed: 1; withheld: 2 (protocol 2, schedule 2, width 1;' in md


def test_width_dataset_schedule_smoke_refuse_delta(tmp_path):
    """CIFAR-100: ACR's CVPR cells are WRN-28-8 (ACR issue #5), CCL's reprint of ACR WRN-28-2 (the *-w2 keys).
    A Δ needs the same width, dataset and schedule; a SMOKE run (synthetic data) never gets one."""
    runs, out, s = tmp_path / 'runs', tmp_path / 'results', 'c100-g10-n50-m400'
    fake_run(runs, f'bem_table1/fixmatch+acr/{s}/seed0', args=WRN8, protocol=ACR100, mean_last20=56.0)
    fake_run(runs, f'bem_table1/fixmatch+acr/{s}-w2/seed0', args=WRN8, protocol=ACR100, mean_last20=52.0)
    fake_run(runs, f'bem_table1/fixmatch+acr+bem/{s}/seed0', args=WRN8, mean_last20=56.0,
             protocol=dict(ACR100, schedule='4 steps'))
    fake_run(runs, f'bem_table1/fixmatch+acr/c10-g100-n500-m4000/seed0', args=WRN2, mean_last20=80.0,
             protocol=ACR100)
    fake_run(runs, f'bem_table1/fixmatch+acr/c10-g150-n500-m4000/seed0', args=dict(model='wrn', width=1),
             mean_last20=20.0, protocol=dict(ACR10, dataset='synthetic', schedule='4 steps'))
    r = report('bem_table1', '--runs', runs, '--out', out)
    assert r.returncode == 0, r.stderr
    md = (out / 'bem_table1.md').read_text()
    assert md_row(md, 'fixmatch+acr', s)[3:] == ['55.7', 'quoted:LoFT', 'ACR', '+0.30']                 # 56.0 - 55.7
    assert md_row(md, 'fixmatch+acr', f'{s}-w2')[-1] == 'no Δ: width: paper WRN-28-2, ours WRN-28-8'
    assert md_row(md, 'fixmatch+acr+bem', s)[-1] == 'no Δ: schedule: paper 250000 steps, ours 4 steps'
    assert md_row(md, 'fixmatch+acr', 'c10-g100-n500-m4000')[-1] == 'no Δ: dataset: paper cifar10, ours cifar100'
    assert md_row(md, 'fixmatch+acr', 'c10-g150-n500-m4000')[-1] == 'no Δ: SMOKE run (synthetic data)'
    assert 'Δ printed: 1; withheld: 4 (' in md and 'SMOKE run (synthetic data) 1' in md


def test_old_run_protocol_from_args(tmp_path):
    """A summary.json written before the `protocol` entry: the report derives it from args.json (runio.protocol)."""
    runs, out, s = tmp_path / 'runs', tmp_path / 'results', 'c10-g100-n500-m4000'
    args = dict(task='ltssl', dataset='cifar10', model='wrn', width=2, split='acr', mu=1, batch_size=64, lr=0.03,
                ema=0.999, eval_every=500, iters=250000)
    fake_run(runs, f'bem_table1/fixmatch+acr/{s}/seed0', args=args, mean_last20=82.0)
    fake_run(runs, f'bem_table1/fixmatch+acr/c10-g150-n500-m4000/seed0', args=dict(args, mu=2), mean_last20=78.0)
    r = report('bem_table1', '--runs', runs, '--out', out)
    assert r.returncode == 0, r.stderr
    md = (out / 'bem_table1.md').read_text()
    assert md_row(md, 'fixmatch+acr', s)[-1] == '+0.40'                                          # 82.0 - 81.6
    assert md_row(md, 'fixmatch+acr', 'c10-g150-n500-m4000')[-1] == 'no Δ: protocol: paper ACR, ours unknown'


def test_jitter_table_compares_best(tmp_path):
    """RIDE's public code reports the best epoch (test = val, jitter.md §6.1), so the * rows' Δ uses `best`, with
    `last` beside it."""
    runs, out = tmp_path / 'runs', tmp_path / 'results'
    for k, (last, best, many) in enumerate([(49.0, 50.0, 70.0), (50.0, 51.0, 71.0)]):
        fake_run(runs, f'jitter_table1/ride-4e/c100-lt-r100/seed{k}', protocol=RIDE_CODE, last=last, best=best,
                 many=many, medium=50.0, few=None)
    fake_run(runs, 'jitter_table1/ride-4e-reduce/c100-lt-r100/seed0', protocol=RIDE_CODE, last=1.0, best=2.0)
    r = report('jitter_table1', '--runs', runs, '--out', out)
    assert r.returncode == 0, r.stderr
    md = (out / 'jitter_table1.md').read_text()
    # best: mean 50.5, std 0.5; last 49.5; many 70.5; few missing; paper 49.5 (fragment, inferred alignment):
    # 50.5 - 49.5 = +1.00 (the last epoch would give +0.00)
    assert md_row(md, 'ride-4e', 'c100-lt-r100') == [
        'ride-4e', 'c100-lt-r100', '50.50 ± 0.50 (n=2)', '49.50', '70.50', '50.00', '–', '49.5', 'inferred',
        'RIDE-code', '+1.00']
    assert '| row | setting | ours: best (mean ± std, n) | last |' in re.sub(' +', ' ', md)
    assert 'mean per-class accuracy' in md and 'Statistic compared (`best`)' in md
    # J-sampling + RIDE(4e) = RIDE(4e) + 0.6 (jitter text §4.3), no run (cited); TDE's rows are quoted, not the paper's
    assert md_row(md, 'j-sampling+ride-4e', 'c100-lt-r100')[2:5] == ['50.1', 'inferred', 'paper']
    assert md_row(md, 'focal', 'c100-lt-r100')[2:5] == ['38.4', 'quoted:TDE', 'unknown']


def test_fig1_gain_and_png(tmp_path):
    runs, out = tmp_path / 'runs', tmp_path / 'results'
    plan = []
    for s, base, with_bem in [('c10-g100-n500-m4000', 60.0, 70.0), ('c10-g150-n500-m4000', 62.0, 66.0)]:
        for row, v in (('fixmatch', base), ('fixmatch+bem', with_bem)):
            fake_run(runs, f'bem_table1/{row}/{s}/seed0', mean_last20=v)
            plan.append(f'{row}\t{s}\tbem_table1/{row}/{s}')
    args = dict(dataset='cifar10', n1=1500, m1=3000, imb_l=100, imb_u=None, setting='reversed', split='acr')
    rec = dict(step=500, u_counts=[100] * 10, u_entropy=[0.1 * k for k in range(10)])
    fake_run(runs, 'bem_table2/fixmatch+acr+bem/x/seed0', args=args, metrics=[rec], mean_last20=80.0)
    plan.append('fixmatch+acr+bem\tx\tbem_table2/fixmatch+acr+bem/x')
    (runs / 'bem_fig1').mkdir()
    (runs / 'bem_fig1' / 'plan.tsv').write_text('\n'.join(plan) + '\n')
    r = report('fig1', '--runs', runs, '--out', out)
    assert r.returncode == 0, r.stderr
    md = (out / 'bem_fig1.md').read_text()
    assert md_row(md, 'fixmatch', '+7.00')[2] == '11.8'       # ((70-60) + (66-62)) / 2; paper Fig. 1(d) text
    assert (out / 'bem_fig1.png').stat().st_size > 10_000


def test_unknown_table_one_line_exit_2(tmp_path):
    r = report('table9', '--runs', tmp_path)
    assert r.returncode == 2
    assert 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert 'bem_table1' in r.stderr and 'jitter_table5' in r.stderr


def test_fig_cammix_missing_run_one_line(tmp_path):
    r = report('fig_cammix', '--run', tmp_path / 'nothing', '--out', tmp_path)
    assert r.returncode == 2 and 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------
# reproduce/paper_numbers.csv
# ------------------------------------------------------------------------------------------------

PROTOCOLS = {'ACR', 'DASO', 'CoSSL', 'USB', 'RIDE-code', 'LDAM-code', 'paper', 'unknown'}
TAG = re.compile(r'stated|inferred|unverified|quoted:[A-Za-z][\w.-]*(#\d+)?')
WIDTH = re.compile(r'([28]?\?|[28])?')


def test_paper_numbers_csv():
    p = pd.read_csv(REPRO / 'paper_numbers.csv', dtype={'width': str, 'tag': str}, keep_default_na=False,
                    na_values={'value': [''], 'std': ['']})
    assert list(p.columns) == ['paper', 'table', 'row', 'setting', 'value', 'std', 'width', 'tag', 'protocol',
                               'schedule', 'source']
    assert len(p) == 402
    assert p.source.str.strip().ne('').all()
    assert not p.duplicated(['paper', 'table', 'row', 'setting']).any()
    assert p.value.between(0, 100).all() and p['std'].dropna().between(0, 100).all()
    idx = p.set_index(['table', 'row', 'setting'])
    # spot checks against the specs (baselines.md §3.1, bem.md §3.2, jitter.md §5)
    assert tuple(idx.loc[('bem_table1', 'fixmatch+acr', 'c10-g100-n500-m4000'), ['value', 'std']]) == (81.6, 0.19)
    assert idx.loc[('bem_table1', 'fixmatch+acr+bem', 'c100-g20-n150-m300'), 'value'] == 59.8
    assert idx.loc[('bem_table3', 'fixmatch+bem', 'in127-64'), 'value'] == 58.2
    assert 'INFERRED' in idx.loc[('jitter_table1', 'j-sampling+ride-4e', 'c100-lt-r100'), 'source']
    assert 'CAVEAT' in idx.loc[('bem_table1', 'fixmatch+bem', 'c10-g100-n1500-m3000'), 'source']


def test_paper_numbers_provenance():
    """Schema of the provenance columns, and their agreement with the free-text source column."""
    p = pd.read_csv(REPRO / 'paper_numbers.csv', dtype=str, keep_default_na=False)
    bad = p[~p.tag.map(TAG.fullmatch).astype(bool)]
    assert bad.empty, f'invalid tag in {bad[["table", "row", "setting", "tag"]].to_dict("records")}'
    assert p.width.map(WIDTH.fullmatch).astype(bool).all()
    name = lambda t: t[7:].split('#')[0].removesuffix('-README').removesuffix('-MODEL_ZOO')  # noqa: E731
    names = {name(t) for t in p.tag if t.startswith('quoted:')}
    for _, r in p.iterrows():
        key, t = (r.table, r.row, r.setting), r.tag
        if t.startswith('quoted:'):      # the quoting paper / repository is the first one the source names after <-
            text = r.source.split('<-', 1)[1]
            assert min((n for n in names if n in text), key=text.find) == name(t), key
            issue = t.partition('#')[2]
            assert not issue or f'issue #{issue}' in r.source, key
        assert (t == 'stated') == ('[PAPER]' in r.source), key
        assert (t == 'inferred') == ('ALIGNMENT INFERRED' in r.source), key
        assert (t == 'unverified') == ('UNVERIFIED' in r.source), key
        # one WRN cell of a CIFAR / STL table carries its width; the source's "WRN-28-w" agrees with it
        assert bool(r.width) == (r.table in ('bem_table1', 'bem_table2')), key
        for w in '28':
            if f'WRN-28-{w}' in r.source and 'presum' not in r.source and r.tag != 'quoted:SC-SSL':
                assert r.width == w, key
        # protocol = how the number was made, read off the source (baselines.md §3.0, §3.5, §4, §5; jitter.md §6)
        want = {'stated': 'paper', 'quoted:DASO': 'DASO', 'quoted:SEVAL': 'DASO', 'quoted:LDAM-DRW': 'LDAM-code',
                'quoted:CoSSL-README': 'CoSSL', 'quoted:TDE': 'unknown', 'quoted:TLC': 'unknown'}.get(t)
        want = want or ('RIDE-code' if t.startswith('quoted:RIDE') or 'RIDE (Wang' in r.source else None)
        want = want or ('ACR' if 'ACR protocol' in r.source or 'ACR CVPR numbers' in r.source else None)
        want = want or ('USB' if 'USB re-run' in r.source or 'CAVEAT: SC-SSL re-ran' in r.source else None)
        want = want or ('CoSSL' if 'originally CoSSL' in r.source else None)
        if want:
            assert r.protocol == want, key
        assert r.protocol in PROTOCOLS, key
        assert re.fullmatch(r'\?|250000 steps' if r.table.startswith('bem') else r'\?|(100|200|500) epochs',
                            r.schedule), key
    # BEM's own numbers (Fig. 1(d) text; LoFT's "+ACR+BEM"; the ImageNet-127 BEM cells that LoFT Table 3 and
    # SC-SSL Table 8 print alike) and the jitter paper's own rows (43.9; 49.5 + 0.6)
    own = p[p.protocol == 'paper']
    assert sorted(own.groupby('table').size().items()) == [('bem_fig1', 4), ('bem_table1', 4), ('bem_table3', 4),
                                                             ('jitter_table1', 2)]
    assert set(own[own.table == 'jitter_table1'].row) == {'j-sampling+gl2norm+longtrain', 'j-sampling+ride-4e'}
    # the * row RIDE(4experts) is RIDE's public code (jitter.md §5)
    assert p.set_index(['table', 'row', 'setting']).protocol[('jitter_table1', 'ride-4e', 'c100-lt-r100')] == 'RIDE-code'
    # issue 24's count: the FixMatch, +LA and +ABC cells bem_table1.sh runs are DASO's (12 CIFAR-10 + 12 + 12 -w2)
    base = p[(p.table == 'bem_table1') & p.row.isin(['fixmatch', 'fixmatch+la', 'fixmatch+abc'])]
    assert len(base) == 36 and (base.protocol == 'DASO').all()
    # the audit of issue 14: TDE's Table 3 rows are TDE's, not rows of the jitter paper
    assert not p.source.str.contains('row of the jitter paper').any()
    assert (p.tag == 'quoted:TDE').sum() == 42 + 5
    # j-sampling + RIDE(4 experts) is "0.6 points higher than RIDE(4experts)" (jitter text §4.3)
    idx = p.set_index(['table', 'row', 'setting'])
    v = lambda r: float(idx.loc[('jitter_table1', r, 'c100-lt-r100'), 'value'])  # noqa: E731
    assert round(v('j-sampling+ride-4e') - v('ride-4e'), 6) == 0.6
    # SC-SSL's BEM cells are keyed by the run rows (bem.md §3.2); only the two that LoFT's numbers hold stay apart
    sc = p[p.row.str.contains('bem') & (p.tag == 'quoted:SC-SSL') & (p.table != 'bem_table3')]
    assert len(sc) == 14 and set(sc.row) == {'fixmatch+bem', 'fixmatch+acr+bem', 'fixmatch+acr+bem [SC-SSL]'}
    assert set(sc[sc.row.str.endswith('[SC-SSL]')].setting) == {'c100-g10-n150-m300', 'c100-g20-n150-m300'}


# ------------------------------------------------------------------------------------------------
# reproduce/*.sh
# ------------------------------------------------------------------------------------------------

def script_text(name):
    return (REPRO / f'{name}.sh').read_text()


@pytest.mark.parametrize('name', OWNED + ['common'])
def test_script_static(name):
    path = REPRO / f'{name}.sh'
    assert subprocess.run(['bash', '-n', str(path)]).returncode == 0
    lines = script_text(name).splitlines()
    assert lines[0] == '#!/usr/bin/env bash' and lines[1].startswith('# ') and len(lines[1]) > 20
    body = '\n'.join(lines[1:])
    assert not re.search(r'(^|[\s"\'=(])/(work|home|root|usr|tmp|data|mnt|opt)\b', body), 'absolute path'
    assert not re.search(r'CUDA_VISIBLE_DEVICES=|--gpu|cuda:\d', body), 'hard-coded GPU id'
    if name != 'common':
        assert 'GPU-hours' in body and 'source reproduce/common.sh' in body


def dry(name, tmp, **env):
    e = dict(os.environ, DRY_RUN='1', RUNS=str(tmp / 'runs'), RESULTS=str(tmp / 'res'), **env)
    r = subprocess.run(['bash', str(REPRO / f'{name}.sh')], capture_output=True, text=True, env=e, timeout=60)
    assert r.returncode == 0, r.stderr
    outs = re.findall(r'train\.py --task .* --out (\S+)', r.stdout)
    return r.stdout, [o.split('/runs/', 1)[1] for o in outs]


@pytest.fixture(scope='module')
def dry_runs(tmp_path_factory):
    """name -> {'full': (stdout, run dirs), 'smoke': (...)} of every script under DRY_RUN=1 (run once)."""
    tmp = tmp_path_factory.mktemp('dry')
    return {n: {'full': dry(n, tmp), 'smoke': dry(n, tmp, SMOKE='1')} for n in OWNED}


# runs = rows x settings x 3 seeds, from each table's layout; SMOKE runs each row once (bem_table4: 6 rows + 2
# reconstruction ablations)
ROWS = {'bem_table1': 8, 'bem_table2': 4, 'bem_table3': 4, 'bem_table4': 8, 'bem_table5': 9, 'bem_fig1': 8,
        'bem_fig_cammix': 1, 'jitter_table1': 9, 'jitter_table2': 9, 'jitter_table3': 6, 'jitter_table4': 6,
        'jitter_table5': 6}
FULL = {'bem_table1': 8 * 8 * 3, 'bem_table2': 4 * 8 * 3, 'bem_table3': 4 * 2 * 3, 'bem_table4': (6 + 2) * 3,
        'bem_table5': 9 * 3, 'bem_fig1': (8 * 4 + 2) * 3, 'bem_fig_cammix': 1, 'jitter_table1': 9 * 3,
        'jitter_table2': 9 * 3, 'jitter_table3': 6 * 3, 'jitter_table4': 6 * 2 * 3, 'jitter_table5': 6 * 2 * 3}


@pytest.mark.parametrize('name', OWNED)
def test_script_dry_run(name, dry_runs):
    text, outs = dry_runs[name]['full']
    assert len(outs) == FULL[name]
    assert 'train.py --check-data' in text and f'report.py {name}' in text
    assert all(re.fullmatch(r'(bem|jitter)_\w+/[^/\s]+/[^/\s]+/seed\d', o) for o in outs)
    rows = set(re.findall(r'cell (\S+) \|', text))
    assert len(rows) == ROWS[name]
    text, smoke = dry_runs[name]['smoke']
    assert set(re.findall(r'cell (\S+) \|', text)) == rows and len(smoke) == ROWS[name]   # every row, once
    assert all(p.startswith('smoke/') and p[6:] in outs for p in smoke)
    assert text.count('--device cpu') == len(smoke) and '--dataset synthetic' in text


def test_script_keys_match_paper_numbers(tmp_path, dry_runs):
    """Main rows of the scripts join the CSV (the keys are the run-dir names)."""
    p = pd.read_csv(REPRO / 'paper_numbers.csv').set_index(['table', 'row', 'setting']).index
    _, outs = dry_runs['bem_table1']['full']
    base = {tuple(o.split('/')[:3]) for o in outs if o.split('/')[1] in ('fixmatch', 'fixmatch+la', 'fixmatch+abc',
                                                                          'fixmatch+acr')}
    assert len(base) == 32 and all(k in p for k in base)
    # default WIDTH=8: the CIFAR-100 cells of FixMatch, +LA, +ABC hold WRN-28-2 numbers (DASO), so the report
    # refuses their Δ (width column); 3 rows x 4 settings = the 12 rows found by the audit of issue 14
    w = pd.read_csv(REPRO / 'paper_numbers.csv', dtype=str, keep_default_na=False).set_index(
        ['table', 'row', 'setting']).width
    assert sorted(k for k in base if k[2].startswith('c100') and w[k] == '2') == sorted(
        ('bem_table1', r, f'c100-g{g}-n{n}') for r in ('fixmatch', 'fixmatch+la', 'fixmatch+abc')
        for g in (10, 20) for n in ('50-m400', '150-m300'))
    _, outs = dry('bem_table1', tmp_path, WIDTH='2')
    keys = {tuple(o.split('/')[:3]) for o in outs}
    assert ('bem_table1', 'fixmatch+acr', 'c100-g10-n50-m400-w2') in keys
    assert all(w[k] == '2' for k in keys if k in w.index and k[2].startswith('c100'))     # WIDTH=2: all comparable
    _, outs = dry_runs['jitter_table1']['full']
    have = {tuple(o.split('/')[:3]) for o in outs if tuple(o.split('/')[:3]) in p}
    assert {k[1] for k in have} == {'j-sampling+gl2norm+longtrain', 'ride-4e', 'j-sampling+ride-4e'}


def test_script_commands_parse_with_train_py(dry_runs):
    """Every command the scripts generate (full and SMOKE) passes train.py's own parser and resolve()."""
    sys.path.insert(0, str(ROOT))
    try:
        import flags
    except Exception as e:  # noqa: BLE001  train.py is written in parallel
        pytest.skip(f'train.py does not import yet: {type(e).__name__}: {e}')
    cmds = set()
    for runs in dry_runs.values():
        for text, _ in runs.values():
            cmds |= set(re.findall(r'train\.py (--task .*)', text))
    assert len(cmds) > 400
    for cmd in sorted(cmds):
        args = flags.build_parser().parse_args(shlex.split(cmd))
        if args.task == 'lt' and args.dataset not in flags.LT_DATA:
            continue  # e.g. imagenet_lt (jitter_table4) before train.py has its loader
        flags.resolve(args, flags.given_flags(shlex.split(cmd)))   # also: no flag the run ignores


def test_run_protocol_of_script_commands(dry_runs):
    """runio.protocol (summary.json `protocol`) of the scripts' resolved commands: the LTSSL rows run ACR's settings
    for 250k steps (anchors.md §1), the jitter * baselines RIDE's loss from epoch 0 = RIDE's public code, the
    J-sampling rows the paper's CE stage 1 and single-expert recipe (jitter.md §4.2-4.3, §6.4)."""
    sys.path.insert(0, str(ROOT))
    import flags
    import runio

    def made(name, kind, row):
        text, _ = dry_runs[name][kind]
        cmd = re.search(rf'cell {re.escape(row)} \|.*\n\+ .*?train\.py (--task .*)', text).group(1)
        argv = shlex.split(cmd)
        return runio.protocol(flags.resolve(flags.build_parser().parse_args(argv), flags.given_flags(argv)))
    assert made('bem_table1', 'full', 'fixmatch+la+bem') == dict(name='ACR', dataset='cifar10', schedule='250000 steps')
    assert made('bem_table3', 'full', 'fixmatch+acr') == dict(name='ACR', dataset='imagenet127-32px',
                                                              schedule='250000 steps')
    assert made('jitter_table1', 'full', 'ride-4e') == dict(name='RIDE-code', dataset='cifar100', schedule='200 epochs')
    assert made('jitter_table1', 'full', 'j-sampling+ride-4e')['name'] == 'paper'
    assert made('jitter_table1', 'full', 'j-sampling+gl2norm+longtrain') == dict(name='paper', dataset='cifar100',
                                                                                 schedule='500 epochs')
    # SMOKE: batch 8, an evaluation every 4 steps: not ACR's settings either
    assert made('bem_table1', 'smoke', 'fixmatch') == dict(name='unknown', dataset='synthetic', schedule='4 steps')


def plan_pairs(text):
    """(name, A, B, differs) of every `pair` line, and {row/setting: argv} of every cell, from a DRY_RUN output."""
    pairs = re.findall(r'\] pair (.+?): (\S+) vs (\S+) \(differs in (.+)\)$', text, re.M)
    cells = re.findall(r'cell (\S+) \| (\S+) \| seed 0\n\+ .*?train\.py (--task .*)', text)
    return pairs, {f'{r}/{s}': shlex.split(c) for r, s, c in cells}


@pytest.mark.parametrize('name', ['jitter_table3', 'jitter_table4', 'jitter_table5'])
def test_jitter_pairs_differ_in_one_flag(name, dry_runs):
    """Every compared pair of a jitter ablation changes one thing (jitter.md §4.4: the ablations keep §4.3's setting),
    read through train.py's own parser; the paper's comparisons are among the pairs."""
    sys.path.insert(0, str(ROOT))
    import flags
    text, _ = dry_runs[name]['full']
    pairs, cells = plan_pairs(text)
    assert pairs
    for pname, a, b, differs in pairs:
        va, vb = (vars(flags.build_parser().parse_args(cells[c])) for c in (a, b))
        changed = {k for k in va if va[k] != vb[k] and k not in ('out', 'seed', 'data_dir')}
        assert len(changed) == 1, (pname, changed)
        assert differs.startswith('--' + changed.pop().replace('_', '-') + ' '), (pname, differs)
    compared = {(a, b) for _, a, b, _ in pairs}
    paper = {'jitter_table3': [('with-replacement', 'without-replacement', 'c100-lt-r100', 'c100-lt-r100')],
             'jitter_table4': [('with-replacement', 'jitter-with-replacement', s, s) for s in ('c100-lt-r100', 'imagenet-lt')]
             + [('without-replacement', 'jitter-without-replacement', 'c100-lt-r100', 'c100-lt-r100')],
             'jitter_table5': [(r, r, 'c100-lt-r100-e200', 'c100-lt-r100-e400') for r in
                               ('with-replacement', 'without-replacement', 'jitter-with-replacement')]}[name]
    assert all((f'{ra}/{sa}', f'{rb}/{sb}') in compared for ra, rb, sa, sb in paper)


def test_pair_of_two_flags_refused(tmp_path):
    """`pair` refuses two cells that change two things, with one line and exit 2."""
    script = tmp_path / 't.sh'
    script.write_text(f'source {REPRO}/common.sh\nbegin t\ncell a s --sampler instance --ride-stage1 ldam\n'
                      'cell b s --sampler jitter1\npair p a/s b/s\necho unreachable\n')
    r = subprocess.run(['bash', str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and 'unreachable' not in r.stdout
    assert r.stderr.strip() == ("reproduce/common.sh: pair 'p' (a/s vs b/s) differs in 2 flags (--ride-stage1 ldam -> "
                                "(default); --sampler instance -> jitter1); a pair changes one thing")


def test_pairs_in_report(tmp_path):
    """report.py lists the script's pairs (pairs.tsv) with B − A of the table's statistic (best, jitter)."""
    runs, out, s = tmp_path / 'runs', tmp_path / 'results', 'c100-lt-r100'
    for row, best in (('with-replacement', 50.0), ('without-replacement', 52.5)):
        fake_run(runs, f'jitter_table3/{row}/{s}/seed0', protocol=dict(RIDE_CODE, name='paper'), best=best, last=1.0)
    (runs / 'jitter_table3' / 'pairs.tsv').write_text(
        f'with vs without replacement\twith-replacement\t{s}\twithout-replacement\t{s}\t--sampler instance -> shuffle\n')
    r = report('jitter_table3', '--runs', runs, '--out', out)
    assert r.returncode == 0, r.stderr
    md = (out / 'jitter_table3.md').read_text()
    assert md_row(md, 'with vs without replacement', f'with-replacement / {s}')[2:] == [
        f'without-replacement / {s}', '--sampler instance -> shuffle', '50.00', '52.50', '+2.50']


def test_gpu_hour_estimates_one_source():
    """Every ms/step a script's GPU-hours header quotes is a row of docs/reproduce.md's one table of estimates, and
    every header calls its figures an estimate (nothing has been measured on a GPU yet)."""
    doc = (ROOT / 'docs' / 'reproduce.md').read_text()
    table = doc.split('**GPU-hour estimates.**', 1)[1].split('`bash reproduce/gpu_check.sh`', 1)[0]
    known = {float(v) for v in re.findall(r'^\| [^|]+\| ([\d.]+)(?: / [\d.]+)? \|', table, re.M)}
    known |= {float(v) for v in re.findall(r'^\| [^|]+\| [\d.]+ / ([\d.]+) \|', table, re.M)}
    assert known == {4, 25, 10, 40, 5, 8}
    for name in OWNED:
        head = script_text(name).split('set -euo pipefail')[0]
        hours = head[head.index('GPU-hours'):]
        assert 'ESTIMATE' in hours and 'docs/reproduce.md' in hours, name
        quoted = {float(v) for v in re.findall(r'(\d+(?:\.\d+)?) ms/step', hours)}
        assert quoted <= known, (name, quoted - known)
