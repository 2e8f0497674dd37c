"""End-to-end tests of train.py: every algorithm and option runs and writes a complete run directory,
FixMatch learns the synthetic set, CamMix boxes find the objects, and a killed/stopped run resumed with
--resume ends bit-identical to the uninterrupted one.

Oracles: summary statistics recomputed here from metrics.jsonl; many/medium/few from the class counts
(RIDE thresholds); chance level (10%) and a random-box IoU baseline computed here; the uninterrupted run.
Everything runs in-process on the small datasets of conftest.py (one subprocess: the SIGKILL test).
Budget: about 2 minutes of CPU on one thread (pytest --durations shows each test).
"""
import math
import os
import signal
import time

import numpy as np
import pytest
import torch

import bem
import conftest
import data
import models
import runio
import train
from augment import normalize
from conftest import (LT_SYNTHETIC, SMALL_SYNTHETIC, TINY, TINY_LT, needs_fmnist, read_json, read_metrics,
                      run_train, spawn_train, wait_for)

ALGS = ['supervised', 'fixmatch', 'la', 'abc', 'acr']
HEADS = {'supervised': ['standard'], 'fixmatch': ['standard'], 'la': ['standard'], 'abc': ['standard', 'abc'],
         'acr': ['standard', 'balanced']}
EVAL_HEAD = {'supervised': 'standard', 'fixmatch': 'standard', 'la': 'standard', 'abc': 'abc', 'acr': 'balanced'}
STATS_KEYS = {'last', 'best', 'mean_last20', 'median_last20', 'many', 'medium', 'few', 'per_class'}
C = 10


def tiny_counts(n1=40, gamma=10):
    """Labeled counts of TINY, by the DARP/ACR formula written out here (int(), last class n1/gamma)."""
    return [int(n1 * gamma ** (-k / (C - 1))) for k in range(C - 1)] + [int(n1 / gamma)]


def group_means(per_class, counts):
    """RIDE's many (>100 images) / medium (20-100) / few (<20) means; None for an empty group."""
    pc, n = np.asarray(per_class, float), np.asarray(counts)
    masks = {'many': n > 100, 'medium': (n >= 20) & (n <= 100), 'few': n < 20}
    return {k: (float(pc[m].mean()) if m.any() else None) for k, m in masks.items()}


def check_run(run_dir, steps, heads, eval_head, counts, n_evals):
    """A complete run directory whose summary agrees with its own metrics.jsonl."""
    for f in ('args.json', 'env.json', 'metrics.jsonl', 'summary.json', 'checkpoint.pt'):
        assert os.path.exists(os.path.join(run_dir, f)), f
    s, recs = read_json(os.path.join(run_dir, 'summary.json')), read_metrics(run_dir)
    assert s['finished'] is True and s['steps'] == steps and s['eval_head'] == eval_head
    assert STATS_KEYS <= set(s) and set(s['heads']) == set(heads)
    assert set(s['timing']) >= {'wall_time_s', 'images_per_s'} and s['timing']['wall_time_s'] > 0
    assert s['class_counts'] == list(counts)
    assert len(recs) == n_evals == s['evaluations'] and recs[-1]['step'] == steps
    assert [r['step'] for r in recs] == sorted(r['step'] for r in recs)
    for h in heads:
        accs = [r['acc'][h] for r in recs]
        hs = s['heads'][h]
        assert STATS_KEYS <= set(hs) and len(hs['per_class']) == C
        assert hs['last'] == pytest.approx(accs[-1]) and hs['best'] == pytest.approx(max(accs))
        assert hs['mean_last20'] == pytest.approx(np.mean(accs[-20:]), abs=1e-3)
        assert hs['median_last20'] == pytest.approx(np.median(accs[-20:]), abs=1e-3)
        assert hs['per_class'] == pytest.approx(recs[-1]['per_class'][h], abs=1e-3)
        assert all(0 <= a <= 100 for a in hs['per_class'])
        for k, v in group_means(hs['per_class'], counts).items():
            assert hs[k] == (None if v is None else pytest.approx(v, abs=1e-3)), k
    assert {k: s[k] for k in STATS_KEYS} == {k: s['heads'][eval_head][k] for k in STATS_KEYS}
    assert read_json(os.path.join(run_dir, 'env.json'))['torch'] == torch.__version__
    ck = torch.load(os.path.join(run_dir, 'checkpoint.pt'), map_location='cpu', weights_only=False)
    assert ck['step'] == steps and 'model' in ck
    return s, recs, ck


