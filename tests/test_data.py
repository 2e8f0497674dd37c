"""Tests for data.py. Oracles: the published per-class count lists (spec anchors.md §3), the ACR/LDAM-DRW
split rules re-implemented here with NumPy, hand values, files written here in each dataset's documented
on-disk format (read back pixel for pixel), Pillow/torchvision for the STL-10 resize, a nearest-centroid
classifier for the synthetic set, and a NumPy pad/slice/flip search for lt_view. CPU only, a few seconds."""
import gzip
import os
import pickle
import socket
import urllib.request

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import data
from conftest import FMNIST_DIR, ROOT, needs_fmnist

# ================================================================================================
# Per-class counts: the published lists (anchors.md §3)
# ================================================================================================

C10_LISTS = [  # (n1, gamma, reverse, list) -- every explicit CIFAR-10 / STL-10 row of anchors.md §3
    (1500, 100, False, [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]),
    (3000, 100, False, [3000, 1798, 1078, 646, 387, 232, 139, 83, 50, 30]),
    (500, 100, False, [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]),
    (4000, 100, False, [4000, 2397, 1437, 861, 516, 309, 185, 111, 66, 40]),
    (3000, 100, True, [30, 50, 83, 139, 232, 387, 646, 1078, 1798, 3000]),
    (4000, 100, True, [40, 66, 111, 185, 309, 516, 861, 1437, 2397, 4000]),
    (1500, 150, False, [1500, 859, 492, 282, 161, 92, 53, 30, 17, 10]),
    (3000, 150, False, [3000, 1719, 985, 564, 323, 185, 106, 60, 34, 20]),
    (500, 150, False, [500, 286, 164, 94, 53, 30, 17, 10, 5, 3]),
    (4000, 150, False, [4000, 2292, 1313, 752, 431, 247, 141, 81, 46, 26]),
    (150, 10, False, [150, 116, 89, 69, 53, 41, 32, 25, 19, 15]),      # STL-10
    (150, 20, False, [150, 107, 77, 55, 39, 28, 20, 14, 10, 7]),
    (450, 10, False, [450, 348, 269, 208, 161, 125, 96, 75, 58, 45]),
    (450, 20, False, [450, 322, 231, 165, 118, 85, 61, 43, 31, 22]),
    (5000, 100, False, [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]),  # LDAM CIFAR-10-LT IF=100
]


@pytest.mark.parametrize('n1,gamma,reverse,expected', C10_LISTS)
def test_lt_counts_published_lists(n1, gamma, reverse, expected):
    assert data.lt_counts(n1, 10, gamma, reverse=reverse) == expected


@pytest.mark.parametrize('n1,C,gamma,total,head,tail', [
    (1500, 10, 100, 3720, None, None), (3000, 10, 100, 7443, None, None), (500, 10, 100, 1236, None, None),
    (4000, 10, 100, 9922, None, None), (1500, 10, 150, 3496, None, None), (500, 10, 150, 1162, None, None),
    (150, 100, 10, 5835, [150, 146, 143], [15, 15, 15]), (300, 100, 10, 11720, [300, 293, 286], [31, 30, 30]),
    (50, 100, 10, 1911, None, None), (400, 100, 10, 15651, None, None),
    (5000, 10, 50, 13996, None, None), (5000, 10, 10, 20431, None, None),          # LDAM CIFAR-10-LT
    (500, 100, 100, 10847, [500], [5]), (500, 100, 50, 12608, None, None), (500, 100, 10, 19573, None, None),
])
def test_lt_counts_published_sums(n1, C, gamma, total, head, tail):
    c = data.lt_counts(n1, C, gamma)
    assert len(c) == C and sum(c) == total
    assert c == sorted(c, reverse=True)
    if head:
        assert c[:len(head)] == head and c[-len(tail):] == tail


def test_round_would_fail():
    """The published round() list differs from the int() one; a round() version must not pass."""
    rounded = [round(1500 * (1 / 100) ** (k / 9)) for k in range(10)]
    assert rounded == [1500, 899, 539, 323, 194, 116, 70, 42, 25, 15]        # anchors.md §3 'wrong' column
    assert data.lt_counts(1500, 10, 100) != rounded
    assert sum(data.lt_counts(500, 10, 100)) == 1236 != 1242                  # round() sum


