"""The plug-ins used as a user would (issue 22): each example runs with its one copied file alone, and BEM's two
calls in a hand-written FixMatch / ACR loop give what LTSSLTask.train_step gives on the same batch, model and draws.

Oracles: the user's loop written out here from bem.BEM's docstring (the calls and nothing else), run on an
identically built second task; for the examples, a fresh interpreter that can import no other module of this repo."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import augment
import flags
import train
from conftest import ROOT, patch_small_data, TINY_SYNTHETIC

REPO_MODULES = ('data', 'train', 'ltssl', 'models', 'augment', 'flags', 'runio', 'ride', 'ddp', 'report', 'bench',
                'reference') + ('jitter', 'bem')


@pytest.mark.parametrize('example,module,argv,expect', [
    ('fixmatch_bem.py', 'bem', ['--steps', '12'], 'test top-1'),
    ('lt_jitter.py', 'jitter', ['--epochs', '2'], 'sampler jitter2'),
])
def test_example_runs_with_its_one_file_alone(tmp_path, example, module, argv, expect):
    shutil.copy(os.path.join(ROOT, 'examples', example), tmp_path)
    shutil.copy(os.path.join(ROOT, f'{module}.py'), tmp_path)
    others = [m for m in REPO_MODULES if m != module]
    code = textwrap.dedent(f'''
        import runpy, sys
        sys.argv = [{example!r}] + {argv!r}
        runpy.run_path({example!r}, run_name='__main__')
        loaded = [m for m in {others!r} if m in sys.modules]
        assert not loaded, loaded
        assert sys.modules[{module!r}].__file__.startswith({str(tmp_path)!r})
        print('ALONE OK')
    ''')
    env = {'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'OMP_NUM_THREADS': '2'}
    r = subprocess.run([sys.executable, '-s', '-E', '-c', code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert expect in r.stdout and r.stdout.strip().endswith('ALONE OK'), r.stdout


def _task(alg, monkeypatch):
    argv = ['--dataset', 'synthetic', '--device', 'cpu', '--alg', alg, '--bem', '--width', '1', '--batch-size', '8',
            '--n1', '40', '--m1', '80', '--imb-l', '10', '--iters', '100', '--threshold', '0.3', '--seed', '1']
    args = flags.resolve(flags.build_parser().parse_args(argv))
    patch_small_data(monkeypatch, TINY_SYNTHETIC)
    import data
    torch.manual_seed(0)
    return train.LTSSLTask(args, data.load_dataset('synthetic'), torch.device('cpu'), lambda *a, **k: None)


def _user_step(t, r):
    """One step as a user's loop writes it with the plug-in (bem.BEM's docstring): augment, before_forward, one
    forward, the framework's loss on the Mix records, after_forward, backward, SGD. -> (mixed, mixes, logs)."""
    xl, yl = augment.weak(t.lab_x[r['il']], r['weak_l']), t.lab_y[r['il']]
    u = t.unl_x[r['iu']]
    uw, us = augment.weak(u, r['weak_u']), augment.strong(u.repeat(t.V, 1, 1, 1), r['strong'])
    mixed, mixes = t.bem.before_forward(us, rand=r['bem'], u_w=uw)
    logits, fmap = t.model(augment.normalize(torch.cat([xl, uw, mixed]), t.mean, t.std))
    Bl, Bu = len(xl), len(uw)
    if t.args.alg == 'fixmatch':     # FixMatch written out, not ltssl's: the docstring's loop
        z_l, z_w, z_s = logits[0].split([Bl, Bu, t.V * Bu])
        conf, q = torch.softmax(z_w.detach(), dim=1).max(1)
        mask = conf.ge(t.args.threshold).float()
        L_x, L_u = F.cross_entropy(z_l, yl), mixes[0].loss(z_s, q, mask).mean()
        logs, loss, stats = {'Lx': L_x, 'Lu': L_u}, L_x + L_u, {}
    else:                            # ACR: its framework's loss takes the Mix records
        zs = logits[:, Bl + Bu:].reshape(2, t.V, Bu, -1).transpose(0, 1)
        loss, logs, pl = t.fw.loss(logits[:, :Bl], yl, logits[:, Bl:Bl + Bu], zs, t.u_real[r['iu']], t.step_t,
                                   r['fw'], mixes)
        q, mask = pl['q'], pl['mask']
        stats = dict(stat_logits_l=logits[1, :Bl].detach(), stat_logits_w=logits[1, Bl:Bl + Bu].detach(),
                     stat_q=pl['q_est'], stat_mask=pl['mask_est'])
    f_l, f_w, _ = fmap.split([Bl, Bu, t.V * Bu])
    t.bem.after_forward(t.step_t, x_l=xl, y_l=yl, logits_l=logits[0, :Bl], logits_w=logits[0, Bl:Bl + Bu], u_w=uw,
                        q_u=q, mask_u=mask, fmap_l=f_l, fmap_w=f_w, u_real=t.u_real[r['iu']],
                        head_weight=t.model.heads[0].weight, **stats)
    t.opt.zero_grad()
    loss.backward()
    t.opt.step()
    return mixed, mixes, logs


