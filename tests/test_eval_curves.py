"""report.py eval / curves and train.py --tensorboard, on synthetic data (CPU, seconds).

Oracles: a confusion matrix counted by hand on a six-image set (train.eval_confusion, the one evaluation loop);
the numbers the training loop wrote to metrics.jsonl / summary.json for what `eval` recomputes from the
checkpoint it reloads (weights, heads, framework state); the metrics.jsonl records for what TensorBoard receives.
"""
import csv
import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch

import report
import flags
import train
from conftest import LT_SYNTHETIC, TINY, TINY_LT, patch_small_data, read_json, read_metrics, run_train


# ------------------------------------------------------------------------------------------------
# the confusion matrix, by hand
# ------------------------------------------------------------------------------------------------

class Says(torch.nn.Module):
    """A 'model' whose prediction is written in the image: pixel (0, 0, 0) = 10 x the predicted class."""
    def forward(self, x):
        return -(x[:, 0, 0, 0, None] - 10 * torch.arange(3.0)).abs()


def test_confusion_hand_counted():
    # six test images of 3 classes: true 0 0 0 1 1 2, predicted 0 1 0 1 1 0, in batches of 4 (two batches summed)
    y, pred = torch.tensor([0, 0, 0, 1, 1, 2]), torch.tensor([0, 1, 0, 1, 1, 0])
    x = (10 * pred).to(torch.uint8).view(6, 1, 1, 1).expand(6, 3, 2, 2).contiguous()
    cm = train.eval_confusion(Says(), x, y, (0.0,) * 3, (1 / 255,) * 3, 3, lambda out: out[None], batch=4)
    assert cm.shape == (1, 3, 3) and cm[0].tolist() == [[2, 1, 0],     # class 0: two right, one taken for class 1
                                                        [0, 2, 0],     # class 1: both right
                                                        [1, 0, 0]]     # class 2: its one image taken for class 0
    top1, per_class = train.accuracies(cm)
    assert top1[0] == pytest.approx(100 * 4 / 6) and per_class[0].tolist() == pytest.approx([200 / 3, 100, 0])
    # training counts 5, 20, 10: head -> tail order is class 1, class 2, class 0
    counts = [5, 20, 10]
    assert report.head_to_tail(counts).tolist() == [1, 2, 0]
    m = report.normalised(cm[0].numpy(), report.head_to_tail(counts))
    # rows/columns in the order 1, 2, 0; each row over its true-class total (2, 1, 3 images)
    assert np.allclose(m, [[2 / 2, 0, 0],
                           [0, 0, 1 / 1],
                           [1 / 3, 0, 2 / 3]])


def test_head_to_tail_keeps_ties_in_class_order():
    assert report.head_to_tail([3, 7, 7, 1]).tolist() == [1, 2, 0, 3]


# ------------------------------------------------------------------------------------------------
# eval on tiny runs: what it recomputes from the checkpoint = what training measured
# ------------------------------------------------------------------------------------------------

def report_inproc(argv, synthetic, capsys):
    """report.main(argv) on the same small data as the run; (exit code, stdout, stderr)."""
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        patch_small_data(mp, synthetic)
        try:
            rc = report.main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_one_line(rc, err, key):
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and 'Traceback' not in err, (rc, err)
    assert key.lower() in lines[0].lower(), lines[0]


@pytest.fixture(scope='module')
def abc_run(tmp_path_factory):
    """FixMatch+ABC: two heads (standard, abc), EMA weights; 2 steps, evaluated at both."""
    out = tmp_path_factory.mktemp('eval') / 'abc'
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return run_train(TINY + ['--alg', 'abc'], out)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_eval_ltssl_two_heads(abc_run, capsys):
    from conftest import TINY_SYNTHETIC
    rc, out, err = report_inproc(['eval', abc_run], TINY_SYNTHETIC, capsys)
    assert rc == 0, err
    last = read_metrics(abc_run)[-1]
    ev = read_json(abc_run / 'eval' / 'eval.json')
    assert ev['step'] == last['step'] == 2 and ev['weights'] == 'ema' and ev['reported_head'] == 'abc'
    for head in ('standard', 'abc'):             # the loop's own evaluation of the same EMA weights
        assert ev['heads'][head]['top1'] == pytest.approx(last['acc'][head], abs=1e-3)
    rows = read_csv(abc_run / 'eval' / 'per_class.csv')
    counts = read_json(abc_run / 'summary.json')['class_counts']
    assert [int(r['train_count']) for r in rows] == counts
    assert [r['name'] for r in rows][:2] == ['red square', 'red disc']          # data.make_synthetic's classes
    assert np.allclose([float(r['accuracy_abc']) for r in rows], last['per_class']['abc'], atol=1e-2)
    cm = np.array(ev['confusion_counts'])
    assert ev['confusion_head'] == 'abc' and cm.sum() == 40                      # 4 test images x 10 classes
    assert np.allclose(100 * np.diag(cm) / cm.sum(1), last['per_class']['abc'], atol=1e-2)
    assert (abc_run / 'eval' / 'confusion.png').stat().st_size > 5000
    assert 'abc (reported)' in out and 'standard' in out


