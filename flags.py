"""Every flag of train.py, its default and why, in one table (DEFAULTS, nanoGPT's config block; its
configurator.py is likewise a file of its own): argparse, `--help` and docs/usage.md (defaults_markdown) read it.

    args = resolve(build_parser().parse_args(argv), given_flags(argv))   # defaults filled, checked; UsageError

resolve() fills the task-, dataset- and model-dependent defaults from the table, then applies the cross-flag
rules (validate) and refuses a flag that would change nothing in the run (SCOPE). Single-flag ranges are
argparse types, so a bad value fails at parse time with one line that names the flag, the value and the fix.
"""
import argparse
import importlib.util
import itertools
import json
import math
import os
import sys

import bem
import data
import jitter
import ltssl
from runio import UsageError



# ------------------------------------------------------------------------------------------------
# Every default in one place, with why (nanoGPT's config block); argparse, --help and docs/usage.md
# (defaults_markdown) read it. A value is one default, or {condition: default} where the first condition
# that holds wins: its words must all name the run's task, dataset, model, ltssl --alg, or `bem` (--bem on);
# none holding leaves None (the flag does not apply). Auto('...'): computed where it is used.
# ------------------------------------------------------------------------------------------------

class Auto(str):
    """A default computed where it is used: argparse gets None, --help shows the text."""


