"""Every configuration the reproduce/ scripts run, one step each at the epochs where behaviour switches, on a CUDA
device that does not exist (tests/cuda_standin.py): a tensor left on the CPU, a host sync or a draw that does not take
the step's generator fails here as it would on the first GPU run (issue 21).

The configurations are read from the scripts' DRY_RUN plans, so a cell added to a table is covered without a line
here. `make test` runs one configuration per code path (CORE); `make test-slow` runs every distinct command line.
"""
import os
import pathlib
import re
import subprocess
import tempfile

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError

import cuda_standin as cs
import data
import flags
import ride
import train
from test_imagenet_lt import write_tree

REPRO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'reproduce')
SCRIPTS = ('bem_table1', 'bem_table2', 'bem_table3', 'bem_table4', 'bem_table5', 'bem_fig1', 'bem_fig_cammix',
           'jitter_table1', 'jitter_table2', 'jitter_table3', 'jitter_table4', 'jitter_table5')
VALUE_FLAGS = {'--out', '--seed', '--data-dir'}          # where and which seed: not the step's code path


def plan_configs(tmp):
    """The distinct train.py command lines (minus --out/--seed/--data-dir) of every table script's DRY_RUN plan."""
    env = dict(os.environ, DRY_RUN='1', RUNS=str(tmp / 'runs'), RESULTS=str(tmp / 'res'))
    seen = {}
    for name in SCRIPTS:
        out = subprocess.run(['bash', os.path.join(REPRO, f'{name}.sh')], capture_output=True, text=True, env=env,
                             timeout=60, check=True).stdout
        for line in re.findall(r'train\.py (--task .*)', out):
            words, argv = line.split(), []
            for i, w in enumerate(words):
                if w in VALUE_FLAGS or (i and words[i - 1] in VALUE_FLAGS):
                    continue
                argv.append(w)
            seen.setdefault(' '.join(argv), name)
    return seen


def code_path(argv):
    """What decides which code a step runs: the command line without the long tail's counts, the width, the
    length and the image size; CIFAR-10 and -100 alike, RIDE's reduce or not, jitter Method 1 or 2 (one class)."""
    argv = re.sub(r' --(imb|imb-l|imb-u|n1|m1|setting|width|epochs|img-size) \S+', '', argv)
    argv = re.sub(r' --sampler jitter[12]\b', ' --sampler jitter-with-replacement', argv)
    return argv.replace('cifar100', 'cifar10').replace(' --no-reduce', '').replace(' --reduce', '')


@pytest.fixture(scope='module')
def inet_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp('inet')
    write_tree(str(root))
    return str(root)


def resolve(argv, extra=()):
    # ImageNet-LT streams JPEGs from a 30-image tree: 16 a batch, decoded in the test's process
    inet = ['--workers', '0', '--batch-size', '16'] if 'imagenet_lt' in argv else []
    argv = argv.split() + list(extra) + ['--device', 'cuda'] + inet
    return flags.resolve(flags.build_parser().parse_args(argv), flags.given_flags(argv))


def build(a, inet_tree, monkeypatch):
    """The run's task, built inside the stand-in (its tensors are fake CUDA tensors)."""
    dev, log = torch.device('cuda'), lambda *k, **kw: None
    if a.task == 'ltssl':
        ds = cs.standin_dataset(a.dataset, img_size=a.img_size)
        return train.LTSSLTask(a, ds, dev, log)
    if a.dataset == 'imagenet_lt':
        ds = data.load_imagenet_lt(inet_tree)
        monkeypatch.setattr(train.ImageNetLTTask, 'ds_labels', ds.train_y, raising=False)  # cs.host_sampler's
        return train.ImageNetLTTask(a, ds, dev, log)
    return train.LTTask(a, cs.standin_dataset(a.dataset), dev, log)


def switch_points(task, a):
    """(epoch or None, step) to run a step at: the first step, and where behaviour switches. LT: the DRW epoch
    (margins, DRW weights, class temperatures, the end of jitter) and the epoch δt is fixed from. LTSSL: the step
    where ACR's estimate and BEM's Eq. 3 estimate start (their branches are torch.where on the step, so every
    branch runs at every step; the later step still checks the values' path through the schedule)."""
    if a.task == 'lt':
        epochs = {0, flags.drw_epoch(a)} | ({a.delta_fixed_from} if a.delta_fixed_from is not None else set())
        return [(e, e * task.ipe) for e in sorted(epochs)]
    starts = [0, 6 * a.epoch_steps]                                    # BEM: d^u from epoch 6 (bem.py est_start)
    if a.alg == 'acr':
        starts.append((a.est_epoch + 1) * a.epoch_steps)
    return [(None, s) for s in sorted(set(starts))]