def test_eval_raw_weights_prev_checkpoint_one_head(abc_run, capsys):
    from conftest import TINY_SYNTHETIC
    rc, out, err = report_inproc(['eval', abc_run, '--weights', 'raw', '--checkpoint', 'prev', '--heads',
                                  'standard'], TINY_SYNTHETIC, capsys)
    assert rc == 0, err
    ev = read_json(abc_run / 'eval' / 'eval.json')
    assert ev['weights'] == 'raw' and list(ev['heads']) == ['standard'] and ev['confusion_head'] == 'standard'
    assert ev['checkpoint'] == 'prev' and ev['step'] in (1, 2)


def test_eval_lt_task(tmp_path, capsys):
    run = run_train(TINY_LT + ['--sampler', 'instance', '--epochs', '1'], tmp_path / 'lt', synthetic=LT_SYNTHETIC)
    rc, out, err = report_inproc(['eval', run], LT_SYNTHETIC, capsys)
    assert rc == 0, err
    ev, s = read_json(run / 'eval' / 'eval.json'), read_json(run / 'summary.json')
    assert ev['weights'] == 'raw' and list(ev['heads']) == ['model']
    assert ev['heads']['model']['mean_per_class'] == pytest.approx(s['last'], abs=1e-3)   # the jitter statistic
    for k in ('many', 'medium', 'few', 'head_half', 'tail_half'):
        assert ev['heads']['model'][k] == pytest.approx(s[k], abs=0.01) if s[k] is not None else ev['heads']['model'][k] is None
    # the figure's order: head -> tail by training count
    assert ev['order_head_to_tail'] == list(np.argsort(-np.array(s['class_counts']), kind='stable'))


def test_eval_bad_input(abc_run, tmp_path, capsys):
    from conftest import TINY_SYNTHETIC
    run = lambda *a: report_inproc(['eval', *a], TINY_SYNTHETIC, capsys)  # noqa: E731
    rc, _, err = run(tmp_path / 'nothing')
    assert_one_line(rc, err, 'args.json')
    bare = tmp_path / 'bare'
    bare.mkdir()
    shutil.copy(abc_run / 'args.json', bare / 'args.json')
    rc, _, err = run(bare)
    assert_one_line(rc, err, 'checkpoint.pt')
    rc, _, err = run(bare, '--checkpoint', 'prev')
    assert_one_line(rc, err, 'checkpoint.prev.pt')
    other = tmp_path / 'other'
    shutil.copytree(abc_run, other, ignore=shutil.ignore_patterns('eval'))
    a = read_json(other / 'args.json')
    a['flag_of_a_future_version'] = 1
    (other / 'args.json').write_text(json.dumps(a))
    rc, _, err = run(other)
    assert_one_line(rc, err, 'another version')
    rc, _, err = run(abc_run, '--heads', 'balanced')          # an ACR head on an ABC run
    assert_one_line(rc, err, 'heads')
    assert not (bare / 'eval').exists() and not (other / 'eval').exists()


# ------------------------------------------------------------------------------------------------
# curves
# ------------------------------------------------------------------------------------------------

def fake_metrics(d, recs):
    d.mkdir(parents=True)
    (d / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in recs))
    return d


