"""ImageNet-LT (jitter Table 4): the OLTR list format, the JPEG pipeline and `train.py --dataset imagenet_lt`.

ImageNet cannot be reached here, so the tests write a small tree in the exact on-disk layout:
  <data_dir>/imagenet_lt/ImageNet_LT_train.txt   'train/<wnid>/<wnid>_<k>.JPEG <label>'
  <data_dir>/imagenet_lt/ImageNet_LT_test.txt    'val/<wnid>/ILSVRC2012_val_<k>.JPEG <label>'
  <data_dir>/imagenet_lt/{train,val}/<wnid>/*.JPEG
Oracles: the lists' own counts, PIL for the test transform (resize short side + centre crop), the colour
each class's images were painted with, and an uninterrupted run for resume.
"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import conftest  # noqa: F401  (sys.path, one thread)
import data
import flags
import train

COLORS = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]      # class c is painted in channel c % 3
TRAIN_COUNTS = [12, 7, 4, 3, 2, 2]                           # long-tailed, like 1280 -> 5
N_TEST = 3


def _image(c, k, rng):
    """A class-coloured image with a random size (ImageNet images are not square) and a little noise."""
    w, h = int(rng.integers(40, 72)), int(rng.integers(40, 72))
    base = np.array(COLORS[c % 3], np.int16)
    px = np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(px)


def write_tree(root, counts=TRAIN_COUNTS, n_test=N_TEST, seed=0):
    d = os.path.join(root, 'imagenet_lt')
    rng = np.random.default_rng(seed)
    lines = {'train': [], 'test': []}
    for c, n in enumerate(counts):
        wnid = f'n{c:08d}'
        for split, folder, m in (('train', 'train', n), ('test', 'val', n_test)):
            os.makedirs(os.path.join(d, folder, wnid), exist_ok=True)
            for k in range(m):
                name = f'{wnid}_{k}.JPEG' if split == 'train' else f'ILSVRC2012_val_{c * 100 + k:08d}.JPEG'
                rel = f'{folder}/{wnid}/{name}'
                _image(c, k, rng).save(os.path.join(d, rel), 'JPEG', quality=95)
                lines[split].append(f'{rel} {c}')
    for split, name in data.IMAGENET_LT_LISTS.items():
        with open(os.path.join(d, name), 'w') as f:
            f.write('\n'.join(lines[split]) + '\n')
    return d


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp('inet')
    write_tree(str(root))
    return str(root)


# ------------------------------------------------------------------------------------------------
# Lists and loader
# ------------------------------------------------------------------------------------------------

def test_lists_give_the_long_tailed_counts(tree):
    ds = data.load_dataset('imagenet_lt', tree)
    assert ds.streaming and ds.num_classes == len(TRAIN_COUNTS)
    assert np.bincount(ds.train_y).tolist() == TRAIN_COUNTS
    assert np.bincount(ds.test_y).tolist() == [N_TEST] * len(TRAIN_COUNTS)
    assert ds.train_files[0] == 'train/n00000000/n00000000_0.JPEG'
    assert any('115846' in n for n in ds.notes)            # a small tree is flagged as not the published split
    assert data.dataset_present('imagenet_lt', tree) == (True, '')


def test_missing_and_malformed_inputs_name_the_fix(tmp_path):
    ok, msg = data.dataset_present('imagenet_lt', str(tmp_path))
    assert not ok and 'ImageNet_LT_train.txt' in msg and 'imagenet_lt' in msg
    d = write_tree(str(tmp_path), counts=[2, 1], n_test=1)
    os.remove(os.path.join(d, 'train/n00000001/n00000001_0.JPEG'))
    with pytest.raises(data.DataError, match=r'1 of 3 ImageNet-LT train images missing.*n00000001_0\.JPEG'):
        data.load_dataset('imagenet_lt', str(tmp_path))
    with open(os.path.join(d, 'ImageNet_LT_test.txt'), 'a') as f:
        f.write('val/n00000000/x.JPEG zero\n')
    with pytest.raises(data.DataError, match=r'ImageNet_LT_test\.txt:3: expected'):
        data.load_dataset('imagenet_lt', str(tmp_path))


def test_test_transform_matches_pil_resize_and_centre_crop(tree):
    ds = data.load_dataset('imagenet_lt', tree)
    size = 48
    images = data.JpegImages(ds.root, ds.test_files, ds.test_y, size, train=False)
    for i in (0, 7, 17):
        x, y = images[i]
        im = Image.open(os.path.join(ds.root, ds.test_files[i])).convert('RGB')
        w, h = im.size
        s = size * 256 // 224                                  # Resize(256) : CenterCrop(224), scaled
        nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        im = im.resize((nw, nh), Image.BILINEAR)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        ref = np.asarray(im.crop((left, top, left + size, top + size))).transpose(2, 0, 1)
        assert x.dtype == torch.uint8 and tuple(x.shape) == (3, size, size)
        assert np.abs(x.numpy().astype(int) - ref.astype(int)).max() <= 1   # PIL's own resize, +-1 rounding
        assert y == ds.test_y[i]


def test_train_crops_follow_their_seed_and_keep_the_label(tree):
    ds = data.load_dataset('imagenet_lt', tree)
    images = data.JpegImages(ds.root, ds.train_files, ds.train_y, 32, train=True)
    a, ya = images[(5, 123)]
    b, _ = images[(5, 123)]
    c, _ = images[(5, 124)]
    assert torch.equal(a, b) and not torch.equal(a, c) and tuple(a.shape) == (3, 32, 32)
    for i in range(0, len(ds.train_files), 5):                # ColorJitter keeps the painted channel dominant
        x, y = images[(i, i)]
        assert int(x.float().mean((1, 2)).argmax()) == int(y) % 3


def test_batches_do_not_depend_on_the_number_of_workers(tree):
    ds = data.load_dataset('imagenet_lt', tree)
    images = data.JpegImages(ds.root, ds.train_files, ds.train_y, 32, train=True)
    keys = [list(zip([3, 9, 0, 20], data.sample_seeds(0, s, 4))) for s in range(3)]
    one = [x for x, _ in data.jpeg_loader(images, keys, workers=0)]
    two = [x for x, _ in data.jpeg_loader(images, keys, workers=2)]
    assert all(torch.equal(p, q) for p, q in zip(one, two))


# ------------------------------------------------------------------------------------------------
# train.py --dataset imagenet_lt
# ------------------------------------------------------------------------------------------------

TINY = ['--task', 'lt', '--dataset', 'imagenet_lt', '--model', 'ride', '--experts', '2', '--img-size', '32',
        '--batch-size', '6', '--workers', '0', '--device', 'cpu', '--no-progress']


def test_defaults_are_ride_imagenet_lt_config():
    a = flags.resolve(flags.build_parser().parse_args(['--task', 'lt', '--dataset', 'imagenet_lt', '--model', 'ride']))
    assert (a.batch_size, a.lr, a.wd, a.epochs, a.img_size, a.imb) == (256, 0.1, 2e-4, 100, 224, 256)
    assert flags.lr_steps(a) == (60, 80) and flags.drw_epoch(a) == 80
    assert a.sampler == 'jitter1' and (a.jitter_alpha, a.jitter_beta, a.jitter_gamma) == (0.05, 2.0, 0.01)
    assert (a.delta_fixed, a.delta_fixed_from) == (0.0, 80)          # jitter during epochs 0-80 only


@pytest.mark.parametrize('extra, needle', [
    (['--imb', '100'], '--imb does not apply to ImageNet-LT'),
    (['--model', 'resnet32'], 'use --model ride'),
    (['--img-size', '16'], '--img-size must be >= 32'),
])
def test_bad_imagenet_lt_flags_exit_2_with_one_line(tree, capsys, extra, needle, tmp_path):
    argv = [a for a in TINY if a not in ('--model', 'ride')] if '--model' in extra else list(TINY)
    code = train.main(argv + extra + ['--data-dir', tree, '--out', str(tmp_path / 'r')])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err
    assert not (tmp_path / 'r').exists()


def test_missing_imagenet_lt_stops_before_training(tmp_path, capsys):
    code = train.main(TINY + ['--data-dir', str(tmp_path), '--out', str(tmp_path / 'r'), '--epochs', '1'])
    err = capsys.readouterr().err.strip()
    assert code == 2 and 'ImageNet_LT_train.txt' in err and len(err.splitlines()) == 1
    assert not (tmp_path / 'r').exists()


def test_runs_end_to_end_and_reports_groups(tree, tmp_path):
    out = tmp_path / 'run'
    code = train.main(TINY + ['--data-dir', tree, '--out', str(out), '--epochs', '2', '--iters-per-epoch', '2',
                              '--eval-every', '1'])
    assert code == 0
    s = json.loads((out / 'summary.json').read_text())
    assert s['finished'] and len(s['per_class']) == len(TRAIN_COUNTS)
    assert 0 <= s['last'] <= 100
    args = json.loads((out / 'args.json').read_text())
    assert args['wd'] == 2e-4 and args['imb'] == 256
    hist = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
    assert [h['step'] for h in hist] == [2, 4]


def _task(tree, argv):
    a = flags.resolve(flags.build_parser().parse_args(TINY + ['--data-dir', tree] + argv))
    torch.manual_seed(a.seed)
    return train.make_task(a, torch.device('cpu'), lambda *k, **kw: None)


def _advance(task, n):
    """n steps of the task's own epoch loop (LTTask.steps: a resumed task re-enters its epoch)."""
    steps = task.steps()
    for _ in range(n):
        next(steps)