def run_standin(monkeypatch, argv, inet_tree, extra=(), after_build=None):
    """Build the run's task and take one step at each switch point and one evaluation, all on the stand-in.
    Returns what the generator seam was asked for, the generators it handed out, the draws and the evaluation's confusion counts."""
    a = resolve(argv, extra)
    handed = []
    with cs.fake_cuda(monkeypatch) as seen:
        real_seam = train.make_generator
        monkeypatch.setattr(train, 'make_generator', lambda d, s: handed.append(real_seam(d, s)) or handed[-1])
        cs.host_sampler(monkeypatch)
        task = build(a, inet_tree, monkeypatch)
        cs.no_backward(task, monkeypatch)
        if after_build:
            after_build(task)
        seen['draws'].generators.clear(), seen['draws'].unseeded.clear()     # model init draws from the global RNG
        for epoch, step in switch_points(task, a):
            task.step = step
            task.step_t.fill_(step)
            if epoch is not None:
                task.start_epoch(epoch)
            task.train_step()
        counts = task.confusion()
    return seen, handed, counts


def check(seen, handed, counts):
    """The step's generator was asked for the CUDA device (ImageNet-LT's sampler also asks for a host one: its
    indices go to the JPEG workers), every draw took a generator of the seam, none the global RNG."""
    asked = [d.type for d in seen['seam']]
    assert asked and asked[0] == 'cuda' and asked.count('cpu') <= 1 and set(asked) <= {'cuda', 'cpu'}, asked
    gens = [g for _, g in seen['draws'].generators]
    assert all(any(g is h for h in handed) for g in gens), 'a draw took a generator the seam did not make'
    assert not seen['draws'].unseeded, f'draws from the global RNG inside the step: {seen["draws"].unseeded[:3]}'
    assert counts.device.type == 'cuda' and counts.dim() == 3 and counts.shape[1] == counts.shape[2]   # [H,C,C]


def core_configs(plans):
    """One command line per code path (first seen), the set `make test` runs."""
    first = {}
    for argv in plans:
        first.setdefault(code_path(argv), argv)
    return sorted(first.values())


def test_the_plans_cover_both_tasks_and_every_method(plans):
    """The oracle for 'every configuration': the plans hold both tasks, the four frameworks, BEM and its ablations,
    the mixing baselines, RIDE and LDAM-DRW with every sampler, ImageNet-127 and ImageNet-LT."""
    text = '\n'.join(plans)
    for part in ('--task lt', '--task ltssl', '--alg fixmatch', '--alg la', '--alg abc', '--alg acr', '--bem',
                 '--mix cutmix', '--mix mixup', '--mix saliencymix', '--no-bank', '--model ride',
                 '--model resnet32', '--sampler jitter1', '--sampler jitter2', '--sampler jitter-noreplace',
                 '--sampler instance', '--sampler shuffle', '--dataset imagenet127', '--dataset imagenet_lt',
                 '--dataset stl10', '--group-l2norm multi'):
        assert part in text, part
    assert len(core_configs(plans)) < len(plans)


def _read_plans():
    """The plans, read once at collection (a second of bash): the tests are parametrised over them."""
    with tempfile.TemporaryDirectory() as tmp:
        return plan_configs(pathlib.Path(tmp))


PLANS = _read_plans()


@pytest.fixture
def plans():
    return PLANS


def _params(slow):
    core = set(core_configs(PLANS))
    return [pytest.param(argv, id=argv.replace('--', '').replace(' ', '_'))
            for argv in sorted(PLANS) if (argv not in core) == slow]


CORE, REST = _params(slow=False), _params(slow=True)


@pytest.mark.parametrize('argv', CORE)
def test_step_on_the_standin(argv, monkeypatch, inet_tree):
    check(*run_standin(monkeypatch, argv, inet_tree))


@pytest.mark.slow
@pytest.mark.parametrize('argv', REST)
def test_step_on_the_standin_every_cell(argv, monkeypatch, inet_tree):
    check(*run_standin(monkeypatch, argv, inet_tree))


# ------------------------------------------------------------------------------------------------
# The stand-in catches what it is for: a tensor left on the CPU, a draw outside the seam, a host sync
# ------------------------------------------------------------------------------------------------