# ================================================================================================
# LTSSL: every --alg, --bem, the mixing baselines, Fashion-MNIST
# ================================================================================================

def ltssl_argv(alg):
    """TINY for `alg`: --alg supervised takes no unlabeled recipe (--m1 is refused there, flags.SCOPE)."""
    i = TINY.index('--m1')
    return (TINY if alg != 'supervised' else TINY[:i] + TINY[i + 2:]) + ['--alg', alg]


@pytest.mark.parametrize('alg', ALGS)
def test_ltssl_alg_end_to_end(tmp_path, alg):
    run = run_train(ltssl_argv(alg), tmp_path / 'run')
    s, recs, ck = check_run(run, 2, HEADS[alg], EVAL_HEAD[alg], tiny_counts(), 2)
    assert s['task'] == 'ltssl' and 'ema' in ck
    assert read_json(run / 'args.json')['alg'] == alg
    assert all(math.isfinite(r['train']['loss']) for r in recs)


def check_bem_record(r):
    b = r['bem']
    for k in ('s_c', 'r_c', 'w_c'):
        assert len(b[k]) == C and all(math.isfinite(v) and v >= 0 for v in b[k]), k
    assert sum(b['s_c']) == pytest.approx(1, abs=1e-3)            # a distribution over classes
    assert sum(b['w_c']) == pytest.approx(C, abs=1e-2)            # ECB weights sum to C (E5)
    assert all(0 <= v <= 1 for v in b['r_c'])                     # a probability per class (E4)
    assert len(r['u_counts']) == C and len(r['u_entropy']) == C
    assert all(0 <= v <= math.log(C) + 1e-4 for v in r['u_entropy'])
    assert 0 <= r['box_area'] <= 1


@pytest.mark.parametrize('alg', ['fixmatch', 'la', 'abc', 'acr'])
def test_bem_end_to_end(tmp_path, alg):
    run = run_train(TINY + ['--alg', alg, '--bem'], tmp_path / 'run')
    _, recs, ck = check_run(run, 2, HEADS[alg], EVAL_HEAD[alg], tiny_counts(), 2)
    for r in recs:
        check_bem_record(r)
    # step 0 pushes the first CAM boxes; step 1 draws partners from the bank, so boxes were drawn
    assert recs[-1]['box_area'] > 0
    # unlabeled counts cover the truly unlabeled samples seen since the previous evaluation (u_real only)
    assert 0 < sum(recs[-1]['u_counts']) <= 8 * 1
    assert ck['bem'] is not None


@pytest.mark.parametrize('bank', ['--bank', '--no-bank'])
@pytest.mark.parametrize('mix', ['mixup', 'cutmix', pytest.param('saliencymix', marks=pytest.mark.skipif(
    not bem.has_saliency(), reason='cv2.saliency missing: this OpenCV is not the contrib build')), 'cammix'])
def test_mix_baselines(tmp_path, mix, bank):
    argv = TINY + ['--alg', 'fixmatch', '--mix', mix, bank, '--eval-every', '2']
    run = run_train(argv, tmp_path / 'run')
    _, recs, _ = check_run(run, 2, ['standard'], 'standard', tiny_counts(), 1)
    if bank == '--bank' and mix != 'mixup':
        assert recs[-1]['box_area'] > 0             # step 1 drew boxed partners from the bank