def test_mid_epoch_resume_is_exact(tree):
    """Checkpoint after 2 of an epoch's 3 steps, rebuild, continue: the same weights as 5 straight steps."""
    argv = ['--epochs', '2', '--iters-per-epoch', '3', '--sampler', 'jitter1', '--experts', '1']
    straight = _task(tree, argv)
    _advance(straight, 5)
    first = _task(tree, argv)
    _advance(first, 2)
    state = first.state_dict()
    resumed = _task(tree, argv)
    resumed.load_state_dict(state)
    _advance(resumed, 3)
    for p, q in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(p, q)


@pytest.mark.slow
def test_ctrl_c_with_decoding_workers_resumes_exactly(tree, tmp_path):
    """SIGINT to the whole process group (what Ctrl-C does) while 2 workers decode: exit 130 with a
    checkpoint, and the resumed run equals an uninterrupted in-process run with no workers."""
    import signal
    import subprocess
    import sys
    import time
    argv = TINY + ['--data-dir', tree, '--epochs', '3', '--iters-per-epoch', '4', '--eval-every', '1',
                   '--experts', '1', '--log-every', '1']
    ref = tmp_path / 'ref'
    assert train.main(argv + ['--out', str(ref)]) == 0
    out = tmp_path / 'run'
    cmd = [sys.executable, os.path.join(conftest.ROOT, 'train.py')] + argv + ['--workers', '2', '--out', str(out)]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    t0 = time.time()
    while not (out / 'metrics.jsonl').exists() or not (out / 'metrics.jsonl').read_text():
        assert p.poll() is None and time.time() - t0 < 120, p.stdout.read().decode()[-2000:]
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)                    # inside epoch 2: its batches are being decoded ahead
    log = p.communicate(timeout=120)[0].decode()
    assert p.returncode == 130 and 'continue with --resume' in log, log[-2000:]
    assert subprocess.run(cmd + ['--resume'], env=env, capture_output=True).returncode == 0
    a, b = (json.loads((d / 'summary.json').read_text()) for d in (ref, out))
    a.pop('timing'), b.pop('timing')
    assert a == b
    assert (ref / 'metrics.jsonl').read_text() == (out / 'metrics.jsonl').read_text()


