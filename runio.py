"""Run directories: args/env records, atomic checkpoints (last two kept), metrics and summaries.

A run directory is always either complete (summary.json with "finished": true) or resumable
(args.json + checkpoint): files are written to a temporary name and renamed into place.
"""
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile

import numpy as np
import torch


class UsageError(Exception):
    """Bad input: the message names the problem and the fix; the CLI prints it and exits 2."""


# Arguments that may differ between a run and its --resume (they do not change the result).
RESUME_FREE = {'resume', 'out', 'device', 'compile', 'progress', 'runs_dir', 'data_dir', 'check_data',
               'log_every', 'inject_nan', 'nan_policy', 'tensorboard', 'args_from'}


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path, data: bytes):
    d = os.path.dirname(path) or '.'
    fd, tmp = tempfile.mkstemp(dir=d, prefix='.tmp-')
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; run files should follow the umask like any file
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path, obj):
    atomic_write(path, (json.dumps(obj, indent=1, default=_json_default) + '\n').encode())


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (np.ndarray, torch.Tensor)):
        return o.tolist()
    raise TypeError(type(o))


def env_record(device):
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)), timeout=5).stdout.strip()
    except Exception:
        commit = ''
    import torchvision
    rec = {'python': sys.version.split()[0], 'torch': torch.__version__, 'torchvision': torchvision.__version__,
           'numpy': np.__version__, 'platform': platform.platform(), 'git_commit': commit, 'device': str(device),
           'threads': torch.get_num_threads()}
    if device.type == 'cuda':
        rec['gpu'] = torch.cuda.get_device_name(device)
    return rec


def check_writable(path):
    """Try it: os.access trusts mode bits (root bypasses them) and says yes to a regular file in the way."""
    probe = os.path.abspath(path)
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise UsageError(f'--out {path} exists and is not a directory; choose another --out')
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UsageError(f'--out {path} cannot be created: {probe} is a file, not a directory; choose another --out')
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix='.tmp-')
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UsageError(f'output directory {path} is not writable ({e.strerror} in {probe}); '
                         f'choose another --out') from None


def prepare(run_dir, args_dict, resume):
    """Validate the run directory against --resume. Returns True if a previous run exists."""
    args_path = os.path.join(run_dir, 'args.json')
    exists = os.path.exists(args_path)
    if exists and not resume:
        raise UsageError(f'run directory {run_dir} already exists; pass --resume to continue it '
                         f'or --out to start a new one')
    if exists:
        try:
            with open(args_path) as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise UsageError(f'{args_path} is unreadable ({type(e).__name__}), so --resume cannot check the '
                             f'arguments; restore it or start a new run with another --out') from None
        diff = [k for k in sorted(set(old) | set(args_dict))
                if k not in RESUME_FREE and old.get(k) != args_dict.get(k)]
        if diff:
            k = diff[0]
            raise UsageError(f'--resume of {run_dir} with different arguments: {k} was '
                             f'{old.get(k)!r}, now {args_dict.get(k)!r}; use the same flags or a new --out')
    check_writable(run_dir)
    return exists


def create(run_dir, args_dict, env):
    os.makedirs(run_dir, exist_ok=True)
    for f in os.listdir(run_dir):            # a kill inside atomic_write leaves its temporary file
        if f.startswith('.tmp-'):
            os.unlink(os.path.join(run_dir, f))
    if not os.path.exists(os.path.join(run_dir, 'args.json')):
        write_json(os.path.join(run_dir, 'env.json'), env)
        write_json(os.path.join(run_dir, 'args.json'), args_dict)


# ------------------------------------------------------------------------------------------------
# Checkpoints: checkpoint.pt (newest) and checkpoint.prev.pt (the one before), both atomic.
# ------------------------------------------------------------------------------------------------

def save_checkpoint(run_dir, state):
    """Write checkpoint.pt atomically; the previous one is kept as checkpoint.prev.pt."""
    import io
    buf = io.BytesIO()
    torch.save(state, buf)
    path, prev = os.path.join(run_dir, 'checkpoint.pt'), os.path.join(run_dir, 'checkpoint.prev.pt')
    if os.path.exists(path):
        os.replace(path, prev)
    atomic_write(path, buf.getvalue())


def load_checkpoint(run_dir, log=print):
    """The newest readable checkpoint; a corrupt or truncated newest falls back to the previous one."""
    for name in ('checkpoint.pt', 'checkpoint.prev.pt'):
        path = os.path.join(run_dir, name)
        if not os.path.exists(path):
            continue
        try:
            return torch.load(path, map_location='cpu', weights_only=False)
        except Exception as e:
            log(f'warning: {path} is unreadable ({type(e).__name__}); trying the previous checkpoint')
    return None


# ------------------------------------------------------------------------------------------------
# Metrics and summary
# ------------------------------------------------------------------------------------------------

def append_metrics(run_dir, record, tb=None):
    """One evaluation record -> a line of metrics.jsonl (and the same record to TensorBoard when `tb` is given)."""
    with open(os.path.join(run_dir, 'metrics.jsonl'), 'a') as f:
        f.write(json.dumps(record, default=_json_default) + '\n')
    if tb is not None:
        tb.write(record)