def test_setting_counts():
    n_lab = [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    m_lt = [3000, 1798, 1078, 646, 387, 232, 139, 83, 50, 30]
    assert data.setting_counts(1500, 3000, 100, None, 'consistent', 10) == (n_lab, m_lt)
    assert data.setting_counts(1500, 3000, 100, None, 'uniform', 10) == (n_lab, [3000] * 10)
    assert data.setting_counts(1500, 3000, 100, None, 'reversed', 10) == (n_lab, m_lt[::-1])
    # an explicit gamma_u overrides the setting's (USB's lb500/ulb4000 at gamma 150 rows)
    n, m = data.setting_counts(500, 4000, 150, 150, 'consistent', 10)
    assert sum(n) == 1162 and sum(m) == 9329


# ================================================================================================
# Splits
# ================================================================================================

def _labels(C=4, per=30, seed=0):
    return np.random.RandomState(seed).permutation(np.repeat(np.arange(C), per))


def test_acr_split_first_k_labeled_inside_unlabeled():
    y = _labels()
    n, m = [10, 6, 3, 1], [15, 9, 5, 2]
    lab, unl, real = data.ltssl_split(y, n, m, 'acr', seed=0)
    for c in range(4):
        in_order = np.where(y == c)[0]                       # the class's images in dataset order
        assert sorted(lab[y[lab] == c]) == list(in_order[:n[c]])
        assert sorted(unl[y[unl] == c]) == list(in_order[:n[c] + m[c]])
    assert set(lab) <= set(unl) and len(set(unl)) == len(unl) == sum(n) + sum(m)
    assert np.array_equal(real, ~np.isin(unl, lab))          # u_real False exactly on the labeled ones
    for s in (1, 7):                                         # the seed does not change ACR's split
        assert all(np.array_equal(a, b) for a, b in zip(data.ltssl_split(y, n, m, 'acr', seed=s), (lab, unl, real)))


def test_random_split_disjoint_and_seeded():
    y = _labels()
    n, m = [10, 6, 3, 1], [15, 9, 5, 2]
    lab, unl, real = data.ltssl_split(y, n, m, 'random', seed=0)
    assert not set(lab) & set(unl) and real.all()
    assert np.bincount(y[lab], minlength=4).tolist() == n and np.bincount(y[unl], minlength=4).tolist() == m
    again = data.ltssl_split(y, n, m, 'random', seed=0)
    assert np.array_equal(again[0], lab) and np.array_equal(again[1], unl)
    other = data.ltssl_split(y, n, m, 'random', seed=1)
    assert not np.array_equal(other[0], lab)


def test_check_split():
    y = _labels(per=30)
    data.check_split(y, [10, 6, 3, 1], [20, 9, 5, 2], 'acr')            # 30 = exactly the class size: fine
    with pytest.raises(data.DataError, match='class 0 holds 30'):
        data.check_split(y, [10, 6, 3, 1], [21, 9, 5, 2], 'acr')
    with pytest.raises(data.DataError, match='class 2'):
        data.check_split(y, [10, 6, 31, 1], [0, 0, 0, 0], 'random')


def test_imagenet127_split():
    """10% per class, int(np.around(.)) (half to even, spec baselines.md §5), first-k, re-indexed by
    descending labeled count; unlabeled = everything."""
    counts = [25, 104, 35, 7, 60]
    y = np.random.RandomState(0).permutation(np.repeat(np.arange(5), counts))
    lab, unl, real, remap = data.imagenet127_split(y)
    n_lab = [2, 10, 4, 1, 6]                                   # 2.5->2, 10.4->10, 3.5->4, 0.7->1, 6
    for c in range(5):
        assert sorted(lab[y[lab] == c]) == list(np.where(y == c)[0][:n_lab[c]])
    assert remap.tolist() == [3, 0, 2, 4, 1]                   # 10 labeled -> 0, 6 -> 1, 4 -> 2, 2 -> 3, 1 -> 4
    assert np.array_equal(unl, np.arange(len(y)))
    assert np.array_equal(real, ~np.isin(np.arange(len(y)), lab))


def test_lt_subset_matches_ldam_drw():
    """Oracle: LDAM-DRW IMBALANCECIFAR.gen_imbalanced_data with np.random.seed(0) (global RNG)."""
    y = _labels(C=5, per=40, seed=3)
    counts = [40, 17, 9, 4, 2]
    saved = np.random.get_state()
    try:
        np.random.seed(0)
        expected = []
        for c, k in enumerate(counts):
            idx = np.where(y == c)[0]
            np.random.shuffle(idx)
            expected.append(idx[:k])
    finally:
        np.random.set_state(saved)
    assert np.array_equal(data.lt_subset(y, counts, seed=0), np.concatenate(expected))


# ================================================================================================
# Loaders on files written here in each dataset's on-disk format
# ================================================================================================

@pytest.fixture
def no_network(monkeypatch):
    """Downloads fail at once instead of reaching for the network."""
    def refuse(*a, **k):
        raise OSError('network disabled in tests')
    monkeypatch.setattr(urllib.request, 'urlopen', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)


@pytest.fixture
def trust_files(monkeypatch):
    """torchvision verifies the md5 of every official file; files written by a test cannot match, so the
    integrity checks are switched off (only them: parsing is torchvision's own code)."""
    ds = torchvision.datasets
    for cls in (ds.CIFAR10, ds.STL10, ds.SVHN):               # CIFAR100 inherits CIFAR10's
        monkeypatch.setattr(cls, '_check_integrity', lambda self: True)
    monkeypatch.setattr(ds.cifar, 'check_integrity', lambda *a, **k: True)   # CIFAR _load_meta


def _images(rng, n, size=32):
    return rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8)          # HWC, channels differ