S1, SR = jitter.SETTINGS['single'], jitter.SETTINGS['ride']   # the jitter schedule's one source (§4.2, §4.3)
ACR, LT42, LT43 = 'ACR train.py', 'jitter.md §4.2 (single expert)', 'jitter.md §4.3 (RIDE)'
LT45 = "jitter.md §4.5: RIDE's ImageNet-LT config (reconstructed)"
DEFAULTS = {
    'task': ('ltssl', 'the first paper (BEM); lt = jitter sampling'),
    'dataset': ({'lt': 'cifar100', 'ltssl': 'cifar10'}, "ACR's CIFAR-10-LT; the jitter paper's CIFAR-100-LT"),
    'model': ({'imagenet_lt': 'ride', 'lt': 'resnet32', 'imagenet127': 'resnet50', 'ltssl': 'wrn'},
              f'{ACR} (WRN-28-2; ResNet-50 on Small-ImageNet-127); {LT42}; {LT45}'),
    'img_size': ({'imagenet_lt': 224, '': 32}, f'{LT45}; ACR Small-ImageNet-127 at 32 px (a folder: 32 or 64)'),
    'workers': (Auto('CPUs - 1, at most 16'), 'engineering'),
    'data_dir': ('./datasets', 'engineering'),
    'folder_counts': ({'folder': 'as-given'}, "the user's data: a folder is long-tailed as it is; exp draws the "
                      "CIFAR profile of --n1/--m1/--imb-l (ltssl) or --imb (lt) from it"),
    'labeled_share': ({'folder ltssl': 0.1}, 'ACR get_smallimagenet: 10 % of each class labeled, the rest unlabeled '
                      '(ImageNet-127, the set ACR takes as long-tailed as given)'),
    'out': (Auto('runs/NAME, NAME built from the arguments'), 'engineering'),
    'runs_dir': ('runs', 'engineering'),
    'resume': (False, 'engineering'),
    'args_from': (Auto('none: every value from the flags and this table'), 'engineering'),
    'seed': (0, f'{ACR} --seed'),
    'device': ('auto', 'engineering: cuda when visible'),
    'check_data': (False, 'engineering'),
    'iters': (250000, f'{ACR} --total-steps'),
    'eval_every': ({'imagenet_lt': 10, 'lt': 1, 'ltssl': 500}, f'{ACR} --eval-step; LT: engineering'),
    'epoch_steps': (500, f'{ACR} --eval-step'),
    'batch_size': ({'ltssl': 64, 'imagenet_lt': 256, 'ride': 128, 'resnet32': 256}, f'{ACR}; {LT45}; {LT43}; {LT42}'),
    'mu': (1, f'{ACR} (its README commands keep it)'),
    'lr': ({'ltssl': 0.03, 'ride': 0.1, 'resnet32': 0.5}, f'{ACR}; {LT43}, also {LT45}; {LT42}'),
    'wd': ({'imagenet_lt': 2e-4, '': 5e-4}, f'{LT45}; {ACR}, RIDE CIFAR config (jitter.md §4.2 inferred)'),
    'momentum': (0.9, f'{ACR}; RIDE'),
    'nesterov': (True, f'{ACR}; RIDE'),
    'ema': (0.999, f'{ACR} --ema-decay'),
    'threshold': (0.95, 'FixMatch, ACR --threshold'),
    'alg': ('fixmatch', 'the first framework of BEM Table 1'),
    'n1': (1500, "ACR's CIFAR-10-LT commands (spec anchors.md §1.2)"),
    'm1': (3000, "ACR's CIFAR-10-LT commands (spec anchors.md §1.2)"),
    'imb_l': (100, "ACR's CIFAR-10-LT commands (spec anchors.md §1.2)"),
    'imb_u': (Auto('from --setting'), 'ACR: gamma_l consistent, 1 uniform, reversed gamma_l'),
    'setting': ('consistent', "ACR's main setting"),
    'split': ('acr', "ACR's first-k split, labeled inside unlabeled (spec anchors.md)"),
    'width': (2, 'ACR public code (ACR paper, CIFAR-100: 8)'),
    'bn_momentum': (0.001, 'ACR / kekmodel WRN'),
    # each framework's own flags, declared once on the framework (ltssl.py `options`): default and source
    **{name: ({alg: value}, why) for alg, fw in ltssl.FRAMEWORK.items() for name, (value, why) in fw.options.items()},
    'labeled_pad': ({'imagenet127': 'zeros', 'ltssl': 'reflect'}, "ACR's get_smallimagenet; ACR's CIFAR/SVHN/STL"),
    'bem': (False, 'the baseline; --bem adds BEM'),
    'mix': ({'bem': 'cammix', 'ltssl': 'none'}, 'BEM (CamMix)'),
    'bank': ({'bem': True, 'ltssl': False}, 'BEM (class-balanced mix bank)'),
    'ess': ({'bem': 'mul', 'ltssl': 'off'}, 'BEM; mul reconstructed (README)'),
    'esm': ({'bem': 'class', 'ltssl': 'off'}, 'BEM; class reconstructed (README)'),
    'ecb': ({'bem': 'on', 'ltssl': 'off'}, 'BEM'),
    'ecb_scope': ('mixed', 'reconstructed (README)'),
    'tau_c': (0.5, 'reconstructed: not recovered (spec bem.md)'),
    'bank_size': ({'imagenet127': 32, 'ltssl': 64}, 'reconstructed: suggested, not recovered (spec bem.md)'),
    'beta': (0.999, 'BEM §4.2 (Eq. 2)'),
    'lambda_d': (0.99, "reconstructed: ACR's ema-u (spec bem.md)"),
    'cam_refresh': (False, 'reconstructed: boxes of enqueue time'),
    'mix_views': ('all', 'reconstructed (README)'),
    'epochs': ({'imagenet_lt': 100, 'ride': SR['epochs'], 'resnet32': S1['epochs']}, f'{LT45}; jitter.SETTINGS'),
    'imb': ({'imagenet_lt': 256, 'lt': 100}, 'the ImageNet-LT lists (1280 -> 5 images); LDAM-DRW'),
    'iters_per_epoch': (Auto('ceil(N/B)'), 'jitter.py (reconstructed)'),
    'sampler': ({'ride': SR['kind'], 'resnet32': S1['kind']}, 'jitter.SETTINGS'),
    'experts': (4, LT43),
    'reduce': (True, f'{LT43} (4 experts + reduce)'),
    'loss': ({'ride': 'ride', 'resnet32': 'ce'}, f'{LT43}; {LT42}'),
    'group_l2norm': ({'ride': 'off', 'resnet32': 'multi'}, f'{LT43} (removed); {LT42}, multi reconstructed'),
    'jitter_alpha': ({'resnet32': S1['alpha'], 'ride': SR['alpha']}, 'jitter.SETTINGS'),
    'jitter_beta': ({'resnet32': S1['beta'], 'ride': SR['beta']}, 'jitter.SETTINGS'),
    'jitter_gamma': (S1['gamma'], 'jitter.SETTINGS (both presets)'),
    'delta_fixed': ({'resnet32': S1['delta_fixed'], 'ride': SR['delta_fixed']},
                    'jitter.SETTINGS (RIDE: reconstructed, DRW re-balances)'),
    'delta_fixed_from': (Auto('the DRW epoch'), 'jitter.SETTINGS: 350 and 160 at the default lengths'),
    'lr_steps': (Auto('160,180 of 200 epochs, 350,450 of 500, in proportion otherwise; 60,80 of 100 on imagenet_lt'),
                 f'RIDE CustomLR ({LT42}, {LT43}, {LT45}); the proportion reconstructed'),
    'ride_stage1': ('ce', 'jitter paper text (RIDE code: ldam)'),
    'compile': ('off', 'engineering: model = the network alone; step = the whole step (augmentation, BEM, losses, '
                'SGD, EMA) as 3 graphs after one eager first step, its state marked static, CUDA graphs on CUDA '
                '(docs/speed.md)'),
    'eval_bf16': (False, 'fp32: with s = 30 cosine logits bf16 flips near-ties'),
    'deterministic': (False, 'engineering'),
    'log_every': (50, 'engineering'),
    'nan_policy': ('stop', 'engineering'),
    'progress': (Auto('on when stderr is a terminal'), 'engineering'),
    'tensorboard': (False, 'engineering'),
}
LTSSL_DATA = ('cifar10', 'cifar100', 'stl10', 'svhn', 'fmnist', 'imagenet127', 'synthetic', 'folder')
LT_DATA = ('cifar10', 'cifar100', 'fmnist', 'imagenet_lt', 'synthetic', 'folder')
_SAY = {'': 'otherwise', 'bem': 'with --bem', 'acr': 'with --alg acr'}


def _show(value):
    """A table value as --help and the docs print it."""
    if isinstance(value, dict):
        return ', '.join(f'{_show(v)} {_SAY.get(w, "for " + w)}' for w, v in value.items())
    return ('on' if value else 'off') if isinstance(value, bool) else str(value)


def _holds(when, a):
    """A table condition on the args resolved so far (the dataset and the model come first in the table)."""
    run = {a.task, a.dataset, a.model} | ({'bem'} if a.bem else set()) | ({a.alg} if a.task == 'ltssl' else set())
    return set(when.split()) <= run


# ------------------------------------------------------------------------------------------------
# argparse types: a single-flag rule fails at parse time with one line that names the flag, the value and the fix
# ------------------------------------------------------------------------------------------------