def test_curve_series_reads_every_part():
    recs = [{'step': 10, 'acc': {'standard': 20.0, 'balanced': 25.0}, 'lr': 0.03,
             'train': {'loss': 2.0, 'Lx': 1.5, 'Lu': 0.5, 'mask': 0.1, 'tau1': 0.9},
             'bem': {'u_entropy': [1.0, 2.0, 3.0], 'box_area': 0.4, 'w_c': [0.5, 1.0, 2.0]}},
            {'step': 20, 'acc': {'standard': 30.0, 'balanced': 35.0}, 'lr': 0.02,
             'train': {'loss': 1.0, 'Lx': 0.8, 'Lu': 0.2, 'mask': 0.3, 'tau1': 0.8},
             'bem': {'u_entropy': [2.0, 2.0, 2.0], 'box_area': 0.5, 'w_c': [0.5, 1.0, 1.0]},
             'future': {'delta_t': [0.25, 0.75]}, 'per_class': {'standard': [1.0, 2.0]}}]
    p = report.curve_series(recs)
    assert p['test accuracy % (per head)']['balanced'] == ([10, 20], [25.0, 35.0])
    assert p['mask rate']['mask'] == ([10, 20], [0.1, 0.3])
    assert p['learning rate']['lr'] == ([10, 20], [0.03, 0.02])
    assert set(p['loss parts (train mean since the last evaluation)']) == {'loss', 'Lx', 'Lu'}
    assert p['thresholds (ACR adaptive tau)']['tau1'][1] == [0.9, 0.8]
    bem = p['BEM dynamics (class means)']
    assert bem['u_entropy'][1] == [2.0, 2.0] and bem['box_area'][1] == [0.4, 0.5]
    assert bem['w_c tail/head'][1] == [4.0, 2.0]
    assert 'sampler (jitter)' not in p                  # absent from the records: no panel
    assert p['other records: future']['delta_t'] == ([20], [0.5])   # a key added later: drawn, as a class mean
    assert not [k for k in p if 'per_class' in k]


def test_curves_several_runs_and_lt_records(tmp_path, capsys):
    a = fake_metrics(tmp_path / 'x' / 'seed0', [{'step': s, 'acc': {'model': s / 10}, 'lr': 0.1, 'train': {'loss': 1 / s},
                                                 'delta': 0.5, 'class_probs': [0.5, 0.3, 0.2]} for s in (10, 20)])
    b = fake_metrics(tmp_path / 'y' / 'seed0', [{'step': s, 'acc': {'model': s / 5}, 'lr': 0.1, 'train': {'loss': 2 / s},
                                                 'delta': 0.0} for s in (10, 20, 30)])
    out = tmp_path / 'c.png'
    assert report.main(['curves', str(a), str(b), '--out', str(out)]) == 0
    assert out.stat().st_size > 10000
    msg = capsys.readouterr().out
    assert 'sampler (jitter)' in msg and 'BEM' not in msg
    assert report.run_labels([a, b]) == ['x/seed0', 'y/seed0']      # same leaf names: parents make them unique