def _planar(hwc):
    """CIFAR / downsampled-ImageNet row: 1024 R, then 1024 G, then 1024 B values, each row-major."""
    return hwc.transpose(0, 3, 1, 2).reshape(len(hwc), -1)


def _pickle(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        pickle.dump(obj, f)


def _check_pixels(x, y, hwc, labels):
    assert x.dtype == np.uint8 and x.shape == (len(hwc), 3, 32, 32)
    assert np.array_equal(x, hwc.transpose(0, 3, 1, 2))
    assert np.array_equal(x[:, 0], hwc[..., 0])                # channel 0 is red
    assert y.dtype == np.int64 and y.tolist() == list(labels)


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_cifar_loader(tmp_path, no_network, trust_files, name):
    rng = np.random.RandomState(0)
    C = 10 if name == 'cifar10' else 100
    key = 'labels' if name == 'cifar10' else 'fine_labels'
    folder = tmp_path / ('cifar-10-batches-py' if name == 'cifar10' else 'cifar-100-python')
    train_names = [f'data_batch_{i}' for i in range(1, 6)] if name == 'cifar10' else ['train']
    tr_img, tr_lab = [], []
    for f in train_names:
        im, lab = _images(rng, 3), rng.randint(0, C, 3).tolist()
        _pickle(folder / f, {'data': _planar(im), key: lab})
        tr_img.append(im); tr_lab += lab
    te_img, te_lab = _images(rng, 4), rng.randint(0, C, 4).tolist()
    _pickle(folder / ('test_batch' if name == 'cifar10' else 'test'), {'data': _planar(te_img), key: te_lab})
    _pickle(folder / ('batches.meta' if name == 'cifar10' else 'meta'),
            {('label_names' if name == 'cifar10' else 'fine_label_names'): [f'c{i}' for i in range(C)]})
    ds = data.load_dataset(name, str(tmp_path))
    _check_pixels(ds.train_x, ds.train_y, np.concatenate(tr_img), tr_lab)
    _check_pixels(ds.test_x, ds.test_y, te_img, te_lab)
    assert ds.num_classes == C and ds.mean == data.STATS[name][0]


def test_svhn_loader(tmp_path, no_network, trust_files):
    sio = pytest.importorskip('scipy.io', reason='torchvision reads SVHN .mat files with scipy')
    rng = np.random.RandomState(0)
    arrays = {}
    for split, n in (('train', 5), ('test', 3)):
        im, lab = _images(rng, n), rng.randint(1, 11, n)       # SVHN stores digit 0 as label 10
        sio.savemat(str(tmp_path / f'{split}_32x32.mat'), {'X': im.transpose(1, 2, 3, 0), 'y': lab[:, None]})
        arrays[split] = im, np.where(lab == 10, 0, lab)
    ds = data.load_dataset('svhn', str(tmp_path))
    _check_pixels(ds.train_x, ds.train_y, *arrays['train'])
    _check_pixels(ds.test_x, ds.test_y, *arrays['test'])


def test_requirements_provide_scipy_for_svhn():
    with open(os.path.join(ROOT, 'requirements.txt')) as f:
        assert 'scipy' in f.read().split()


def _write_stl(folder, name, hwc):
    """STL-10 binary: per image 3 planes of 96x96 uint8 stored column-major (torchvision transposes back)."""
    hwc.transpose(0, 3, 2, 1).tofile(str(folder / name))


def test_stl10_loader(tmp_path, no_network, trust_files):
    rng = np.random.RandomState(0)
    folder = tmp_path / 'stl10_binary'
    folder.mkdir()
    imgs = {k: _images(rng, n, 96) for k, n in (('train', 4), ('test', 3), ('unlabeled', 5))}
    labels = {'train': np.array([1, 10, 3, 2], np.uint8), 'test': np.array([5, 1, 10], np.uint8)}  # 1-based
    for k, im in imgs.items():
        _write_stl(folder, f'{k}_X.bin', im)
    for k, lab in labels.items():
        lab.tofile(str(folder / f'{k}_y.bin'))
    (folder / 'class_names.txt').write_text('\n'.join(f'c{i}' for i in range(10)) + '\n')
    (folder / 'fold_indices.txt').write_text('0 1\n2 3\n' * 5)
    ds = data.load_dataset('stl10', str(tmp_path))

    def resized(hwc):  # ACR's STL pipeline: transforms.Resize((32, 32)) on the PIL image (bilinear)
        rs = torchvision.transforms.Resize((32, 32))
        return np.stack([np.asarray(rs(Image.fromarray(im))) for im in hwc])
    _check_pixels(ds.train_x, ds.train_y, resized(imgs['train']), labels['train'] - 1)
    _check_pixels(ds.test_x, ds.test_y, resized(imgs['test']), labels['test'] - 1)
    assert np.array_equal(ds.extra_x, resized(imgs['unlabeled']).transpose(0, 3, 1, 2))


def _write_idx(path, arr):
    """IDX (MNIST family): 0, 0, dtype 0x08 (uint8), ndim; dims as big-endian int32; the bytes."""
    head = bytes([0, 0, 8, arr.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in arr.shape)
    with gzip.open(path, 'wb') as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def test_fmnist_loader(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(data, 'FMNIST_SYSTEM_DIR', str(tmp_path / 'not-installed'))
    raw = tmp_path / 'FashionMNIST' / 'raw'
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    arrays = {}
    for split, n in (('train', 6), ('t10k', 4)):
        x, y = rng.randint(1, 256, (n, 28, 28)), rng.randint(0, 10, n)
        _write_idx(raw / f'{split}-images-idx3-ubyte.gz', x)
        _write_idx(raw / f'{split}-labels-idx1-ubyte.gz', y)
        arrays[split] = x, y
    ds = data.load_dataset('fmnist', str(tmp_path))
    for (x, y), (gx, gy) in ((arrays['train'], (ds.train_x, ds.train_y)), (arrays['t10k'], (ds.test_x, ds.test_y))):
        assert gx.dtype == np.uint8 and gx.shape == (len(x), 3, 32, 32)
        assert np.array_equal(gy, y)
        padded = np.pad(x, ((0, 0), (2, 2), (2, 2)))               # 28 -> 32, zero border of 2 px
        for c in range(3):                                          # gray copied to 3 equal channels
            assert np.array_equal(gx[:, c], padded)


def test_fmnist_dir_matches_data():
    assert FMNIST_DIR == data.FMNIST_SYSTEM_DIR      # conftest's skip condition looks where data.py looks


@needs_fmnist
def test_fmnist_installed_copy():
    """The Debian dataset-fashion-mnist files: 60k/10k, balanced 6000/1000 per class."""
    ds = data.load_dataset('fmnist', '/nonexistent')
    assert ds.train_x.shape == (60000, 3, 32, 32) and ds.test_x.shape == (10000, 3, 32, 32)
    assert np.bincount(ds.train_y).tolist() == [6000] * 10 and np.bincount(ds.test_y).tolist() == [1000] * 10
    assert (ds.train_x[:, 0] == ds.train_x[:, 2]).all() and not ds.train_x[:, :, :2].any()


@pytest.mark.parametrize('size', [32, 64])
def test_imagenet127_loader(tmp_path, size):
    rng = np.random.RandomState(0)
    d = tmp_path / f'small_imagenet_127_{size}'
    written = {}
    for f in data.IMAGENET127_FILES:
        im, lab = _images(rng, 2, size), rng.randint(1, 128, 2).tolist()     # 1-based labels
        _pickle(d / f, {'data': _planar(im), 'labels': lab})
        written[f] = im, lab
    ds = data.load_dataset('imagenet127', str(tmp_path), img_size=size)
    tr_im = np.concatenate([written[f][0] for f in data.IMAGENET127_FILES[:-1]])
    tr_lab = sum((written[f][1] for f in data.IMAGENET127_FILES[:-1]), [])
    assert ds.train_x.shape == (20, 3, size, size) and ds.train_x.dtype == np.uint8
    assert np.array_equal(ds.train_x, tr_im.transpose(0, 3, 1, 2))
    assert ds.train_y.tolist() == [v - 1 for v in tr_lab]
    assert np.array_equal(ds.test_x, written['val_data'][0].transpose(0, 3, 1, 2))
    assert ds.test_y.tolist() == [v - 1 for v in written['val_data'][1]]


def test_imagenet127_bad_pickle(tmp_path):
    d = tmp_path / 'small_imagenet_127_32'
    d.mkdir()
    for f in data.IMAGENET127_FILES:
        (d / f).write_bytes(b'not a pickle')
    with pytest.raises(data.DataError, match='train_data_batch_1'):
        data.load_dataset('imagenet127', str(tmp_path))


@pytest.mark.parametrize('name', ['cifar10', 'cifar100', 'stl10', 'svhn', 'fmnist', 'imagenet127'])
def test_missing_files_raise_data_error(tmp_path, monkeypatch, no_network, name):
    monkeypatch.setattr(data, 'FMNIST_SYSTEM_DIR', str(tmp_path / 'not-installed'))
    root = str(tmp_path / 'empty')
    with pytest.raises(data.DataError) as e:
        data.load_dataset(name, root)
    assert root in str(e.value)
    assert data.dataset_present(name, root)[0] is False


# ================================================================================================
# Corrupt files are named as corrupt; --data-dir comes before the system copy; FMNIST_DIR
# ================================================================================================

def _cifar10_files(folder, rng):
    """A CIFAR-10 folder of valid pickles (3 images per batch)."""
    for f in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        _pickle(folder / f, {'data': _planar(_images(rng, 3)), 'labels': [0, 1, 2]})
    _pickle(folder / 'batches.meta', {'label_names': [f'c{i}' for i in range(10)]})


def test_cifar_md5_mismatch_is_corrupt_not_missing(tmp_path, no_network):
    _cifar10_files(tmp_path / 'cifar-10-batches-py', np.random.RandomState(0))   # not the official bytes
    with pytest.raises(data.DataError) as e:
        data.load_dataset('cifar10', str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / 'cifar-10-batches-py' / 'data_batch_1') in msg and 'corrupt' in msg and 'MD5' in msg
    assert 'not found' not in msg and 'delete it' in msg


def test_cifar_bad_pickle_names_the_file(tmp_path, no_network, trust_files):
    folder = tmp_path / 'cifar-10-batches-py'
    _cifar10_files(folder, np.random.RandomState(0))
    (folder / 'data_batch_3').write_bytes(b'\x80\x04 cut short')                  # passes the (patched) MD5 check
    with pytest.raises(data.DataError) as e:
        data.load_dataset('cifar10', str(tmp_path))
    assert str(folder / 'data_batch_3') in str(e.value) and 'corrupt' in str(e.value)


@pytest.mark.parametrize('damage', ['short', 'not-gzip', 'label-count'])
def test_fmnist_damaged_idx(tmp_path, monkeypatch, no_network, damage):
    monkeypatch.setattr(data, 'FMNIST_SYSTEM_DIR', str(tmp_path / 'not-installed'))
    raw = tmp_path / 'FashionMNIST' / 'raw'
    raw.mkdir(parents=True)
    for split, n in (('train', 6), ('t10k', 4)):
        _write_idx(raw / f'{split}-images-idx3-ubyte.gz', np.zeros((n, 28, 28)))
        _write_idx(raw / f'{split}-labels-idx1-ubyte.gz', np.zeros(n))
    bad = raw / ('t10k-labels-idx1-ubyte.gz' if damage == 'label-count' else 'train-images-idx3-ubyte.gz')
    if damage == 'short':         # the header says 6 x 28 x 28; 5 images follow (a cut download)
        with gzip.open(bad, 'wb') as f:
            f.write(bytes([0, 0, 8, 3]) + b''.join(d.to_bytes(4, 'big') for d in (6, 28, 28)) + bytes(5 * 784))
    elif damage == 'not-gzip':
        bad.write_bytes(b'<html>proxy error</html>')
    else:                         # a valid IDX file of 3 labels beside 4 test images
        _write_idx(bad, np.zeros(3))
    with pytest.raises(data.DataError) as e:
        data.load_dataset('fmnist', str(tmp_path))
    assert str(bad) in str(e.value) and 'corrupt' in str(e.value) and 'dataset-fashion-mnist' in str(e.value)


def _fmnist_dir(d, n_train):
    d.mkdir(parents=True)
    for split, n in (('train', n_train), ('t10k', 2)):
        _write_idx(d / f'{split}-images-idx3-ubyte.gz', np.zeros((n, 28, 28)))
        _write_idx(d / f'{split}-labels-idx1-ubyte.gz', np.arange(n) % 10)


def test_data_dir_before_system_copy(tmp_path, monkeypatch):
    """Both present: the explicit --data-dir wins (3 training images there, 5 in the 'system' copy)."""
    _fmnist_dir(tmp_path / 'system', 5)
    _fmnist_dir(tmp_path / 'mine' / 'FashionMNIST' / 'raw', 3)
    monkeypatch.setattr(data, 'FMNIST_SYSTEM_DIR', str(tmp_path / 'system'))
    assert len(data.load_dataset('fmnist', str(tmp_path / 'mine')).train_y) == 3
    assert len(data.load_dataset('fmnist', str(tmp_path / 'elsewhere')).train_y) == 5   # then the system copy
    _fmnist_dir(tmp_path / 'flat', 4)                                                 # the IDX files right there
    assert len(data.load_dataset('fmnist', str(tmp_path / 'flat')).train_y) == 4


def test_fmnist_dir_env_moves_the_system_lookup(tmp_path):
    import subprocess
    import sys
    _fmnist_dir(tmp_path / 'fm', 7)
    code = 'import data; print(data.FMNIST_SYSTEM_DIR, len(data.load_dataset("fmnist", "/nonexistent").train_y))'
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, FMNIST_DIR=str(tmp_path / 'fm')))
    assert r.stdout.split() == [str(tmp_path / 'fm'), '7'], r.stderr


def _lt_tree(root, payload):
    d = root / data.IMAGENET_LT_DIR
    (d / 'train' / 'n0').mkdir(parents=True)
    Image.new('RGB', (8, 8), (255, 0, 0)).save(d / 'train' / 'n0' / 'good.JPEG')
    (d / 'train' / 'n0' / 'bad.JPEG').write_bytes(payload)
    for name in data.IMAGENET_LT_LISTS.values():
        (d / name).write_text('train/n0/good.JPEG 0\ntrain/n0/bad.JPEG 0\n')
    return d


def test_imagenet_lt_empty_jpeg_is_corrupt(tmp_path):
    d = _lt_tree(tmp_path, b'')
    with pytest.raises(data.DataError) as e:
        data.load_dataset('imagenet_lt', str(tmp_path))
    assert str(d / 'train' / 'n0' / 'bad.JPEG') in str(e.value) and 'corrupt' in str(e.value)


def test_imagenet_lt_undecodable_jpeg_one_line_from_a_worker(tmp_path):
    d = _lt_tree(tmp_path, b'\xff\xd8\xff garbage, not a JPEG body')
    ds = data.load_dataset('imagenet_lt', str(tmp_path))
    images = data.JpegImages(ds.root, ds.train_files, ds.train_y, size=8, train=False)
    assert images[0][0].shape == (3, 8, 8)
    with pytest.raises(data.DataError) as e:
        images[1]
    assert str(d / 'train' / 'n0' / 'bad.JPEG') in str(e.value) and 'corrupt' in str(e.value)
    # decoded in a DataLoader worker, the error comes back wrapped in a traceback text: still one line
    with pytest.raises(data.DataError) as e:
        list(data.jpeg_loader(images, [[0, 1]], workers=1))
    assert len(str(e.value).splitlines()) == 1 and 'bad.JPEG is corrupt' in str(e.value)


# ================================================================================================
# The synthetic set
# ================================================================================================

@pytest.fixture(scope='module')
def synth():
    return data.make_synthetic(n_per_class=60, n_test=20, seed=1)


def test_synthetic_deterministic(synth):
    again = data.make_synthetic(n_per_class=60, n_test=20, seed=1)
    for k in ('train_x', 'train_y', 'test_x', 'test_y', 'train_boxes', 'test_boxes'):
        assert np.array_equal(getattr(synth, k), getattr(again, k))
    other = data.make_synthetic(n_per_class=60, n_test=20, seed=2)
    assert not np.array_equal(other.train_x, synth.train_x)
    assert synth.train_x.shape == (600, 3, 32, 32) and synth.train_x.dtype == np.uint8
    assert np.bincount(synth.train_y).tolist() == [60] * 10 and np.bincount(synth.test_y).tolist() == [20] * 10


def test_synthetic_boxes_hold_the_object(synth):
    """The objects are saturated colours on a grey-ish texture: saturation (max - min channel) inside
    the true box is higher than outside it, and the box is tight (its border rows/columns hit the object)."""
    x, b = synth.train_x.astype(np.int32), synth.train_boxes
    sat = x.max(1) - x.min(1)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 32).all() and (w >= 3).all() and (h >= 3).all() and (w <= 16).all()
    inside = np.zeros(sat.shape, bool)
    for i, (x1, y1, x2, y2) in enumerate(b):
        inside[i, y1:y2, x1:x2] = True
    s_in = (sat * inside).sum((1, 2)) / inside.sum((1, 2))
    s_out = (sat * ~inside).sum((1, 2)) / (~inside).sum((1, 2))
    assert np.mean(s_in > s_out + 20) > 0.95
    edge_hits = [max(sat[i, y1, x1:x2].max(), sat[i, y2 - 1, x1:x2].max(), sat[i, y1:y2, x1].max(),
                     sat[i, y1:y2, x2 - 1].max()) > 100 for i, (x1, y1, x2, y2) in enumerate(b)]
    assert np.mean(edge_hits) > 0.95