@pytest.mark.parametrize('alg', ['fixmatch', 'acr'])
def test_plugin_calls_equal_train_step(alg, monkeypatch):
    a, b = _task(alg, monkeypatch), _task(alg, monkeypatch)
    for t in (a, b):                 # fill the bank, so the compared step mixes
        for _ in range(3):
            t.train_step()
        t.step_t.fill_(400)          # past ACR's est_epoch (5 x 500 / 10): every estimate runs
    r = a.draw()
    b.draw()                         # b's generator follows a's
    seen = {}
    real_before = a.bem.before_forward

    def spy(*args, **kw):
        seen['mixed'], seen['mixes'] = out = real_before(*args, **kw)
        return out
    monkeypatch.setattr(a.bem, 'before_forward', spy)
    a.log_sums = {}
    a.opt.zero_grad(set_to_none=True)   # what train_step does before the step's math
    a.math_step(r)
    mixed, mixes, logs = _user_step(b, r)
    assert torch.equal(seen['mixed'], mixed) and not torch.equal(mixed, b.unl_x[r['iu']].repeat(b.V, 1, 1, 1))
    for m_a, m_b in zip(seen['mixes'], mixes):
        assert torch.equal(m_a.lam, m_b.lam) and torch.equal(m_a.y_src, m_b.y_src) and (m_a.lam < 1).any()
        assert torch.equal(m_a.w, m_b.w)
    for k in ('Lx', 'Lu'):
        assert float(a.log_sums[k]) == pytest.approx(float(logs[k].detach()), rel=1e-6), k
    for k in ('bank_img', 'bank_box', 'filled', 'e_x', 'e_u', 'acc_mass'):
        assert torch.allclose(getattr(a.bem, k).double(), getattr(b.bem, k).double(), rtol=1e-6), k
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)


def test_readme_loops_are_the_examples_code():
    """The README's two loops are cut from the examples (dedented), so they cannot drift from the code that runs."""
    import re
    import textwrap
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = open(os.path.join(root, 'README.md'), encoding='utf-8').read()
    sec = readme[readme.index('## Use BEM / jitter sampling in your own code'):]
    blocks = re.findall(r'```python\n(.*?)```', sec[:sec.index('\n## ', 5)], re.S)
    assert len(blocks) == 2
    for block, name in zip(blocks, ('fixmatch_bem.py', 'lt_jitter.py')):
        src = open(os.path.join(root, 'examples', name), encoding='utf-8').read().split('\n')
        first = block.split('\n')[0]
        i = next(k for k, line in enumerate(src) if line.strip() == first.strip())
        n = block.rstrip('\n').count('\n') + 1
        assert textwrap.dedent('\n'.join(src[i:i + n])) == block.rstrip('\n'), name