def _checked(kind, ok, rule, fix=''):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        finite = value is None or kind is not float or math.isfinite(value)   # nan passes no test, inf passes v > 0
        if value is None or not finite or not ok(value):
            what = rule if finite else f'a finite number {rule}'
            raise argparse.ArgumentTypeError(f'must be {what}, got {text!r}' + (f'; {fix}' if fix else ''))
        return value
    return parse


POS, NAT = _checked(int, lambda v: v > 0, 'a positive integer'), _checked(int, lambda v: v >= 0, 'an integer >= 0')
POS_F, NONNEG_F = _checked(float, lambda v: v > 0, '> 0'), _checked(float, lambda v: v >= 0, '>= 0')
UNIT = _checked(float, lambda v: 0 <= v <= 1, 'in [0,1]')
GAMMA = _checked(float, lambda v: v >= 1, '>= 1 (an imbalance ratio N_1/N_C)')
RATE = _checked(float, lambda v: 0 <= v < 1, 'in [0,1)')
TAU = _checked(float, lambda v: v >= 0, '>= 0', 'ACR uses 2')


def _lr_steps(text):
    """Two increasing epochs like 160,180; kept as text (args.json records what was given)."""
    v = text.split(',')
    if len(v) != 2 or not all(s.strip().isdigit() for s in v) or int(v[0]) >= int(v[1]):
        raise argparse.ArgumentTypeError(f'must be two increasing epochs like 160,180, got {text!r}')
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints the whole usage); torchrun: rank 0's
        if os.environ.get('RANK', '0') == '0':
            print(f'error: {message}; see python train.py --help', file=sys.stderr)
        sys.exit(2)