def _nearest_centroid(ftr, ytr, fte):
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
    cent = np.stack([ftr[ytr == c].mean(0) for c in range(10)])
    return ((fte[:, None] - cent[None]) ** 2).sum(-1).argmin(1)


def test_synthetic_is_learnable(synth):
    """Oracle that the classes are learnable at all: nearest-centroid on raw pixels beats chance (10%;
    colour gives 20%), and on the pixels inside the true box (resized to 12x12) it separates the classes."""
    flat = lambda x: x.reshape(len(x), -1).astype(np.float32)  # noqa: E731
    acc_pix = np.mean(_nearest_centroid(flat(synth.train_x), synth.train_y, flat(synth.test_x)) == synth.test_y)

    def crops(x, boxes):
        return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(im[:, y1:y2, x1:x2].transpose(1, 2, 0)))
                                    .resize((12, 12), Image.BILINEAR), np.float32).reshape(-1)
                         for im, (x1, y1, x2, y2) in zip(x, boxes)])
    pred = _nearest_centroid(crops(synth.train_x, synth.train_boxes), synth.train_y,
                             crops(synth.test_x, synth.test_boxes))
    acc_box = np.mean(pred == synth.test_y)
    assert acc_pix > 0.18, acc_pix          # 200 test images: chance is 10% +- 2.1%
    assert acc_box > 0.9, acc_box