def test_curves_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        report.main(['curves', str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'metrics.jsonl' in err[0]


# ------------------------------------------------------------------------------------------------
# --tensorboard: every record mirrored; resume appends and drops what the killed run wrote past its checkpoint
# ------------------------------------------------------------------------------------------------

def tb_scalars(run, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(run / 'tb'), size_guidance={'scalars': 0, 'histograms': 0, 'images': 0})
    ea.Reload()
    return ea, [(e.step, e.value) for e in ea.Scalars(tag)]


def test_tensorboard_mirrors_and_resume_appends(tmp_path, monkeypatch):
    pytest.importorskip('tensorboard')
    out = tmp_path / 'run'
    argv = TINY + ['--alg', 'fixmatch', '--iters', '4', '--tensorboard']
    calls = {'n': 0}

    def stop_after_two(stop, boundary, dist):
        calls['n'] += 1
        return calls['n'] == 2
    monkeypatch.setattr(train, '_stop_requested', stop_after_two)
    run_train(argv, out, expect=128 + signal.SIGTERM)            # stopped at step 2, checkpoint written
    monkeypatch.undo()
    # a kill between the metrics line and the checkpoint: a record (and its event) past the checkpoint
    from torch.utils.tensorboard import SummaryWriter
    with open(out / 'metrics.jsonl', 'a') as f:
        f.write(json.dumps({'step': 3, 'acc': {'standard': -1.0}}) + '\n')
    w = SummaryWriter(str(out / 'tb'))
    w.add_scalar('acc/standard', -1.0, 3)
    w.close()
    run_train(argv + ['--resume'], out)
    recs = read_metrics(out)
    assert [r['step'] for r in recs] == [1, 2, 3, 4]
    ea, acc = tb_scalars(out, 'acc/standard')
    assert acc == [(r['step'], pytest.approx(r['acc']['standard'], abs=1e-4)) for r in recs]   # -1 purged
    _, lx = tb_scalars(out, 'train/Lx')
    assert lx == [(r['step'], pytest.approx(r['train']['Lx'], rel=1e-5)) for r in recs]
    _, lr = tb_scalars(out, 'lr')
    assert [s for s, _ in lr] == [1, 2, 3, 4]
    tags = ea.Tags()
    assert 'per_class/standard' in tags['images']                 # per-class accuracy as a figure
    assert len(os.listdir(out / 'tb')) == 3                        # first run, the fake writer, the resumed run


def test_tensorboard_flag_is_resume_free():
    import runio
    assert 'tensorboard' in runio.RESUME_FREE          # switching it on for --resume does not change the result


# ------------------------------------------------------------------------------------------------
# make demo on a fresh machine: install Fashion-MNIST when root with apt-get, else the synthetic fallback
# (the fallback's real run is CI's `QUICK=1 FMNIST_DIR=$(mktemp -d) make demo`)
# ------------------------------------------------------------------------------------------------

def _stubs(tmp, uid):
    """PATH stubs: `id -u` prints uid; apt-get logs its call and 'installs' (a marker file); python answers
    --check-data from the marker and prints any other command instead of running it."""
    import stat
    b = tmp / 'bin'
    b.mkdir()
    scripts = {'id': f'echo {uid}',
               'apt-get': f'echo "$*" >> {tmp}/apt.log; case "$*" in *install*) touch {tmp}/installed;; esac',
               'py': f'case " $* " in *" --check-data "*) [ -f {tmp}/installed ]; exit $?;; esac; echo "ran $*"'}
    for name, body in scripts.items():
        (b / name).write_text('#!/bin/bash\n' + body + '\n')
        (b / name).chmod((b / name).stat().st_mode | stat.S_IEXEC)
    return dict(os.environ, PATH=f'{b}:{os.environ["PATH"]}', PYTHON=str(b / 'py'), QUICK='1', RUNS=str(tmp / 'runs'),
                RESULTS=str(tmp / 'results'))


def _demo(env):
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(['bash', os.path.join(root, 'reproduce', 'demo.sh')], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_demo_installs_fashion_mnist_as_root_with_apt(tmp_path):
    env = _stubs(tmp_path, 0)
    env.pop('FMNIST_DIR', None)
    out = _demo(env)
    assert out.count("installing Debian's dataset-fashion-mnist") == 1
    assert 'install -y -qq dataset-fashion-mnist' in (tmp_path / 'apt.log').read_text()
    runs = [line for line in out.splitlines() if line.startswith('ran train.py')]
    assert len(runs) == 3 and all('--dataset fmnist' in r and '--n1 1000' in r for r in runs)
    assert all(('--m1 2000' in r) != ('--alg supervised' in r) for r in runs)     # supervised: no unlabeled recipe
    assert 'synthetic' not in out


def test_demo_fallback_without_root_fits_the_synthetic_set(tmp_path):
    import shlex
    import data
    out = _demo(_stubs(tmp_path, 1000))
    assert not (tmp_path / 'apt.log').exists()
    assert out.count("using the generated 'synthetic' set") == 1
    runs = [line[4:] for line in out.splitlines() if line.startswith('ran train.py')]
    # rows in run order; the report call follows them
    assert [('--bem' in r, r.split('--alg ')[1].split()[0]) for r in runs] == [
        (False, 'supervised'), (False, 'fixmatch'), (True, 'fixmatch')]
    assert out.splitlines().index(next(x for x in out.splitlines() if x.startswith('ran report.py demo'))) > \
        out.splitlines().index('ran ' + runs[-1])
    have = np.bincount(data.make_synthetic().train_y)          # the set the fallback trains on
    for r in runs:
        argv = shlex.split(r)[1:]
        a = flags.resolve(flags.build_parser().parse_args(argv), flags.given_flags(argv))
        assert a.dataset == 'synthetic' and '_synthetic/' in a.out
        n, m = data.setting_counts(a.n1, a.m1, a.imb_l, a.imb_u, a.setting, len(have))
        data.check_split(np.repeat(np.arange(len(have)), have), n, m if a.alg != 'supervised' else [0] * len(m), a.split)
        assert n[0] / n[-1] == 100                              # gamma kept


def test_demo_fmnist_dir_skips_the_install(tmp_path):
    env = _stubs(tmp_path, 0)
    env['FMNIST_DIR'] = str(tmp_path / 'empty')
    out = _demo(env)
    assert not (tmp_path / 'apt.log').exists() and "using the generated 'synthetic' set" in out


def test_dry_run_scripts_run_nothing(tmp_path):
    """DRY_RUN=1: demo.sh / fmnist_cpu.sh / jitter_fig_theory.sh print their commands and run none of them."""
    env = _stubs(tmp_path, 1000)
    env['DRY_RUN'] = '1'
    out = _demo(env)
    assert 'ran train.py' not in out and out.count('+ ') >= 4 and '--dataset synthetic' in out
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for script in ('fmnist_cpu.sh', 'jitter_fig_theory.sh'):
        r = subprocess.run(['bash', os.path.join(root, 'reproduce', script)], env=dict(env, ROOT=str(tmp_path / 'r')),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert 'ran ' not in r.stdout and r.stdout.startswith('+ '), r.stdout
    assert not (tmp_path / 'r').exists()