def build_parser():
    p = _Parser(description="train.py: one CLI for both papers' training runs; flags are the only config")

    def a(*flags, help='', **kw):   # the default and '(default: ...; why)' come from DEFAULTS
        value, why = DEFAULTS[kw.get('dest') or flags[0][2:].replace('-', '_')]
        kw.setdefault('default', None if isinstance(value, (dict, Auto)) else value)
        text = f'{help} (default: {_show(value)}; {why})'.lstrip().replace('%', '%%')
        return p.add_argument(*flags, help=text, **kw)
    a('--task', choices=['ltssl', 'lt'])
    a('--dataset', choices=LTSSL_DATA + ('imagenet_lt',), help=f'ltssl: {"|".join(LTSSL_DATA)}; lt: {"|".join(LT_DATA)}')
    a('--img-size', type=int, help='imagenet127, folder: 32 or 64; imagenet_lt: crop size; 32 for the CIFAR-size sets')
    a('--workers', type=NAT, help='imagenet_lt: JPEG-decoding DataLoader workers')
    a('--data-dir', help='folder: DIR with train/<class>/, test/<class>/ (or val/), optionally unlabeled/')
    a('--folder-counts', choices=['as-given', 'exp'], help='folder: keep the class counts as they are, or draw the '
      'exponential profile of --n1/--m1/--imb-l (ltssl) or --imb (lt) from them (classes ordered head to tail)')
    a('--labeled-share', type=_checked(float, lambda v: 0 < v <= 1, 'in (0,1]'), help='folder without unlabeled/ '
      '(ltssl): the labeled share of each class (at least one image); the rest of train/ is the unlabeled set, its '
      'labels hidden')
    a('--out', help='run directory')
    a('--runs-dir')
    a('--resume', action='store_true')
    a('--args-from', metavar='RUN_DIR', help="re-run a recorded run: every value of RUN_DIR/args.json (or the file "
      "given); a flag given beside it overrides that value; --out is not taken over (default: a new runs/NAME)")
    a('--seed', type=_checked(int, lambda v: 0 <= v < 2 ** 32, 'in [0, 2^32)'))
    a('--device', choices=['auto', 'cpu', 'cuda'])
    a('--check-data', action='store_true', help='only check that the dataset is present; exit 0 or 2')
    # -- optimisation
    a('--iters', type=POS, help='ltssl total steps')
    a('--eval-every', type=POS, help='ltssl: steps; lt: epochs')
    a('--epoch-steps', type=POS, help="ltssl: ACR's epoch (eval_step): the clock of ACR's adaptive tau, ABC's "
      "schedule and BEM's d^u start; independent of --eval-every so evaluation never changes training")
    a('--batch-size', type=POS)
    a('--mu', type=POS, help='unlabeled/labeled batch ratio')
    a('--lr', type=POS_F)
    a('--wd', type=NONNEG_F)
    a('--momentum', type=_checked(float, lambda v: 0 <= v < 1, 'in [0,1)', 'SGD momentum; ACR and RIDE use 0.9'))
    a('--no-nesterov', dest='nesterov', action='store_false', help='plain momentum instead of Nesterov')
    a('--ema', type=RATE, help='EMA decay of the evaluated model (ltssl)')
    a('--threshold', type=_checked(float, lambda v: 0 < v < 1, 'in (0,1)', 'FixMatch uses 0.95'),
      help='pseudo-label confidence tau')
    # -- LTSSL data/splits (spec anchors.md §1.2, bem.md §4)
    a('--alg', choices=['supervised', 'fixmatch', 'la', 'abc', 'acr'])
    a('--n1', type=POS, help='labeled images of the head class')
    a('--m1', type=NAT, help='unlabeled images of the head class')
    a('--imb-l', type=GAMMA, help='labeled imbalance gamma_l = N_1/N_C')
    a('--imb-u', type=_checked(float, lambda v: v >= 1, '>= 1', 'use --setting reversed to flip'),
      help='unlabeled gamma_u')
    a('--setting', choices=['consistent', 'uniform', 'reversed'])
    a('--split', choices=['acr', 'random'], help='acr: first-k, labeled inside unlabeled')
    a('--model', choices=['wrn', 'resnet50', 'resnet32', 'ride'], help='ltssl: wrn|resnet50; lt: resnet32|ride '
      '(RIDE ResNet-32; ResNeXt-50 on imagenet_lt)')
    a('--width', type=POS, help='WRN width')
    a('--bn-momentum', type=_checked(float, lambda v: 0 <= v <= 1, 'in [0,1]', 'ACR uses 0.001'),
      help='WRN BatchNorm momentum')
    # -- framework options (ltssl.py); ACR's only with --alg acr
    a('--acr-count', choices=['counts', 'presence'], help="ACR's u_py histogram: counts = sum of the confident "
      "pseudo-labels per class; presence = ACR's statement now_mask[q] += w (index_put: the last occurrence's "
      "weight per class, CPU order)")
    a('--ema-u', type=_checked(float, lambda v: 0 <= v < 1, 'in [0,1)', 'ACR uses 0.99'),
      help='ACR: EMA rate of the unlabeled-distribution estimate u_py')
    a('--tau1', type=TAU, help='ACR: tau_max of the adaptive tau1 (standard-head pseudo-labels)')
    a('--tau12', type=TAU, help="ACR: tau of the balanced head's pseudo-label adjustment")
    a('--tau2', type=TAU, help="ACR: tau of the balanced head's logit-adjusted labeled loss")
    a('--est-epoch', type=_checked(int, lambda v: v >= 0, 'an integer >= 0', 'ACR uses 5'),
      help='ACR: u_py is estimated and tau1 adapted in epochs > est_epoch (0-based epochs of --epoch-steps)')
    a('--labeled-pad', choices=['zeros', 'reflect'], help="padding of the labeled view's RandomCrop")
    a('--abc-views', type=POS, help='ABC strong views')
    a('--abc-hard', action='store_true', help='hard ABC pseudo-labels instead of soft')
    # -- BEM (bem.py; reconstructed choices in README)
    a('--bem', action='store_true', help='CamMix + class-balanced mix bank + ESS + ESM + ECB')
    a('--mix', choices=['none', 'mixup', 'cutmix', 'saliencymix', 'cammix'])
    a('--bank', dest='bank', action='store_true', help='class-balanced mix bank')
    a('--no-bank', dest='bank', action='store_false', help='in-batch mixing partners instead of the bank')
    a('--ess', choices=['mul', 'add', 'off'])
    a('--esm', choices=['class', 'batch', 'off'])
    a('--ecb', choices=['on', 'cb', 'off'])
    a('--ecb-scope', choices=['mixed', 'target', 'all'], help='where the ECB weights act: mixed = both labels of '
      'mixed samples only (lam < 1; unmixed views, ACR L_u^b and ABC L_con keep their own loss); target = the target '
      'label of mixed samples only (ESS already drew the pasted class); all = every unlabeled term')
    a('--tau-c', type=UNIT, help='CAM threshold')
    a('--bank-size', type=POS, help='per class per queue')
    a('--beta', type=_checked(float, lambda v: 0 < v < 1, 'in (0,1)', 'BEM uses 0.999'),
      help='effective-number beta (BEM Eq. 2)')
    a('--lambda-d', type=RATE, help='EMA of the unlabeled class distribution (BEM Eq. 3)')
    a('--cam-refresh', action='store_true', help='recompute bank CAM boxes at draw time')
    a('--mix-views', choices=['all', 'second'], help='ACR/ABC: mix both strong views or only the second')
    # -- LT task (jitter.py / ride.py)
    a('--epochs', type=POS)
    a('--imb', type=GAMMA, help='lt imbalance factor (LDAM-DRW construction); ImageNet-LT: fixed by its lists')
    a('--iters-per-epoch', type=POS, help='lt: cap the steps of an epoch (smoke tests, benchmarks)')
    a('--sampler', choices=jitter.KINDS)
    a('--experts', type=POS)
    a('--reduce', dest='reduce', action='store_true', help='RIDE reduced-width experts')
    a('--no-reduce', dest='reduce', action='store_false', help='full-width RIDE experts')
    a('--loss', choices=['ce', 'ldam', 'ride'])
    a('--group-l2norm', choices=['multi', 'single4', 'expand', 'off'])
    a('--jitter-alpha', type=NONNEG_F, help='jitter schedule alpha')
    a('--jitter-beta', type=POS_F, help='jitter schedule beta')
    a('--jitter-gamma', type=UNIT, help='jitter schedule floor gamma')
    a('--delta-fixed', type=UNIT, help='fixed delta_t from --delta-fixed-from on')
    a('--delta-fixed-from', type=NAT, help='epoch')
    a('--lr-steps', type=_lr_steps, help='lt: epochs of the two lr decays, e.g. 160,180')
    a('--ride-stage1', choices=['ce', 'ldam'], help='RIDE loss before DRW')
    # -- engineering
    a('--compile', nargs='?', const='step', choices=['off', 'model', 'step'],
      help='torch.compile: `--compile` alone = step')
    a('--eval-bf16', action='store_true', help='evaluate under bf16 autocast on CUDA, as training does')
    a('--deterministic', action='store_true', help='torch/cudnn deterministic algorithms')
    a('--log-every', type=POS, help='steps between host-side logs/NaN checks')
    a('--nan-policy', choices=['stop', 'skip'], help='skip: skip non-finite steps (syncs each step)')
    a('--progress', dest='progress', action='store_true', help='progress bar')
    a('--no-progress', dest='progress', action='store_false', help='no progress bar')
    a('--tensorboard', action='store_true', help='mirror every metrics.jsonl record into RUN_DIR/tb/ (TensorBoard)')
    p.add_argument('--inject-nan', type=int, default=None, help=argparse.SUPPRESS)   # tests only
    return p