# ================================================================================================
# Device-side batches
# ================================================================================================

def test_epoch_sampler_passes_and_resume():
    n, b = 10, 3
    s = data.EpochSampler(n, b, torch.device('cpu'), torch.Generator().manual_seed(0))
    passes = [torch.cat([s.next() for _ in range(n // b)]).tolist() for _ in range(4)]
    for p in passes:                                  # drop_last: 3 batches of 3 distinct indices per pass
        assert len(p) == 9 and len(set(p)) == 9 and set(p) <= set(range(n))
    assert len({tuple(p) for p in passes}) == 4      # reshuffled every pass
    with pytest.raises(ValueError):
        data.EpochSampler(3, 4, torch.device('cpu'), torch.Generator())
    # round trip mid-pass: sampler state + generator state continue identically
    g = torch.Generator().manual_seed(1)
    a = data.EpochSampler(n, b, torch.device('cpu'), g)
    for _ in range(5):
        a.next()
    state, gstate = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in a.state_dict().items()}, g.get_state()
    expected = [a.next().tolist() for _ in range(7)]
    g2 = torch.Generator().manual_seed(99)
    r = data.EpochSampler(n, b, torch.device('cpu'), g2)
    r.load_state_dict(state)
    g2.set_state(gstate)
    assert [r.next().tolist() for _ in range(7)] == expected


def test_lt_view_crop_flip_is_exact():
    """degrees=0: each output is a zero-padded integer shift (|dx|,|dy| <= 4) of the input, maybe flipped."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (24, 3, 32, 32), generator=g, dtype=torch.uint8)   # no zeros: padding shows
    out = data.lt_view(x, torch.Generator().manual_seed(1), degrees=0.0).numpy()
    xs = np.pad(x.numpy(), ((0, 0), (0, 0), (4, 4), (4, 4)))
    found = []
    for i in range(len(x)):
        hits = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                if np.array_equal(out[i], (lambda c: c[..., ::-1] if f else c)(xs[i, :, dy:dy + 32, dx:dx + 32]))]
        assert hits, f'image {i} is no shift/flip of its input'
        found.append(hits[0])
    assert len({f for _, _, f in found}) == 2 and len({(dy, dx) for dy, dx, _ in found}) > 5   # random, not fixed
    assert out.dtype == np.uint8


def test_lt_view_rotation_changes_images():
    """degrees=15 (RIDE): still uint8 [B,3,32,32], and not all outputs are pure shift/flips (rotation acts)."""
    x = torch.randint(1, 256, (8, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    a = data.lt_view(x, torch.Generator().manual_seed(1), degrees=15.0)
    b = data.lt_view(x, torch.Generator().manual_seed(1), degrees=0.0)
    assert a.shape == x.shape and a.dtype == torch.uint8 and not torch.equal(a, b)