class TensorBoard:
    """--tensorboard: mirrors metrics.jsonl records into RUN_DIR/tb/ (only rank 0 creates one).

    Numbers -> scalars under their record path ('acc/balanced', 'train/Lu', 'bem/box_area', 'lr'); per-class
    accuracy -> a bar figure per head; other lists (class_probs, BEM's per-class statistics) -> histograms.
    Resume appends a new event file; purge_step makes TensorBoard drop the killed run's events after the
    checkpoint, which the resumed run recomputes (as read_metrics drops them from metrics.jsonl).
    """

    def __init__(self, run_dir, purge_step=None):
        from torch.utils.tensorboard import SummaryWriter   # purge_step: the first step the resumed run writes
        self.writer = SummaryWriter(os.path.join(run_dir, 'tb'), purge_step=purge_step)

    def write(self, record):
        step = int(record['step'])
        for tag, v in flatten(record):
            if tag == 'step':
                continue
            if isinstance(v, list) and tag.startswith('per_class/'):
                self.writer.add_figure(tag, per_class_figure(v, tag), step)
            elif isinstance(v, list) and v:
                self.writer.add_histogram(tag, np.asarray(v, dtype=float), step)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(tag, v, step)
        self.writer.flush()

    def close(self):
        self.writer.close()


def flatten(record, prefix=''):
    """[(path, value)] of a nested record: {'acc': {'model': 1}} -> [('acc/model', 1)]."""
    out = []
    for k, v in record.items():
        if isinstance(v, dict):
            out += flatten(v, f'{prefix}{k}/')
        else:
            out.append((f'{prefix}{k}', v))
    return out


def per_class_figure(values, title):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.bar(np.arange(len(values)), values)
    ax.set(xlabel='class (0 = head)', ylabel='test accuracy %', title=title, ylim=(0, 100))
    fig.tight_layout()
    return fig          # add_figure closes it


def read_metrics(run_dir, step, truncate=True):
    """On resume: the evaluations up to the checkpoint's step. Later ones (logged after the checkpoint)
    are dropped from the file -- they will be recomputed identically."""
    path = os.path.join(run_dir, 'metrics.jsonl')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    keep = [r for r in recs if r['step'] <= step]
    if truncate:
        atomic_write(path, ''.join(json.dumps(r) + '\n' for r in keep).encode())
    return keep


def count_groups(counts):
    """RIDE test.py's class groups by training images: many (>100), medium (20-100), few (<20) -> boolean masks."""
    counts = np.asarray(counts)
    return {'many': counts > 100, 'medium': (counts >= 20) & (counts <= 100), 'few': counts < 20}


def head_stats(history, per_class, counts):
    """Summary statistics of one head: last, best, mean/median of the last 20 evaluations, and
    many (>100 training images) / medium (20-100) / few (<20) class means (RIDE test.py thresholds)."""
    h = np.asarray(history, dtype=float)
    pc, groups = np.asarray(per_class, dtype=float), count_groups(counts)
    out = {'last': h[-1], 'best': h.max(), 'mean_last20': h[-20:].mean(), 'median_last20': float(np.median(h[-20:])),
           'per_class': pc.round(4).tolist()}
    for k, m in groups.items():
        out[k] = float(pc[m].mean()) if m.any() else None
    # head/tail halves as ABC logs them (first half of the classes vs the second half)
    half = len(pc) // 2
    out['head_half'], out['tail_half'] = float(pc[:half].mean()), float(pc[half:].mean())
    return {k: (round(float(v), 4) if isinstance(v, (float, np.floating)) else v) for k, v in out.items()}


# ------------------------------------------------------------------------------------------------
# A task's run state: loss logs, summary, checkpoint entries, clean stop (train.py's tasks hold the fields)
# ------------------------------------------------------------------------------------------------

def pop_logs(task):
    """Mean of each loss term since the last evaluation (one host copy per evaluation)."""
    out = {k: round(float(v) / max(task.log_n, 1), 5) for k, v in task.log_sums.items()}
    for v in task.log_sums.values():   # zeroed in place: a compiled step's CUDA graph adds into the same memory
        v.zero_()
    task.log_n = 0
    return out


def postfix(task, secs, steps):
    """The progress bar's text: running loss, last accuracy, images/s."""
    ips = task.images_per_step * steps / max(secs, 1e-9)
    loss = task.log_sums.get('loss')
    loss = float(loss) / max(task.log_n, 1) if loss is not None else float('nan')
    return f'loss {loss:.3f} acc {getattr(task, "last_acc", float("nan")):.2f} {ips:.0f} img/s'


def rounded(stats, digits=5):
    """A dict of tensors as JSON: a scalar as a float, anything larger as a flat list (one host copy each)."""
    return {k: [round(float(v), digits) for v in t.reshape(-1).tolist()] if t.numel() > 1 else round(float(t), digits)
            for k, t in stats.items()}