def defaults_markdown():
    """The defaults table of docs/usage.md (between its defaults-table markers; a test keeps the two equal)."""
    flags = {}
    for act in build_parser()._actions:
        flags.setdefault(act.dest, []).extend(f'`{o}`' for o in act.option_strings)
    rows = [(' '.join(flags[d]), _show(v), why) for d, (v, why) in DEFAULTS.items()]
    return '\n'.join('| ' + ' | '.join(c.replace('|', r'\|') for c in row) + ' |'
                     for row in [('flag', 'default', 'why'), ('---',) * 3] + rows)


def resolve(args, given=()):
    """Fill the table's task-, dataset- and model-dependent defaults (in table order: the dataset, then the model,
    then what reads them), then validate. Raises UsageError.

    given: dests of the flags on the command line (given_flags); one that changes nothing in this run is refused."""
    fill(args)
    validate(args)                # first: its messages are the more specific ones (e.g. ImageNet-LT needs RIDE)
    check_scope(args, given)
    if args.task == 'lt' and args.delta_fixed is not None and args.delta_fixed_from is None:
        args.delta_fixed_from = drw_epoch(args)   # single expert: 350 (§4.2); RIDE: DRW (jitter.md §7 #7)
    return args


def fill(args):
    """The table's run-dependent defaults, in table order, where no value is set yet."""
    for dest, (value, _) in DEFAULTS.items():
        if isinstance(value, dict) and getattr(args, dest) is None:
            setattr(args, dest, next((v for when, v in value.items() if _holds(when, args)), None))
    return args


def _need(cond, msg):
    if not cond:
        raise UsageError(msg)


        raise UsageError(msg)


# ------------------------------------------------------------------------------------------------
# No silently ignored flag: a flag given on the command line whose option is not chosen would change
# nothing, so it is refused. One line per flag: dest -> (what it belongs to, test on the resolved args).
# A new task-, model- or algorithm-specific flag adds its line here.
# ------------------------------------------------------------------------------------------------

def _ltssl(a):
    return a.task == 'ltssl'


def _lt(a):
    return a.task == 'lt'


def _ssl(a):
    return _ltssl(a) and a.alg != 'supervised'


def _folder(a):
    return a.dataset == 'folder'


def _unlabeled_dir(a):   # a folder's unlabeled/ IS the unlabeled set: nothing is drawn for it
    return _folder(a) and os.path.isdir(os.path.join(a.data_dir, 'unlabeled'))


def _profile(a):   # the exponential profile is drawn (every set but a folder taken as given)
    return not _folder(a) or a.folder_counts == 'exp'


def split_fixes(a):
    """What makes the LTSSL labeled / unlabeled set larger, for the batch-size messages: the profile's flags, a
    folder's --labeled-share, or more images in the folder itself."""
    if _unlabeled_dir(a):
        return ('raise --n1' if _profile(a) else f'add images to {a.data_dir}/train'), f'add images to {a.data_dir}/unlabeled'
    if _profile(a):
        return 'raise --n1', 'raise --m1'
    return 'raise --labeled-share', 'lower --labeled-share'


def _mixing(a):   # a mixing partner per strong view: BEM's CamMix, or a mixing baseline (SSL only)
    return _ssl(a) and a.mix != 'none'


def _bank_mixing(a):
    return _mixing(a) and a.bank


def _ecb_place(a):   # where ECB weights can act: on mixed samples, or on every unlabeled term with --ecb-scope all
    return _ssl(a) and (a.mix != 'none' or a.ecb_scope == 'all')


def _ecb_acts(a):
    return _ecb_place(a) and a.ecb != 'off'


def bem_built(a):
    """Whether LTSSLTask builds a bem.BEM: mixing (BEM or a mixing baseline), or the ECB weights acting without it
    (--ecb-scope all). The one statement of this rule: train.py builds by it, SCOPE refuses by its parts."""
    return _mixing(a) or _ecb_acts(a)


def _views(a):   # strong views of the run's framework, as it declares them
    return ltssl.shape_of(a.alg, vars(a))[0]


_LTSSL, _LT = ('--task ltssl', _ltssl), ('--task lt', _lt)
_BEM = ('BEM on an SSL --alg (fixmatch|la|abc|acr, --task ltssl)', _ssl)
_WRN = ('--model wrn (--task ltssl)', lambda a: _ltssl(a) and a.model == 'wrn')
_MIX = ('mixing (--task ltssl, an SSL --alg, with --bem or --mix)', _mixing)
_BANK = ('mixing from the class-balanced bank (--task ltssl, an SSL --alg, with --bem or --mix X --bank)', _bank_mixing)
_CAMMIX = ('CamMix (--task ltssl, an SSL --alg, with --bem or --mix cammix)', lambda a: _mixing(a) and a.mix == 'cammix')
_ECB = ('the ECB weights (--task ltssl, an SSL --alg), which act on mixed samples (--bem or --mix) or, with '
        '--ecb-scope all, on every unlabeled term', _ecb_acts)