@needs_fmnist
@pytest.mark.parametrize('alg', ALGS)
def test_ltssl_fmnist(tmp_path, alg):
    argv = [a if a != 'synthetic' else 'fmnist' for a in ltssl_argv(alg)] + ['--eval-every', '2']
    run = run_train(argv, tmp_path / 'run')
    check_run(run, 2, HEADS[alg], EVAL_HEAD[alg], tiny_counts(), 1)


# ================================================================================================
# Learning and CamMix localisation (one FixMatch run shared by both tests)
# ================================================================================================

# Short-schedule settings (the defaults are for 250k steps):
#  --bn-momentum 0.1: BN running stats at 0.001 would still be ~90% initial values after 100 steps,
#                     so the evaluated (EMA) model would normalise with wrong statistics;
#  --ema 0.9:         an EMA of 0.999 averages over ~1000 steps, i.e. mostly the random init here;
#  --threshold 0.8:   lets pseudo-labels (Lu) take part within the run (0.95 is rarely reached this early);
#  balanced labels (--imb-l 1): the test is that the pipeline learns at all, not a long-tail result.
# The colour (2 groups) is learned within ~15 steps (20% accuracy, CE log 5); the shapes take longer: tried
# lr 0.1-0.3, batch 8-48, threshold 0.5-0.95, 45-150 steps; 32 labeled images a step for ~100 steps is the
# cheapest setting found that clears 40%. Measured: 33.5% at step 50, 55% at step 100, ~53 s CPU (one thread).
# SMALL_SYNTHETIC: 150 images per class (n1 60 + m1 90), 20 test images per class.
LEARN = conftest.COMMON + ['--dataset', 'synthetic', '--alg', 'fixmatch', '--width', '1', '--n1', '60', '--m1', '90',
                           '--imb-l', '1', '--batch-size', '32', '--iters', '100', '--eval-every', '50', '--lr', '0.1',
                           '--threshold', '0.8', '--bn-momentum', '0.1', '--ema', '0.9', '--log-every', '10']


@pytest.fixture(scope='module')
def learned(tmp_path_factory):
    out = tmp_path_factory.mktemp('learn') / 'run'
    t0, c0 = time.time(), time.process_time()
    run_train(LEARN, out, synthetic=SMALL_SYNTHETIC)
    return out, time.time() - t0, time.process_time() - c0


@pytest.mark.slow
def test_fixmatch_learns_synthetic(learned):
    run, wall, cpu = learned
    s, recs = read_json(run / 'summary.json'), read_metrics(run)
    print(f'FixMatch on synthetic: EMA top-1 {[r["acc"]["standard"] for r in recs]} in {wall:.0f} s wall, {cpu:.0f} s CPU')
    # chance is 10% +- 2.1% (binomial, 200 test images); colour alone gives at most 20%: 40% needs shapes
    assert s['last'] > 40
    assert recs[-1]['train']['Lx'] < math.log(C) - 0.5     # the labeled loss fell from log C
    assert sum(r['train']['mask'] for r in recs) > 0       # pseudo-labels took part


