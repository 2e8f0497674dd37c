"""bench.py: the --quick run prints both pipelines with a ratio, and pipeline (b) is a fair reference.

Fairness: the real training step (a) and the reference step (b) are fed the SAME augmented views, made
once with reference.py's PIL transforms (uint8 to (a) through its augmentation hooks, ToTensor+Normalize
floats to (b) through its DataLoader's output format), with identical weights and generator states. In
fp32 on CPU the losses must agree to 1e-5 relative (the only difference is (b)'s interleave, a
permutation that changes BatchNorm's summation order). On CUDA (a) runs under bf16 autocast and (b) in
fp32/TF32: there we would use rtol=5e-2 (bf16 keeps 8 mantissa bits, ~0.4% per rounding, through 28
layers). The boxes: bem.cam_boxes' device mode ((a) on CUDA) is checked against its cv2 mode ((b)'s host
CamMix, cv2 CCL_WU: the oracle), and (a)'s bank against (b)'s after each step.
"""
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import augment
import bem
import bench
import data
import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quick_run_prints_both_pipelines_and_ratio(tmp_path):
    out = tmp_path / 'bench.json'
    p = subprocess.run([sys.executable, 'bench.py', '--quick', '--threads', '1', '--json', str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    text = p.stdout
    assert 'ratio (b)/(a)' in text and '(a) this repo' in text and '(b) reference' in text
    assert 'QUICK' in text.splitlines()[0] and 'WRN-28-1' in text.splitlines()[0]   # reductions are stated
    for name in ('FixMatch+ACR+BEM', 'LT ResNet-32 jitter1', 'augmentation', 'BEM added ms/step'):
        assert name in text
    res = json.loads(out.read_text())
    assert len(res['configs']) == 7                       # 3 LTSSL configs x mu {1,2} + LT
    for r in res['configs']:
        for p_ in 'ab':
            assert r[p_]['median_ms'] > 0 and r[p_]['flops_per_step'] > 0
        assert r['ratio'] == pytest.approx(r['b']['median_ms'] / r['a']['median_ms'])
    assert res['augmentation']['pil_us_1t'] > 0


# ------------------------------------------------------------------------------------------------
# Loss parity of (a) and (b) on fixed views
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def ds():
    return data.make_synthetic(n_per_class=40, n_test=4, seed=0)


def _u8(pils):
    return torch.stack([torch.from_numpy(np.asarray(p).copy()).permute(2, 0, 1) for p in pils])


def _pil(x_u8):
    from PIL import Image
    return [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in x_u8]


class Feed:
    """Hands (a) the fixed views in train_step's call order, checking it asks for the right images."""

    def __init__(self, monkeypatch):
        self.queue = []
        monkeypatch.setattr(augment, 'weak', self._pop)
        monkeypatch.setattr(augment, 'strong', self._pop)
        # the fed views need no draws: then the task's generator serves BEM's (and ABC's) draws alone, as (b)'s does
        monkeypatch.setattr(augment, 'draw_weak', lambda *a, **k: None)
        monkeypatch.setattr(augment, 'draw_strong', lambda *a, **k: None)
        monkeypatch.setattr(data, 'lt_view', lambda x, gen, degrees=15.0: self._pop(x, gen))

    def _pop(self, x, gen, *_, **__):   # weak(x, gen, padding) for the labeled view
        src, view = self.queue.pop(0)
        assert torch.equal(x, src), 'train_step asked for other images than the ones fed'
        return view


def _loss_a(task):
    task.log_sums, task.log_n = {}, 0
    if hasattr(task, 'ipe'):
        next(task.steps())                         # LT: one step inside the task's own epoch loop
    else:
        task.train_step()                          # LTSSL: at step 3001 of --iters 1000, past the loop's end
    return float(task.log_sums['loss'])


@pytest.mark.parametrize('alg,bem_on', [('fixmatch', False), ('acr', True)])
def test_ltssl_reference_step_computes_the_same_loss(ds, monkeypatch, alg, bem_on):
    B, mu = 4, 1
    argv = ['--task', 'ltssl', '--dataset', 'synthetic', '--device', 'cpu', '--alg', alg, '--batch-size', str(B),
            '--mu', str(mu), '--width', '1', '--n1', '30', '--m1', '10', '--imb-l', '10', '--iters', '1000',
            '--threshold', '0.12']   # low threshold: untrained logits pass it, so the unlabeled terms count
    task = bench.build_task(argv + (['--bem'] if bem_on else []), ds)
    ref = reference.RefLTSSL(task, workers=0)
    task.step = ref.step = 3001          # past ACR est_epoch / BEM est_start: every statistic update runs
    task.step_t.fill_(task.step)
    feed, V = Feed(monkeypatch), task.V
    t = reference.TransformFixMatch(task.mean, task.std)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    for k in range(2):                   # step 2 draws CamMix partners from the bank step 1 filled
        il, iu = torch.arange(B) + k * B, torch.arange(mu * B) + k * mu * B
        x, u = task.lab_x[il], task.unl_x[iu]
        xl, uw = [t.weak(p) for p in _pil(x)], [t.weak(p) for p in _pil(u)]
        us = [t.strong(p) for _ in range(V) for p in _pil(u)]                  # view-major, like u.repeat(V)
        monkeypatch.setattr(task.lab_sampler, 'next', lambda il=il: il)
        monkeypatch.setattr(task.unl_sampler, 'next', lambda iu=iu: iu)
        feed.queue = [(x, _u8(xl)), (u, _u8(uw)), (u.repeat(V, 1, 1, 1), _u8(us))]
        ref.gen.set_state(task.gen.get_state())   # BEM's bank draw is the only generator use left
        loss_a = _loss_a(task)
        norm = lambda pils: torch.stack([t.normalize(p) for p in pils])  # noqa: E731
        loss_b, _ = ref.step_on(norm(xl), task.lab_y[il], norm(uw), norm(us), task.u_real[iu])
        assert not feed.queue and float(task.log_sums['mask']) > 0
        assert loss_a == pytest.approx(loss_b, rel=1e-5, abs=1e-7), f'step {k}'
        if bem_on:   # same bank: (a)'s device CCL boxes vs (b)'s cv2 boxes, uint8 vs normalised images
            a_bank, b_bank = task.bem, ref.bem
            assert torch.equal(a_bank.filled, b_bank.filled) and a_bank.filled.sum() > 0
            assert torch.equal(a_bank.bank_box, b_bank.bank_box)
            full = a_bank.bank_box[:-1].abs().sum(1) > 0
            assert torch.equal(augment.normalize(a_bank.bank_img, task.mean, task.std)[:-1][full],
                               b_bank.bank_img[:-1][full])


def test_lt_reference_step_computes_the_same_loss(ds, monkeypatch):
    argv = ['--task', 'lt', '--dataset', 'synthetic', '--device', 'cpu', '--model', 'resnet32', '--sampler', 'jitter1',
            '--batch-size', '8', '--imb', '10']
    task = bench.build_task(argv, ds)
    ref = reference.RefLT(task, workers=0)
    feed = Feed(monkeypatch)
    pil_ops = ref.transform.transforms[:-2]            # RandomCrop, Flip, Rotation (PIL); then ToTensor+Normalize
    torch.manual_seed(0)
    for k in range(2):
        idx = torch.arange(8) * 3 + k
        views = []
        for p in _pil(task.train_x[idx]):
            for op in pil_ops:
                p = op(p)
            views.append(p)
        monkeypatch.setattr(task.sampler, 'next_batch', lambda idx=idx: idx)
        feed.queue = [(task.train_x[idx], _u8(views))]
        loss_a = _loss_a(task)
        x_b = torch.stack([ref.transform.transforms[-1](ref.transform.transforms[-2](p)) for p in views])
        loss_b, _ = ref.step_on(x_b, task.train_y[idx])
        assert loss_a == pytest.approx(loss_b, rel=1e-5, abs=1e-7), f'step {k}'


def test_host_cv2_boxes_equal_device_boxes():
    """(b)'s host CamMix (bem.cam_boxes mode='cv2': cv2 CCL_WU per sample, the oracle) against (a)'s CUDA path
    (mode='device': batched labelling, run here on CPU tensors) on the same smooth random CAMs."""
    g = torch.Generator().manual_seed(0)
    cams = torch.nn.functional.avg_pool2d(torch.randn(64, 1, 10, 10, generator=g), 3, 1)[:, 0]   # [64,8,8]
    for tau in (0.3, 0.5, 0.7):
        device = bem.cam_boxes(cams, (32, 32), tau, mode='device')
        assert torch.equal(device, bem.cam_boxes(cams, (32, 32), tau, mode='cv2'))
        assert (device[:, 2:] > device[:, :2]).all()   # every CAM has a non-empty largest component


# ------------------------------------------------------------------------------------------------
# Targets (issue 13): PASS/FAIL per (a) row with the figure; INFO off the target's setting
# ------------------------------------------------------------------------------------------------

def _res(ms_eager, ms_compiled, ms_ref):
    row = lambda ms: {'median_ms': ms}   # noqa: E731
    return {'configs': [{'key': 'acr_bem', 'mu': 1, 'a': row(ms_eager), 'a_compile': row(ms_compiled), 'b': row(ms_ref),
                         'ratio': ms_ref / ms_eager, 'ratio_compile': ms_ref / ms_compiled}]}


def test_targets_judge_each_row_at_the_target_setting_only():
    full = bench.fill_defaults(bench.build_parser().parse_args(['--modes', 'eager,compile']))
    lines = bench.targets(_res(5.0, 3.5, 16.0), full, torch.device('cuda'))
    # eager 5.0 ms (> 4: FAIL), 3.2x (< 4: FAIL); compiled 3.5 ms (PASS), 16/3.5 = 4.57x (PASS)
    assert [line.split(':')[0] for line in lines] == ['FAIL', 'FAIL', 'PASS', 'PASS']
    assert '5.00 ms/step' in lines[0] and '3.20x' in lines[1] and '4.57x' in lines[3]
    quick = bench.fill_defaults(bench.build_parser().parse_args(['--quick', '--modes', 'eager,compile']))
    assert all(line.startswith('INFO') for line in bench.targets(_res(5.0, 3.5, 16.0), quick, torch.device('cpu')))


def test_bad_modes_is_one_line_exit_2():
    p = subprocess.run([sys.executable, 'bench.py', '--quick', '--modes', 'eager,jit'], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count('\n') == 1 and 'eager,compile' in p.stderr, p.stderr


def test_gpu_check_without_a_gpu_exits_2_in_one_line(tmp_path):
    """Not SMOKE, no visible CUDA device: one line, exit 2, in seconds, and no report of CPU numbers."""
    import os
    import subprocess
    import time
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', SMOKE='0', OUT=str(tmp_path / 'gpu_check'))
    t0 = time.time()
    r = subprocess.run(['bash', os.path.join(root, 'reproduce', 'gpu_check.sh')], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and time.time() - t0 < 30, (r.returncode, r.stderr)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1 and 'no CUDA device' in lines[0] and 'Traceback' not in r.stderr, lines
    assert not os.path.exists(env['OUT'])


# ------------------------------------------------------------------------------------------------
# A run killed mid-way keeps what it measured; a compiled row that fails is one entry (issue 21 item 4)
# ------------------------------------------------------------------------------------------------

TINY = [sys.executable, 'bench.py', '--quick', '--threads', '1', '--steps', '2', '--warmup', '1', '--no-aug',
        '--eval-images', '8', '--mu', '1']


def test_json_holds_the_first_row_when_killed_after_it(tmp_path):
    out = tmp_path / 'bench.json'
    p = subprocess.Popen(TINY + ['--configs', 'acr_bem,fixmatch,acr', '--json', str(out)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in p.stdout:          # the progress line of the first row is printed after its JSON is written
            if line.startswith('  FixMatch+ACR+BEM mu=1: (a)'):
                break
        p.kill()                       # SIGKILL: no handler, no final write
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    res = json.loads(out.read_text())
    assert [r['key'] for r in res['configs']] == ['acr_bem'] and res['header'].startswith('bench: ')
    ms = res['configs'][0]['a']['median_ms']
    assert ms > 0 and res['configs'][0]['b']['median_ms'] > 0
    # the targets of what was measured so far: the eager row's own figure, judged INFO off the GPU
    assert res['targets'][0].startswith('INFO: target <= 4 ms/step') and f'{ms:.2f} ms/step' in res['targets'][0]
    assert not list(tmp_path.glob('.tmp-*'))   # the atomic writer left no temporary file


@pytest.mark.slow   # 11-21 s on 2 loaded cores: two eager rows, (b) and a child process
def test_failed_compiled_row_is_one_entry_and_the_run_goes_on(tmp_path):
    out = tmp_path / 'bench.json'
    env = dict(os.environ, BENCH_FAIL_COMPILE='acr_bem')
    p = subprocess.run(TINY + ['--configs', 'acr_bem,fixmatch', '--modes', 'eager,compile', '--compile-configs',
                               'acr_bem', '--json', str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    bem_row, fm = res['configs']
    assert bem_row['a_compile'] == {'error': 'RuntimeError: injected compile failure (BENCH_FAIL_COMPILE=acr_bem)'}
    assert 'ratio_compile' not in bem_row and fm['key'] == 'fixmatch' and fm['a']['median_ms'] > 0
    assert any(t.startswith('SKIP: targets') and 'FAILED RuntimeError' in t for t in res['targets'])
    table = p.stdout.split('breakdown of (a)')[0]
    assert table.count('FixMatch+ACR+BEM mu=1 compiled: FAILED RuntimeError: injected') == 1
    assert 'second line' not in p.stdout and 'Traceback' not in p.stdout + p.stderr


def test_compiled_row_past_its_cap_is_a_timeout():
    args = bench.fill_defaults(bench.build_parser().parse_args(['--quick', '--modes', 'eager,compile']))
    t0 = time.perf_counter()
    row = bench.isolated_compiled_row('fixmatch', 1, args, 1.0, cap=0.5)   # the child's imports alone outlast it
    assert row == {'error': 'TIMEOUT after 0.5 s (--compile-timeout-s)'} and time.perf_counter() - t0 < 10


def test_compile_timeout_needs_the_isolated_rows():
    with pytest.raises(bench.flags.UsageError, match='--modes eager,compile'):
        bench.fill_defaults(bench.build_parser().parse_args(['--quick', '--compile-timeout-s', '30']))


def test_compiler_notes_name_what_the_compiler_did_not_do():
    """A compiled row's counters and stderr become report lines; a clean row has none."""
    import bench
    assert bench.compiler_notes('W ... some other warning\n', {'graphs': 3, 'cudagraph_skips': 0}) == []
    err = ('W1207 torch/_dynamo/convert_frame.py] torch._dynamo hit config.recompile_limit (8)\n'
           'W1207 torch/_dynamo/convert_frame.py] torch._dynamo hit config.recompile_limit (8)\n')
    notes = bench.compiler_notes(err, {'graphs': 9, 'cudagraph_skips': 2})
    assert notes[0].startswith('CUDA graphs skipped 2 time(s)') and notes[1].startswith('9 graphs (3 expected')
    assert notes[2].endswith('recompile_limit (8)') and len(notes) == 3       # the repeated line once