_ABC = ('--alg abc (--task ltssl)', lambda a: _ltssl(a) and a.alg == 'abc')
_RIDE = ('--model ride (--task lt)', lambda a: _lt(a) and a.model == 'ride')
_JITTER = ('a jitter sampler (--task lt, --sampler jitter1|jitter2|jitter-noreplace)',
           lambda a: _lt(a) and a.sampler in ('jitter1', 'jitter2', 'jitter-noreplace'))
_N_PROFILE = ('--task ltssl, on a folder with --folder-counts exp', lambda a: _ltssl(a) and _profile(a))
# the SSL recipe: unlabeled data (--m1, --imb-u, --setting: only the unlabeled counts), its batch (--mu), the
# pseudo-label threshold and the epoch clock of the frameworks; --alg supervised trains on the labeled split alone
_SSL = ('an SSL --alg (fixmatch|la|abc|acr, --task ltssl); --alg supervised uses the labeled split alone', _ssl)
_M_PROFILE = ('an SSL --alg (--task ltssl), on a folder with --folder-counts exp and no DIR/unlabeled/ (that folder '
              'is the unlabeled set as it is)', lambda a: _ssl(a) and _profile(a) and not _unlabeled_dir(a))
SCOPE = {
    'iters': _LTSSL, 'epoch_steps': _SSL, 'mu': _SSL, 'ema': _LTSSL, 'threshold': _SSL, 'alg': _LTSSL,
    'n1': _N_PROFILE, 'imb_l': _N_PROFILE, 'm1': _M_PROFILE, 'imb_u': _M_PROFILE, 'setting': _M_PROFILE,
    'split': ('--task ltssl, on a folder without DIR/unlabeled/ (that folder is the unlabeled set as it is)',
              lambda a: _ltssl(a) and not _unlabeled_dir(a)),
    'bem': _BEM, 'mix': _BEM, 'bank': _MIX, 'ess': _BANK, 'esm': _BANK, 'ecb_scope': _ECB,
    'ecb': ('mixing (--task ltssl, an SSL --alg, with --bem or --mix), or --ecb-scope all (ECB on every unlabeled '
            'term)', _ecb_place),
    'width': _WRN, 'bn_momentum': _WRN,
    # each framework's own flags (ltssl.py `options`) belong to it
    **{name: (f'--alg {alg} (--task ltssl)', lambda a, alg=alg: _ltssl(a) and a.alg == alg)
       for alg, fw in ltssl.FRAMEWORK.items() for name in fw.options},
    'labeled_pad': _LTSSL,
    'tau_c': _CAMMIX, 'cam_refresh': _CAMMIX, 'bank_size': _BANK,
    'beta': ('the effective numbers of the bank draws or the ECB weights (--task ltssl, --bem)', lambda a: _bank_mixing(a) or
             _ecb_acts(a)),
    'lambda_d': ("BEM's own Eq. 3 estimate (--task ltssl, --bem; under --alg acr, d^u is ACR's u_py)", lambda a: a.alg != 'acr' and
                 (_bank_mixing(a) or _ecb_acts(a))),
    'mix_views': ('mixing with two strong views (--task ltssl, --bem or --mix, --alg acr or abc with --abc-views >= 2)',
                  lambda a: _mixing(a) and _views(a) >= 2),
    'epochs': _LT, 'iters_per_epoch': _LT,
    'imb': ('--task lt, on a folder with --folder-counts exp', lambda a: _lt(a) and _profile(a)), 'sampler': _LT, 'loss': _LT, 'lr_steps': _LT,
    'group_l2norm': ('--model resnet32 (--task lt)', lambda a: _lt(a) and a.model == 'resnet32'),
    'experts': _RIDE, 'reduce': _RIDE,
    'ride_stage1': ('--loss ride (--task lt)', lambda a: _lt(a) and a.loss == 'ride'),
    'jitter_alpha': _JITTER, 'jitter_beta': _JITTER, 'jitter_gamma': _JITTER, 'delta_fixed': _JITTER,
    'delta_fixed_from': _JITTER,
    'workers': ('--dataset imagenet_lt (--task lt)', lambda a: a.dataset == 'imagenet_lt'),
    'folder_counts': ('--dataset folder', _folder),
    'labeled_share': ('--task ltssl --dataset folder --folder-counts as-given without DIR/unlabeled/ (that folder is '
                      'the unlabeled set)', lambda a: _ltssl(a) and _folder(a) and not _profile(a) and not _unlabeled_dir(a)),
}


def given_flags(argv=None):
    """dests of the flags on the command line: a second parse in which no flag has a default."""
    p = build_parser()
    for act in p._actions:
        act.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def check_scope(args, given):
    for dest in sorted(set(given) & set(SCOPE)):
        owner, applies = SCOPE[dest]
        if not applies(args):
            flag = '/'.join(o for act in build_parser()._actions if act.dest == dest for o in act.option_strings)
            here = f'--task {args.task} --model {args.model}' + (f' --alg {args.alg}' if _ltssl(args) else '')
            raise UsageError(f'{flag} belongs to {owner} and would change nothing in this run ({here}); drop it')