def box_iou(a, b):
    """IoU of boxes (x1, y1, x2, y2), x2/y2 exclusive, row by row."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def test_cammix_boxes_find_objects(learned):
    """CAM boxes (bem.cam_boxes at tau_c 0.5) of the trained EMA model, for each test image's true class,
    overlap the true object box far better than random boxes of the same sizes placed uniformly."""
    run = learned[0]
    ck = torch.load(run / 'checkpoint.pt', map_location='cpu', weights_only=False)
    net = models.wrn28(C, width=1, bn_momentum=0.1)
    net.load_state_dict(ck['ema'])
    net.eval()
    ds = conftest.small_synthetic(SMALL_SYNTHETIC)()          # the test set the run evaluated on
    x, y = torch.as_tensor(ds.test_x), torch.as_tensor(ds.test_y)
    with torch.no_grad():
        _, fmap = net(normalize(x, *data.STATS['synthetic']))
        box = bem.cam_boxes(bem.cam(fmap, net.heads[0].weight[y]), (32, 32), 0.5).numpy()
    iou = box_iou(box, ds.test_boxes).mean()
    rng = np.random.RandomState(0)
    w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    rand = []
    for _ in range(50):
        x1, y1 = rng.randint(0, 33 - w), rng.randint(0, 33 - h)
        rand.append(box_iou(np.stack([x1, y1, x1 + w, y1 + h], 1), ds.test_boxes).mean())
    rand = float(np.mean(rand))
    print(f'CamMix IoU {iou:.3f} vs random boxes of the same sizes {rand:.3f}; mean box area {np.mean(w * h) / 1024:.3f}')
    assert iou > 2 * rand and iou > rand + 0.15


# ================================================================================================
# Resume: killed or stopped runs end exactly where the uninterrupted run ends
# ================================================================================================

def assert_same_run(a, b):
    """Bit-identical: summary (timing aside), every metrics record, and the final weights."""
    sa, sb = read_json(a / 'summary.json'), read_json(b / 'summary.json')
    sa.pop('timing'), sb.pop('timing')
    assert sa == sb
    assert read_metrics(a) == read_metrics(b)
    ca, cb = (torch.load(d / 'checkpoint.pt', map_location='cpu', weights_only=False) for d in (a, b))
    for key in ('model', 'ema'):
        if key in ca:
            assert ca[key].keys() == cb[key].keys()
            for k in ca[key]:
                assert torch.equal(ca[key][k], cb[key][k]), f'{key}.{k} differs'


def test_resume_after_sigkill_ltssl_acr_bem(tmp_path):
    """SIGKILL a subprocess right after its first checkpoint, --resume in-process, compare."""
    argv = TINY + ['--alg', 'acr', '--bem', '--iters', '4', '--eval-every', '2']
    full = run_train(argv, tmp_path / 'full')
    killed = tmp_path / 'killed'
    proc = spawn_train(argv, killed)
    try:
        wait_for(lambda: (killed / 'checkpoint.pt').exists(), proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / 'summary.json').exists(), 'the run finished before the kill: nothing was resumed'
    run_train(argv + ['--resume'], killed)
    assert_same_run(full, killed)


class StopAfter:
    """runio.Stop stand-in: reports SIGTERM from the k-th step on (the loop reads .signal once per step),
    so the run checkpoints at step k, mid-epoch, through train.py's own stop path and exits 128 + 15."""

    def __init__(self, k):
        self.k, self.reads = k, 0

    @property
    def signal(self):
        self.reads += 1
        return signal.SIGTERM if self.reads >= self.k else None


@pytest.mark.parametrize('sampler', ['jitter-noreplace', 'jitter1'])
def test_resume_mid_epoch_lt(tmp_path, sampler):
    argv = TINY_LT + ['--sampler', sampler]       # 4 steps per epoch, 2 epochs
    full = run_train(argv, tmp_path / 'full', synthetic=LT_SYNTHETIC)
    part = tmp_path / 'part'
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runio, 'Stop', lambda: StopAfter(6))          # step 6 = the middle of epoch 2
        run_train(argv, part, expect=128 + signal.SIGTERM, synthetic=LT_SYNTHETIC)
    assert torch.load(part / 'checkpoint.pt', weights_only=False)['step'] == 6
    assert not (part / 'summary.json').exists()
    run_train(argv + ['--resume'], part, synthetic=LT_SYNTHETIC)
    assert_same_run(full, part)


# ================================================================================================
# LT task (jitter sampling, ResNet-32 / RIDE / LDAM)
# ================================================================================================

def lt_counts_here(n_max, imb):
    return [int(n_max * imb ** (-k / (C - 1))) for k in range(C - 1)] + [int(n_max / imb)]


def check_lt_records(recs, epochs):
    assert [r['epoch'] for r in recs] == list(range(1, epochs + 1))
    for r in recs:
        assert math.isfinite(r['delta'])
        assert len(r['class_probs']) == C and min(r['class_probs']) >= 0
        assert sum(r['class_probs']) == pytest.approx(1, abs=1e-3)