def test_training_batches_pair_each_crop_with_its_label(tree):
    """The task's own batches (sampler indices -> crops -> device): every crop's painted colour channel is its
    label's. (The samplers' class frequencies are tested in test_jitter.py.)"""
    task = _task(tree, ['--epochs', '1', '--iters-per-epoch', '8', '--sampler', 'balanced', '--experts', '1'])
    task.start_epoch(0)
    ys = []
    for _ in range(task.ipe):
        x, y = task.batch(task.draw())
        assert x.dtype == torch.uint8 and tuple(x.shape) == (6, 3, 32, 32)
        assert torch.equal(x.float().mean((2, 3)).argmax(1), y % 3)
        ys.append(y)
    assert len(set(torch.cat(ys).tolist())) >= 4               # the batches span the classes, not one colour


@conftest.needs_fmnist
def test_fashion_mnist_written_as_an_imagenet_lt_tree_loads_back(tmp_path):
    """reproduce/fmnist_as_imagenet_lt.py: the lists load through load_imagenet_lt with the LDAM counts, and a
    decoded test image equals the Fashion-MNIST original (JPEG at quality 95: within a few grey levels)."""
    import subprocess
    import sys
    script = os.path.join(conftest.ROOT, 'reproduce', 'fmnist_as_imagenet_lt.py')
    subprocess.run([sys.executable, script, str(tmp_path), '--img-max', '20', '--imb', '10', '--test-per-class', '2'],
                   check=True, capture_output=True)
    ds = data.load_dataset('imagenet_lt', str(tmp_path))
    assert np.bincount(ds.train_y).tolist() == data.lt_counts(20, 10, 10)
    assert np.bincount(ds.test_y).tolist() == [2] * 10
    fm = data.load_dataset('fmnist')
    first0 = fm.test_x[np.where(fm.test_y == 0)[0][0], 0, 2:30, 2:30].astype(int)
    img = np.asarray(Image.open(os.path.join(ds.root, ds.test_files[0])).convert('L')).astype(int)
    assert ds.test_y[0] == 0 and np.abs(img - first0).mean() < 3