def validate(args):
    """The cross-flag rules; a single flag's range or name is checked by its argparse type or choices."""
    lt = args.task == 'lt'
    data, models = (LT_DATA, ('resnet32', 'ride')) if lt else (LTSSL_DATA, ('wrn', 'resnet50'))
    _need(args.dataset in data, f'unknown dataset {args.dataset!r} for --task {args.task}; choose one of {", ".join(data)}')
    _need(args.model in models, f'unknown model {args.model!r} for --task {args.task}; choose one of {", ".join(models)}')
    if args.dataset == 'imagenet_lt':
        _need(args.img_size >= 32, f'--img-size must be >= 32 for ImageNet-LT, got {args.img_size}; RIDE uses 224')
    elif args.dataset in ('imagenet127', 'folder'):
        _need(args.img_size in (32, 64), f'--img-size must be 32 or 64 for {args.dataset}, got {args.img_size}')
    else:
        _need(args.img_size == 32, f'--img-size {args.img_size} does not apply to {args.dataset} (32 px); drop it')
    _need(not args.tensorboard or importlib.util.find_spec('tensorboard') is not None,
          '--tensorboard needs the tensorboard package: pip install tensorboard (it is in requirements.txt)')
    _need(not lt or args.labeled_pad is None, '--labeled-pad is an LTSSL option; drop it or use --task ltssl')
    if lt:
        _need(not args.bem, '--bem is a BEM (ltssl) option and does not apply to --task lt; drop --bem or use --task ltssl')
        _need(args.loss != 'ride' or args.model == 'ride', '--loss ride needs --model ride')
        _need(args.loss != 'ldam' or args.model == 'resnet32', '--loss ldam is the LDAM-DRW baseline on --model '
              'resnet32; RIDE experts already scale by s=30 and carry LDAM margins in --loss ride')
        _need(args.dataset != 'imagenet_lt' or args.model == 'ride', 'ImageNet-LT runs the RIDE ResNeXt-50 (jitter.md '
              '§4.5); use --model ride (--experts 1 for a single expert)')
        _need(args.dataset != 'imagenet_lt' or args.imb == 256, f'--imb does not apply to ImageNet-LT (its lists fix '
              f'it at 256, 1280 -> 5 images); drop --imb {args.imb}')
        return
    _need(args.m1 > 0 or args.alg == 'supervised', f'--m1 must be positive, got {args.m1}')
    check_labeled_counts(args)
    _need(not (args.bem and args.alg == 'supervised'), '--bem needs unlabeled data; use --alg fixmatch|la|abc|acr')
    _need(args.mix == 'none' or args.alg != 'supervised', f'--mix {args.mix} needs unlabeled data; use an SSL --alg')
    _need(args.mix != 'saliencymix' or bem.has_saliency(), '--mix saliencymix needs OpenCV\'s contrib module '
          '(cv2.saliency), which this OpenCV lacks: pip install opencv-contrib-python-headless')
    _need(not args.bem or bem_built(args), '--bem --mix none leaves BEM nothing to do (its ECB weights act on mixed '
          'samples); drop --mix none, or add --ecb-scope all to weight every unlabeled term')
    _need(args.model == 'wrn' or not (args.cam_refresh or (args.mix == 'cammix' and not args.bank)), '--cam-refresh '
          'and in-batch CamMix (--no-bank) take the CAM from the EMA model\'s head: they need --model wrn')


def check_labeled_counts(args):
    """Every class needs a labeled image (an empty class has a zero prior: LA's log-prior is -inf, the loss NaN).
    The counts are the split's own formula (data.lt_counts); ImageNet-127 takes ACR's fixed 10 % split."""
    C = data.NUM_CLASSES.get(args.dataset)
    if C is None or args.dataset == 'imagenet127':
        return
    n = data.lt_counts(args.n1, C, args.imb_l)
    empty = [c for c, k in enumerate(n) if k == 0]
    shown = n if C <= 10 else n[:3] + ['...'] + n[-3:]
    _need(not empty, f'--n1 {args.n1} --imb-l {args.imb_l:g} gives labeled counts {shown}: '
          f'{len(empty)} classes ({", ".join(map(str, empty[:5]))}{" ..." if len(empty) > 5 else ""}) get no '
          f'labeled image; use --imb-l <= {args.n1} or a larger --n1')


def check_world(args, world):
    """torchrun: every process takes its share of each global batch (LT shards may differ by one row: an
    epoch's partial last batch is uneven anyway)."""
    _need(args.task != 'lt' or args.batch_size >= world, f'--batch-size {args.batch_size} is smaller than the '
          f'{world} processes')
    _need(args.task == 'lt' or args.batch_size % world == 0,
          f'--batch-size {args.batch_size} must be divisible by the {world} processes')


def lr_steps(args):
    """RIDE CustomLR decay epochs (spec jitter.md §4.2-4.3); other lengths scale in proportion (reconstructed)."""
    if args.lr_steps:
        return tuple(int(v) for v in args.lr_steps.split(','))
    if args.dataset == 'imagenet_lt':
        base, ref = (60, 80), 100          # RIDE ImageNet-LT: x0.1 at 60 and 80 of 100 epochs (jitter.md §4.5)
    else:
        base, ref = ((160, 180), 200) if args.model == 'ride' or args.epochs <= 200 else ((350, 450), 500)
    return tuple(int(round(s * args.epochs / ref)) for s in base)


def drw_epoch(args):
    """Epoch where DRW starts and the jitter stops: the first decay on CIFAR (reweight_epoch 160 of 200),
    the second on ImageNet-LT (reweight_epoch 80 of 100, jitter during 0-80; jitter.md §4.3, §4.5)."""
    return lr_steps(args)[1 if args.dataset == 'imagenet_lt' else 0]