@pytest.mark.parametrize('extra', [
    ['--model', 'resnet32', '--sampler', 'jitter1'],
    ['--model', 'resnet32', '--sampler', 'jitter2', '--group-l2norm', 'multi'],
    ['--model', 'resnet32', '--sampler', 'jitter-noreplace'],
    ['--model', 'ride', '--experts', '2', '--loss', 'ride'],
    ['--model', 'resnet32', '--loss', 'ldam'],
], ids=['jitter1', 'jitter2-multi', 'jitter-noreplace', 'ride2', 'ldam'])
def test_lt_task(tmp_path, extra):
    run = run_train(TINY_LT + extra, tmp_path / 'run', synthetic=LT_SYNTHETIC)
    s, recs, _ = check_run(run, 8, ['model'], 'model', lt_counts_here(40, 40), 2)
    assert s['task'] == 'lt'
    check_lt_records(recs, 2)


def test_lt_instance_many_medium_few(tmp_path):
    """150 images in the head class at --imb 100: all three groups populated (means checked in check_run);
    instance-balanced sampling draws each class in proportion to its size, with no jitter."""
    argv = TINY_LT + ['--imb', '100', '--epochs', '1', '--batch-size', '64', '--sampler', 'instance']
    run = run_train(argv, tmp_path / 'run', synthetic=dict(n_per_class=150, n_test=4))
    counts = lt_counts_here(150, 100)
    s, recs, _ = check_run(run, math.ceil(sum(counts) / 64), ['model'], 'model', counts, 1)
    assert all(s[k] is not None for k in ('many', 'medium', 'few'))
    check_lt_records(recs, 1)
    assert recs[-1]['class_probs'] == pytest.approx(np.array(counts) / sum(counts), abs=1e-4)
    assert recs[-1]['delta'] == 0


@needs_fmnist
def test_lt_fmnist(tmp_path):
    argv = [a if a != 'synthetic' else 'fmnist' for a in TINY_LT] + ['--imb', '100', '--epochs', '1',
                                                                      '--batch-size', '64']
    run = run_train(argv, tmp_path / 'run')
    counts = lt_counts_here(conftest.FMNIST_TRAIN, 100)
    check_run(run, math.ceil(sum(counts) / 64), ['model'], 'model', counts, 1)


# ================================================================================================
# --check-data, and choices that change results without saying so
# ================================================================================================

def test_check_data(tmp_path, capsys):
    assert train.main(['--check-data', '--dataset', 'synthetic']) == 0
    capsys.readouterr()
    assert train.main(['--check-data', '--dataset', 'cifar10', '--data-dir', str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error:') and str(tmp_path) in err[0]
    assert not os.listdir(tmp_path)          # a check writes nothing
    if conftest.FMNIST_INSTALLED:            # found in the system directory whatever --data-dir says
        assert train.main(['--check-data', '--dataset', 'fmnist', '--data-dir', str(tmp_path)]) == 0


def test_eval_cadence_does_not_change_training(tmp_path):
    """Evaluating every step or only at the end must give the same trained state."""
    argv = TINY + ['--alg', 'acr', '--iters', '7']
    tiny_test = dict(n_per_class=120, n_test=1)                  # evaluations are not what is tested: 10 images
    a = run_train(argv + ['--eval-every', '1'], tmp_path / 'a', synthetic=tiny_test)
    b = run_train(argv + ['--eval-every', '7'], tmp_path / 'b', synthetic=tiny_test)
    ca, cb = (torch.load(d / 'checkpoint.pt', weights_only=False) for d in (a, b))
    assert float(ca['fw']['tau1']) == float(cb['fw']['tau1'])   # ACR's adaptive tau (epoch > 5)
    for k in ca['model']:
        assert torch.equal(ca['model'][k], cb['model'][k])


def test_run_files_follow_umask(tmp_path):
    runio.write_json(str(tmp_path / 'a.json'), {'x': 1})
    with open(tmp_path / 'b.json', 'w') as f:
        f.write('{}')
    assert (os.stat(tmp_path / 'a.json').st_mode & 0o777) == (os.stat(tmp_path / 'b.json').st_mode & 0o777)