def sampling_records(epoch_draws):
    """Each finished epoch's δt and realised per-class sampling frequency (draws of class i / all draws of the
    epoch), from the (epoch, δt, draws per class on the device) the LT task collected."""
    out = []
    for e, d, drawn in epoch_draws:
        c = drawn.cpu().numpy()
        out.append({'epoch': e, 'delta': round(float(d), 6), 'draws': int(c.sum()),
                    'freq': [round(float(v), 6) for v in c / max(c.sum(), 1)]})
    return out


# The ACR protocol (baselines.md §3.0, anchors.md §1-2): ACR's first-k split (labeled inside unlabeled), mu = 1,
# batch 64, SGD lr 0.03 with a cosine decay, EMA 0.999, evaluation every 500 steps (mean of the last 20).
ACR_PROTOCOL = {'split': 'acr', 'mu': 1, 'batch_size': 64, 'lr': 0.03, 'ema': 0.999, 'eval_every': 500}


def protocol(args):
    """How a run was made, in the words of paper_numbers.csv's `protocol` and `schedule` columns (report.py prints
    a Δ only where they match): name, dataset (imagenet127 with its image size) and schedule (steps or epochs).
    LTSSL: ACR when every ACR_PROTOCOL knob holds, else unknown. LT: RIDE's loss with LDAM margins from epoch 0 is
    RIDE's public code (RIDE-code); CE in stage 1 (RIDE) and the single-expert recipe are the jitter paper's own."""
    a = args if isinstance(args, dict) else vars(args)
    ds = a.get('dataset')
    ds = f"{ds}-{a.get('img_size')}px" if ds == 'imagenet127' else ds
    if a.get('task') == 'ltssl':
        name = 'ACR' if all(a.get(k) == v for k, v in ACR_PROTOCOL.items()) else 'unknown'
        return {'name': name, 'dataset': ds, 'schedule': f"{a.get('iters')} steps"}
    loss, name = a.get('loss'), 'unknown'
    if loss == 'ride':
        name = 'RIDE-code' if a.get('ride_stage1') == 'ldam' else 'paper'
    elif loss == 'ce' and a.get('model') == 'resnet32':
        name = 'paper'
    return {'name': name, 'dataset': ds, 'schedule': f"{a.get('epochs')} epochs"}


def summary(task, history, statistic, eval_head, extra):
    """summary.json: every head's statistics (head_stats), the table's head on top, wall time and images/s."""
    heads = {}
    for name in history[-1]['acc']:
        accs = [r['acc'][name] for r in history]
        heads[name] = head_stats(accs, history[-1]['per_class'][name], task.counts)
    ips = task.images_per_step * task.step / max(task.elapsed, 1e-9)
    return {'task': task.args.task, 'statistic': statistic, 'eval_head': eval_head, **dict(heads[eval_head]),
            'heads': heads, 'steps': task.step, 'evaluations': len(history),
            'class_counts': list(map(int, task.counts)), 'protocol': protocol(task.args), **extra,
            'timing': {'wall_time_s': round(task.elapsed, 1), 'images_per_s': round(ips, 1)}, 'finished': True}


def task_state(task):
    """The checkpoint entries every task has (a task adds its own: EMA, samplers, bank ...)."""
    return {'step': task.step, 'elapsed': task.elapsed, 'gen': task.gen.get_state(), 'opt': task.opt.state_dict(),
            'sched': task.sched.state_dict(), 'model': task.model.state_dict(), 'first_bad': task.first_bad,
            'bad_terms': task.bad_terms, 'log_sums': task.log_sums, 'log_n': task.log_n}


def seat_generator(gen, state, seed):
    """Restore a generator's state, or re-seed it when the state is another device's (a CPU generator's state is
    5056 bytes, a CUDA one's 16: seed and offset). Returns whether it was re-seeded."""
    if state.numel() == gen.get_state().numel():
        gen.set_state(state)
        return False
    gen.manual_seed(seed)
    return True


def load_task_state(task, s):
    task.step, task.elapsed = s['step'], s['elapsed']
    task.step_t.fill_(task.step)
    # a checkpoint from another device (CPU <-> CUDA): the run goes on, its random stream re-seeded from (seed, step)
    if seat_generator(task.gen, s['gen'], task.args.seed * 1_000_003 + task.step):
        task.log(f'warning: the checkpoint was written on another device than {task.device.type}: the random '
                 f'stream is re-seeded at step {task.step} (the run goes on; from here its numbers differ from '
                 f'an uninterrupted run on one device)')
    task.model.load_state_dict(s['model'])
    task.opt.load_state_dict(s['opt'])
    task.sched.load_state_dict(s['sched'])
    dev = task.device
    task.first_bad.copy_(s['first_bad'])
    task.bad_terms = {k: v.to(dev) for k, v in s['bad_terms'].items()}
    task.log_sums = {k: torch.as_tensor(v, dtype=torch.float32).to(dev) for k, v in s['log_sums'].items()}
    task.log_n = s['log_n']


class Stop:
    """SIGTERM/SIGINT ask for a checkpoint at the next step boundary, then a clean exit."""

    def __init__(self):
        self.signal = None
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._set)

    def _set(self, signum, frame):
        self.signal = signum