def run_name(args):
    """runs/NAME: the task, the data (a folder by its own name), the method, the split or profile, the seed."""
    data = f'folder-{os.path.basename(os.path.normpath(args.data_dir))}' if _folder(args) else args.dataset
    parts = [args.task, data, args.alg if args.task == 'ltssl' else args.model]
    if args.task == 'ltssl':
        if _profile(args):
            parts += [f'n{args.n1}', f'm{args.m1}', f'g{args.imb_l:g}', args.setting]
        else:
            parts += ['unlabeled' if _unlabeled_dir(args) else f'share{args.labeled_share:g}']
        parts += ['bem'] if args.bem else ([f'mix-{args.mix}'] if args.mix != 'none' else [])
    else:
        parts += [args.sampler] + ([f'imb{args.imb:g}'] if _profile(args) else [])
    return '_'.join(parts + [f'seed{args.seed}'])


# ------------------------------------------------------------------------------------------------
# --args-from: a recorded run again, with every value it had; a flag given beside it overrides that value
# ------------------------------------------------------------------------------------------------

FRESH = ('out', 'resume', 'args_from', 'check_data')   # never taken over: a re-run is a new run directory


def recorded_args(path):
    """RUN_DIR/args.json (or the file given) -> {dest: value}, each value checked by its flag's type and choices."""
    f = os.path.join(path, 'args.json') if os.path.isdir(path) else path
    try:
        with open(f) as fh:
            rec = json.load(fh)
    except (OSError, ValueError) as e:
        raise UsageError(f'--args-from {path}: {f} is unreadable ({type(e).__name__}); give a run directory of '
                         f'train.py or its args.json') from None
    if not isinstance(rec, dict):
        raise UsageError(f'--args-from {path}: {f} holds a JSON {type(rec).__name__}, not the object of flags that '
                         f'train.py writes; give a run directory of train.py or its args.json')
    acts = {act.dest: act for act in build_parser()._actions}
    unknown = sorted(set(rec) - set(acts))
    if unknown:
        raise UsageError(f'--args-from {path}: argument {unknown[0]!r} is unknown to this train.py (written by '
                         f'another version); re-run it from that version (its git commit is in env.json)')
    for k, v in rec.items():
        act = acts[k]
        if v is None:             # not set: the run's own default (fill) applies again
            continue
        try:
            v = act.type(str(v)) if act.type is not None else v
        except argparse.ArgumentTypeError as e:
            raise UsageError(f'--args-from {path}: {k} {e}') from None
        if act.choices is not None and v not in act.choices:
            raise UsageError(f'--args-from {path}: {k} = {v!r} is not one of {", ".join(map(str, act.choices))}')
        rec[k] = v
    return rec


def _resolved(values, base):
    """resolve() of the parser's defaults + values as a dict (no scope check: values are not flags given here);
    None if it is refused."""
    try:
        return vars(resolve(argparse.Namespace(**{**base, **values})))
    except UsageError:
        return None


def _chosen(rec, base):
    """The recorded values that the run's own defaults would not give: try leaving each out, last flag first, and
    keep the run identical. So an override re-derives what depends on it (--alg fixmatch after an ACR run drops
    ACR's tau1; --epochs moves the DRW epoch), while everything the run set stays set."""
    target = _resolved(rec, base)
    _need(target is not None and all(target[k] == v for k, v in rec.items()),
          '--args-from: the recorded arguments do not resolve to themselves under this train.py; re-run it from '
          'the version that wrote it (its git commit is in env.json)')
    chosen = {k: v for k, v in rec.items() if v != base.get(k)}
    for k in reversed([k for k in DEFAULTS if k in chosen]):
        trial = {j: v for j, v in chosen.items() if j != k}
        if _resolved(trial, base) == target:
            chosen = trial
    return chosen


def _parse(argv, defaults):
    p = build_parser()
    p.set_defaults(**defaults)
    return p.parse_args(argv)


def rerun(path, argv):
    """--args-from PATH: the recorded run's values as defaults under argv's flags, resolved. A recorded flag that
    no longer applies (SCOPE: an override changed the task, model, algorithm ...) would change nothing: it is
    dropped, with a note. Without --out the run goes to a new runs/NAME (NAME-2, NAME-3 ... when taken)."""
    given = given_flags(argv)
    rec = {k: v for k, v in recorded_args(path).items() if k not in FRESH}
    chosen = {k: v for k, v in _chosen(rec, vars(_parse([], {}))).items() if k not in given}
    run = fill(_parse(argv, chosen))
    dropped = sorted(k for k in chosen if k in SCOPE and not SCOPE[k][1](run))
    if dropped and os.environ.get('RANK', '0') == '0':
        print(f'note: --args-from {path}: recorded {", ".join(f"{k}={chosen[k]!r}" for k in dropped)} dropped: '
              f'{"it does" if len(dropped) == 1 else "they do"} not apply to this run', file=sys.stderr)
    chosen = {k: v for k, v in chosen.items() if k not in dropped}
    args = resolve(_parse(argv, chosen), given | set(chosen))
    if args.out is None:
        name = os.path.join(args.runs_dir, run_name(args))
        args.out = next(d for d in (name if k == 1 else f'{name}-{k}' for k in itertools.count(1))
                        if not os.path.exists(d))
    return args
