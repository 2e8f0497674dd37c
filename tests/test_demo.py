"""report.py demo: the lines under the table say what the numbers are, and the figures they cite are
docs/results.md's."""
import json
import os

import pytest

import flags
import report
from conftest import ROOT


def results_table(header):
    """{run: overall %} of the docs/results.md table whose header row starts with `header`."""
    with open(os.path.join(ROOT, 'docs', 'results.md')) as f:
        lines = f.read().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f'| {header}'))
    rows = {}
    for ln in lines[start + 2:]:
        if not ln.startswith('|'):
            break
        cells = [c.strip() for c in ln.strip('|').split('|')]
        rows[cells[0]] = cells[2]
    return rows


def test_cited_figures_are_those_of_docs_results():
    measured = results_table('LTSSL run')
    assert report.DEMO_MEASURED == {k: measured[k] for k in report.DEMO_MEASURED}
    assert report.PAPER_STEPS == flags.DEFAULTS['iters'][0] == 250_000


def fake_run(d, dataset, steps):
    d.mkdir(parents=True)
    (d / 'args.json').write_text(json.dumps({'dataset': dataset}))
    (d / 'summary.json').write_text(json.dumps({
        'finished': True, 'steps': steps, 'last': 40.0, 'mean_last20': 39.0, 'head_half': 60.0, 'tail_half': 20.0,
        'many': 70.0, 'few': 0.0, 'timing': {'wall_time_s': 100}, 'per_class': [50.0] * 10,
        'statistic': 'top-1 (%) of the EMA model'}))


@pytest.mark.parametrize('dataset,steps,cites', [('fmnist', 250, True), ('fmnist', 30, False),
                                                 ('synthetic', 250, False)])
def test_demo_says_what_its_numbers_are(dataset, steps, cites, tmp_path):
    for name in ('supervised', 'fixmatch', 'fixmatch_bem'):
        fake_run(tmp_path / 'runs' / name, dataset, steps)
    md = report.demo(tmp_path / 'runs', tmp_path)
    # 250 / 250,000 = 0.1 %; 30 / 250,000 = 0.012 %
    assert f'top-1 after {steps} steps, {"0.1" if steps == 250 else "0.012"} % of the papers\' 250,000-step' in md
    cited = 'supervised 30.5 ± 3.7 %, fixmatch 40.7 ± 1.9 %, fixmatch+bem 43.6 ± 11.2 %' in md
    assert cited == cites and ('bash reproduce/fmnist_cpu.sh' in md) == cites
