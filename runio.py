"""Run directories: args/env records, atomic checkpoints (last two kept), metrics and summaries.

A run directory is always either complete (summary.json with "finished": true) or resumable
(args.json + checkpoint): files are written to a temporary name and renamed into place.
"""
import errno
import fcntl
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
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    finally:
        _discard(tmp)


def _write_temp(path, data: bytes):
    """`data` in a fsync'ed temporary file beside `path` (its name returned); a full disk is bad input (exit 2):
    the temporary file is removed and `path` is untouched."""
    d = os.path.dirname(path) or '.'
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix='.tmp-')
    except OSError as e:
        raise_disk_full(e, path)
        raise
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; run files should follow the umask like any file
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        _discard(tmp)
        if isinstance(e, OSError):
            raise_disk_full(e, path)
        raise
    return tmp


def _discard(tmp):
    if os.path.exists(tmp):
        os.unlink(tmp)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def raise_disk_full(e, path):
    """A full disk (or quota) while writing a run file -> UsageError; any other OSError is left to the caller."""
    if isinstance(e, OSError) and e.errno in DISK_FULL:
        raise UsageError(f'no space left on the device writing {path} ({os.strerror(e.errno)}); the last good '
                         f'checkpoint is kept: free some space, then rerun with --resume') from None


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


# What marks a directory as a run's (env.json alone does not: a kill can leave it before args.json is written).
RUN_FILES = ('args.json', 'checkpoint.pt', 'checkpoint.prev.pt', 'metrics.jsonl', 'summary.json')
CHECKPOINTS = ('checkpoint.pt', 'checkpoint.prev.pt')        # newest first


def run_config(args_dict):
    """The arguments that define a run's result (what args.json and every checkpoint must agree on)."""
    return {k: v for k, v in args_dict.items() if k not in RESUME_FREE}


def _first_diff(old, new):
    return next((k for k in sorted(set(old) | set(new)) if k not in RESUME_FREE and old.get(k) != new.get(k)), None)


def _present(run_dir):
    return [f for f in RUN_FILES if os.path.exists(os.path.join(run_dir, f))]


def prepare(run_dir, args_dict, resume):
    """Validate the run directory against --resume (reads only). Returns True if a previous run exists.

    A directory holding a run's files is written over only by its own --resume: without --resume it is refused,
    and so is one whose args.json is missing or unreadable (nothing could check that the run is the same)."""
    present = _present(run_dir)
    if present and not resume:
        raise UsageError(f'run directory {run_dir} already exists; pass --resume to continue it '
                         f'or --out to start a new one')
    if present:
        old = _read_args(run_dir, present)
        k = _first_diff(old, args_dict)
        if k is not None:
            raise UsageError(f'--resume of {run_dir} with different arguments: {k} was '
                             f'{old.get(k)!r}, now {args_dict.get(k)!r}; use the same flags or a new --out')
    check_writable(run_dir)
    return bool(present)


def _read_args(run_dir, present):
    args_path = os.path.join(run_dir, 'args.json')
    if 'args.json' not in present:
        raise UsageError(f'{run_dir} holds {", ".join(present)} but no args.json, so --resume cannot check the '
                         f'arguments; restore args.json, or start a new run with another --out')
    old, why = None, 'not a JSON object'
    try:
        with open(args_path) as f:
            old = json.load(f)
    except (OSError, ValueError) as e:
        why = type(e).__name__
    if not isinstance(old, dict):
        raise UsageError(f'{args_path} is unreadable ({why}), so --resume '
                         f'cannot check the arguments; restore it or start a new run with another --out') from None
    return old


def _holder_pid(raw):
    """The pid on the lock file's first line; 'unknown' when it holds none (a holder that died before writing it,
    or a line torn by a shorter pid written over a longer one)."""
    first = raw.decode(errors='replace').split('\n', 1)[0].strip()
    return first if first.isdigit() else 'unknown'