RIDE_LDAM = '--task lt --model ride --experts 4 --loss ride --reduce --sampler instance --ride-stage1 ldam --dataset cifar100'
RIDE_CE = '--task lt --model ride --experts 4 --loss ride --reduce --sampler jitter1 --dataset cifar100'
JITTER_L2 = '--task lt --model resnet32 --sampler jitter2 --group-l2norm multi --dataset cifar10'
LDAM = '--task lt --model resnet32 --loss ldam --dataset cifar10'        # LDAM-DRW itself (no table runs it alone)
ACR_BEM = '--task ltssl --alg acr --bem --dataset cifar10'


@pytest.mark.parametrize('argv', [RIDE_LDAM, RIDE_CE, LDAM])
def test_a_criterion_left_on_the_cpu_fails(argv, monkeypatch, inet_tree):
    """main at 1c3e3b6 never moved the LT criterion to the device: its margins, DRW weights and temperatures stayed
    on the CPU. The stand-in fails then at the first step (LDAM margins) or at the DRW epoch (RIDE with CE in
    stage 1), as the first GPU run would have."""
    for cls in (ride.RIDELoss, ride.LDAMLoss):
        monkeypatch.setattr(cls, 'to', lambda self, *k, **kw: self)
    with pytest.raises(FakeTensorDeviceMismatchError):
        run_standin(monkeypatch, argv, inet_tree)


@pytest.mark.parametrize('argv, where', [
    (ACR_BEM, lambda t: t.bem.__setattr__('filled', t.bem.filled.cpu())),          # BEM's bank state
    (ACR_BEM, lambda t: t.fw.__setattr__('u_py', t.fw.u_py.cpu())),                # ACR's d^u estimate
    (ACR_BEM, lambda t: t.__setattr__('lab_y', t.lab_y.cpu())),                    # the labeled set
    (JITTER_L2, lambda t: t.__setattr__('train_x', t.train_x.cpu())),              # the LT training images
])
def test_any_tensor_left_on_the_cpu_fails(argv, where, monkeypatch, inet_tree):
    with pytest.raises(RuntimeError, match='device'):
        run_standin(monkeypatch, argv, inet_tree, after_build=where)


def test_a_draw_outside_the_seam_is_caught(monkeypatch, inet_tree):
    """A generator made outside train.make_generator (a CUDA one cannot exist here; on a GPU a CPU one is refused)."""
    stray = torch.Generator().manual_seed(0)
    seen, handed, counts = run_standin(monkeypatch, ACR_BEM, inet_tree, after_build=lambda t: setattr(t, 'gen', stray))
    with pytest.raises(AssertionError, match='seam did not make'):
        check(seen, handed, counts)


def test_a_host_sync_in_the_step_fails(monkeypatch, inet_tree):
    """A data-dependent op in the step (here .item() on BEM's bank fill, as a naive 'is the bank empty?' would)."""
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode
    from torch._subclasses.fake_tensor import DataDependentOutputException
    import bem
    real = bem.BEM.sampling_probs
    monkeypatch.setattr(bem.BEM, 'sampling_probs', lambda self: real(self) * (1 if self.filled.sum().item() else 0))
    with pytest.raises((DataDependentOutputException, GuardOnDataDependentSymNode, RuntimeError)):
        run_standin(monkeypatch, ACR_BEM, inet_tree)


def test_a_missing_cv2_saliency_is_a_named_refusal(monkeypatch):
    """The GPU machine has opencv-python-headless, not the contrib build: --mix saliencymix is refused up front
    (one line naming the package), not a crash at the first step."""
    import bem
    import runio
    monkeypatch.setattr(bem, 'has_saliency', lambda: False)
    with pytest.raises(runio.UsageError, match='opencv-contrib-python-headless') as e:
        resolve('--task ltssl --alg acr --bem --mix saliencymix --dataset cifar10')
    assert '\n' not in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize('argv', CORE)
def test_each_configuration_fails_with_one_tensor_on_the_cpu(argv, monkeypatch, inet_tree):
    """The stand-in has teeth for every code path: the same step with one of the task's tensors left on the CPU
    (the labeled set's labels; LT: the training labels; ImageNet-LT: the per-class draw counter) raises."""
    name = 'lab_y' if '--task ltssl' in argv else 'drawn' if 'imagenet_lt' in argv else 'train_y'
    with pytest.raises(RuntimeError, match='device'):
        run_standin(monkeypatch, argv, inet_tree, after_build=lambda t: setattr(t, name, getattr(t, name).cpu()))