class RunLock:
    """One process per run directory for the run's lifetime: fcntl.flock on RUN_DIR/.lock (the kernel drops it when
    the process ends, kill -9 included, so a stale lock cannot block a --resume). The holder writes its pid into the
    file, so that a second process is refused naming it."""

    def __init__(self, run_dir):
        self.run_dir, self.path, self.fd = run_dir, os.path.join(run_dir, '.lock'), None

    def acquire(self):
        """Take the lock if the directory exists (a no-op when held already); UsageError when another process holds it."""
        if self.fd is not None or not os.path.isdir(self.run_dir):
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        except OSError as e:
            raise_disk_full(e, self.path)
            raise UsageError(f'cannot lock {self.run_dir} ({e.strerror} on {self.path}); choose another --out') from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder_pid(os.pread(fd, 32, 0))
            os.close(fd)
            raise UsageError(f'run directory {self.run_dir} is in use by process {pid} (it holds {self.path}); wait '
                             f'for it to end, or choose another --out') from None
        self.fd = fd

    def claim(self):
        """This process now writes the directory: its pid goes into the lock file."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f'{os.getpid()}\n'.encode(), 0)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def create(run_dir, args_dict, env, lock, resuming):
    """Make the run directory (under `lock`, re-checked there: another process may have started the same --out since
    prepare), remove what a kill left, and write env.json and args.json (args.json last: it marks the run)."""
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise_disk_full(e, run_dir)
        raise
    lock.acquire()
    if not resuming and _present(run_dir):
        raise UsageError(f'run directory {run_dir} was created by another process meanwhile; pass --resume to '
                         f'continue it or --out to start a new one')
    lock.claim()
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
    """Write checkpoint.pt atomically; the previous one is kept as checkpoint.prev.pt. The new file is complete on
    disk before the old ones move, so a full disk (exit 2) leaves both checkpoints as they were."""
    import io
    buf = io.BytesIO()
    torch.save(state, buf)
    path, prev = (os.path.join(run_dir, n) for n in CHECKPOINTS)
    tmp = _write_temp(path, buf.getvalue())
    try:
        if os.path.exists(path):
            os.replace(path, prev)
        os.replace(tmp, path)
    finally:
        _discard(tmp)


def _load_first(run_dir):
    """(name, state, warnings) of the newest readable checkpoint; (None, None, warnings) when none is."""
    warnings = []
    for name in CHECKPOINTS:
        path = os.path.join(run_dir, name)
        if not os.path.exists(path):
            continue
        try:
            return name, torch.load(path, map_location='cpu', weights_only=False), warnings
        except Exception as e:
            warnings.append(f'warning: {path} is unreadable ({type(e).__name__}); trying the previous checkpoint')
    return None, None, warnings


def load_checkpoint(run_dir, log=print):
    """The newest readable checkpoint; a corrupt or truncated newest falls back to the previous one."""
    _, state, warnings = _load_first(run_dir)
    for w in warnings:
        log(w)
    return state


def resume_state(run_dir, args_dict, log=print):
    """The checkpoint --resume continues from (None: the run wrote none yet), checked before anything is written:
    checkpoints that are all unreadable, or one written by another configuration, are refused (UsageError)."""
    names = [n for n in CHECKPOINTS if os.path.exists(os.path.join(run_dir, n))]
    name, state, warnings = _load_first(run_dir)
    if names and state is None:
        raise UsageError(f'no readable checkpoint in {run_dir} ({" and ".join(names)} unreadable), so it cannot '
                         f'resume; restore a checkpoint, or start again with another --out')
    saved = state.get('config') if isinstance(state, dict) else None
    k = _first_diff(saved, run_config(args_dict)) if saved is not None else None
    if k is not None:
        raise UsageError(f'{os.path.join(run_dir, name)} belongs to another run: {k} is {saved.get(k)!r} there but '
                         f'{args_dict.get(k)!r} in args.json; restore the run\'s own checkpoint or use another --out')
    for w in warnings:
        log(w)
    return state


# ------------------------------------------------------------------------------------------------
# Metrics and summary
# ------------------------------------------------------------------------------------------------

def append_metrics(run_dir, record, tb=None):
    """One evaluation record -> a line of metrics.jsonl (and the same record to TensorBoard when `tb` is given)."""
    path = os.path.join(run_dir, 'metrics.jsonl')
    try:   # a full disk may leave a torn last line: read_metrics drops it on resume (no checkpoint covers it)
        with open(path, 'a') as f:
            f.write(json.dumps(record, default=_json_default) + '\n')
    except OSError as e:
        raise_disk_full(e, path)
        raise
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


def read_metrics(run_dir, step, log=print):
    """On resume: the evaluations up to the checkpoint's step. Later ones (logged after the checkpoint) are dropped
    -- they will be recomputed identically (write_metrics puts the kept ones back). A torn last line is one of them:
    append_metrics runs before its evaluation's checkpoint, so a kill or a full disk inside it leaves a line that no
    checkpoint covers. A damaged line before the last is refused by name (UsageError): evaluations would be lost."""
    path = os.path.join(run_dir, 'metrics.jsonl')
    if not os.path.exists(path):
        return []
    with open(path, 'rb') as f:
        lines = [(i + 1, line) for i, line in enumerate(f.read().split(b'\n')) if line.strip()]
    recs = []
    for i, line in lines:
        rec = _record(line)
        if rec is None and i == lines[-1][0]:
            log(f'repaired {path}: dropped its torn last line {i} (an evaluation after the checkpoint, recomputed)')
        elif rec is None:
            raise UsageError(f'{path} is damaged at line {i} of {lines[-1][0]} (not an evaluation record), so --resume '
                             f'would lose evaluations; restore the file, or start again with another --out')
        else:
            recs.append(rec)
    return [r for r in recs if r['step'] <= step]


def _record(line):
    try:
        rec = json.loads(line)
    except ValueError:          # also a line cut inside a multi-byte character (UnicodeDecodeError)
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get('step'), int) else None


def write_metrics(run_dir, records):
    """metrics.jsonl rewritten (atomically) to hold `records`: the resumed run appends after them."""
    atomic_write(os.path.join(run_dir, 'metrics.jsonl'),
                 ''.join(json.dumps(r, default=_json_default) + '\n' for r in records).encode())


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
            'bad_terms': task.bad_terms, 'log_sums': task.log_sums, 'log_n': task.log_n,
            'config': run_config(vars(task.args))}   # resume_state refuses a checkpoint of another run


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
