"""Datasets, long-tailed splits and device-resident batches.

Everything a training step reads lives on the device as uint8 NCHW tensors; batches are index
tensors drawn on the device (no DataLoader, no PIL on the hot path). Augmentation is in augment.py.
The exception is ImageNet-LT (115k full-size JPEGs): JpegImages + jpeg_loader decode them in workers.

  lt_counts(n1, C, gamma, reverse)     the DARP/ACR/USB per-class count formula (spec anchors.md §3)
  load_dataset(name, data_dir, ...)    -> Dataset(train_x, train_y, test_x, test_y, ...) as uint8 numpy
  ltssl_split(...)                     ACR first-k split (default) or a seeded random disjoint split
  lt_subset(...)                       LDAM-DRW long-tailed training subset (seeded per-class shuffle)
  EpochSampler                         reshuffled, drop_last index batches on the device (= DataLoader shuffle)
"""
import gzip
import math
import os
import pickle
import unicodedata
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch


class DataError(Exception):
    """A dataset is missing or malformed. The message says what is wrong and how to fix it."""

    def __str__(self):
        # raised in a DataLoader worker, the error comes back as "Caught DataError in ... Traceback ...
        # DataError: <message>": keep the message, one line
        msg = super().__str__().strip().splitlines() or ['']
        return msg[-1].split('DataError: ', 1)[-1]


# Per-dataset normalisation (ACR dataset/cifar.py; STL reuses the CIFAR-10 stats there).
STATS = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    'stl10': ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    'svhn': ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    'imagenet127': ((0.48109809, 0.45747185, 0.40785507), (0.26040889, 0.2532126, 0.26820634)),
    'fmnist': ((0.2860,) * 3, (0.3530,) * 3),
    'synthetic': ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    'imagenet_lt': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),   # RIDE/OLTR ImageNet transforms
}
# LDAM-DRW / RIDE normalise CIFAR-LT with this std (spec jitter.md §4.2).
LT_STATS = {'cifar10': ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
            'cifar100': ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))}
NUM_CLASSES = {'cifar10': 10, 'cifar100': 100, 'stl10': 10, 'svhn': 10, 'fmnist': 10,
               'imagenet127': 127, 'synthetic': 10, 'imagenet_lt': 1000}
# Debian's dataset-fashion-mnist; FMNIST_DIR points the lookup elsewhere (an empty folder tests the fallbacks)
FMNIST_SYSTEM_DIR = os.environ.get('FMNIST_DIR', '/usr/share/datasets/fashion-mnist')


@dataclass
class Dataset:
    name: str
    train_x: np.ndarray            # uint8 [N,3,H,W]
    train_y: np.ndarray            # int64 [N]
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    mean: tuple
    std: tuple
    extra_x: np.ndarray = None     # STL-10's 100k unlabeled split (labels unknown)
    train_boxes: np.ndarray = None  # synthetic: true object boxes (x1,y1,x2,y2), x2/y2 exclusive
    test_boxes: np.ndarray = None
    notes: list = field(default_factory=list)
    class_names: list = None       # folder: the class folders' names, head -> tail
    as_given: bool = False         # folder: the class counts are the run's (no exponential profile is drawn)
    labeled_share: float = None    # folder without unlabeled/: the labeled share of each class (share_counts)
    root: str = None               # imagenet_lt: images are files under root, decoded per batch
    train_files: list = None       # (train_x / test_x are None then)
    test_files: list = None

    @property
    def streaming(self):
        return self.train_x is None


# ------------------------------------------------------------------------------------------------
# Long-tailed counts and splits
# ------------------------------------------------------------------------------------------------

def lt_counts(n1, num_classes, gamma, reverse=False):
    """n_k = int(n1 * gamma**(-k/(C-1))), last class int(n1/gamma) (DARP/ACR make_imb_data).

    int() truncation, not round(): round() gives different published lists (anchors.md §3).
    gamma = 1 gives the uniform setting; reverse=True the reversed one.
    """
    mu = np.power(1 / gamma, 1 / (num_classes - 1))
    counts = [int(n1 * np.power(mu, k)) for k in range(num_classes - 1)] + [int(n1 / gamma)]
    return counts[::-1] if reverse else counts


def setting_counts(n1, m1, imb_l, imb_u, setting, num_classes):
    """Labeled and unlabeled per-class counts for the three LTSSL settings (ACR README).

    consistent: gamma_u = gamma_l; uniform: gamma_u = 1; reversed: gamma_u = gamma_l, order flipped.
    An explicit imb_u overrides the setting's gamma_u.
    """
    n = lt_counts(n1, num_classes, imb_l)
    g_u = imb_u if imb_u is not None else (1.0 if setting == 'uniform' else imb_l)
    m = lt_counts(m1, num_classes, g_u, reverse=(setting == 'reversed'))
    return n, m


def ltssl_split(labels, n_counts, m_counts, split='acr', seed=0):
    """Returns (labeled_idx, unlabeled_idx, u_real) as int64/bool numpy arrays.

    'acr' (ACR dataset/cifar.py train_split): per class, in dataset order, labeled = first n_k,
      unlabeled = first n_k + m_k, so the unlabeled set CONTAINS the labeled images. u_real marks
      the truly unlabeled ones (ACR stores target -2 for the others) so that distribution estimates
      can exclude them. The seed does not affect this split.
    'random' (DASO/USB style): a seeded per-class permutation, labeled and unlabeled disjoint.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    lab, unl, real = [], [], []
    for c, (n, m) in enumerate(zip(n_counts, m_counts)):
        idx = np.where(labels == c)[0]
        if split == 'random':
            idx = idx[rng.permutation(len(idx))]
            lab.append(idx[:n]); unl.append(idx[n:n + m]); real.append(np.ones(m, bool))
        else:
            lab.append(idx[:n]); unl.append(idx[:n + m])
            real.append(np.r_[np.zeros(n, bool), np.ones(m, bool)])
    return np.concatenate(lab), np.concatenate(unl), np.concatenate(real)


def check_split(labels, n_counts, m_counts, split, names=None, fix='lower --n1/--m1'):
    """Raise DataError if a class holds fewer images than the split asks for (names: a folder's class names)."""
    have = np.bincount(np.asarray(labels), minlength=len(n_counts))
    need = [n + m for n, m in zip(n_counts, m_counts)]
    for c, (h, w) in enumerate(zip(have, need)):
        if w > h:
            name = f'class {names[c]!r} ({c})' if names else f'class {c}'
            raise DataError(f'{name} holds {h} training images but the split asks for {w} '
                            f'(labeled {n_counts[c]} + unlabeled {m_counts[c]}); {fix}')


def ltssl_indices(ds, n1, m1, imb_l, imb_u, setting, split='acr', seed=0, supervised=False):
    """The LTSSL split of a loaded dataset -> (labeled idx, unlabeled idx, u_real, train labels, the array the
    unlabeled idx index into). ImageNet-127: ACR's 10 % per class (remaps ds.test_y to the 127 classes);
    STL-10 and a folder with unlabeled/: first-k of the labeled set + the whole unlabeled set; a folder taken as
    given: all of train/ labeled (beside unlabeled/), else ds.labeled_share of each class; else setting_counts +
    ltssl_split."""
    if ds.name == 'imagenet127':
        lab, unl, real, remap = imagenet127_split(ds.train_y)
        ds.test_y = remap[ds.test_y]
        return lab, unl, real, remap[ds.train_y], ds.train_x
    if ds.as_given and ds.labeled_share is not None:     # a folder without unlabeled/: its labels hidden
        n, m = share_counts(ds.train_y, ds.labeled_share, ds.num_classes)
    elif ds.as_given:                                    # a folder beside its unlabeled/: every label is used
        n, m = np.bincount(ds.train_y, minlength=ds.num_classes).tolist(), [0] * ds.num_classes
    else:
        n, m = setting_counts(n1, m1, imb_l, imb_u, setting, ds.num_classes)
    if ds.extra_x is not None:
        # ACR get_stl10: labeled = first-k of the 5k train split; unlabeled = the 100k split (gamma_u unknown)
        check_split(ds.train_y, n, [0] * len(n), 'acr', ds.class_names)
        lab, _, _ = ltssl_split(ds.train_y, n, [0] * len(n), 'acr')
        return lab, np.arange(len(ds.extra_x)), np.ones(len(ds.extra_x), bool), ds.train_y, ds.extra_x
    m = [0] * len(m) if supervised else m
    check_split(ds.train_y, n, m, split, ds.class_names)
    lab, unl, real = ltssl_split(ds.train_y, n, m, split, seed)
    return lab, unl, real, ds.train_y, ds.train_x


def lt_subset(labels, counts, seed=0):
    """LDAM-DRW IMBALANCECIFAR: np.random.seed(0), shuffle each class, keep the first n_k."""
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    out = []
    for c, n in enumerate(counts):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        out.append(idx[:n])
    return np.concatenate(out)


def lt_train_set(ds, imb, device):
    """LDAM-DRW's long-tailed training subset of a loaded dataset (rand_number = 0: the split is fixed; a folder
    taken as given: all of it) and the test set, as device tensors -> (counts, train_x, train_y, test_x, test_y)."""
    have = np.bincount(ds.train_y, minlength=ds.num_classes)
    counts = have.tolist() if ds.as_given else lt_counts(int(have.max()), ds.num_classes, imb)  # IMBALANCECIFAR (§7)
    check_split(ds.train_y, counts, [0] * len(counts), 'acr', ds.class_names, fix='raise --imb (a steeper profile) or use --folder-counts as-given')
    idx = lt_subset(ds.train_y, counts, seed=0)
    to = lambda x, dt=None: torch.as_tensor(x, dtype=dt).to(device)  # noqa: E731
    return (np.array(counts), to(ds.train_x[idx]), to(ds.train_y[idx], torch.long), to(ds.test_x),
            to(ds.test_y, torch.long))


def imagenet127_split(labels, labeled_percent=0.1):
    """ACR get_smallimagenet: round(10%) of each class labeled (first-k), unlabeled = whole train set.

    Classes are re-indexed by descending labeled count (ACR: np.argsort(-counts)) so class 0 is the head.
    Returns (labeled_idx, unlabeled_idx, u_real, remap) with new_label = remap[old_label] (train and test).
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    n_lab = np.around(counts * labeled_percent).astype(int)
    lab = np.concatenate([np.where(labels == c)[0][:n] for c, n in enumerate(n_lab)])
    order = np.argsort(-n_lab)
    remap = np.empty_like(order); remap[order] = np.arange(len(order))
    real = np.ones(len(labels), bool); real[lab] = False
    return lab, np.arange(len(labels)), real, remap


# ------------------------------------------------------------------------------------------------
# Loaders (uint8 NCHW numpy). Each raises DataError with a one-line fix when files are missing.
# ------------------------------------------------------------------------------------------------

def _checked_files(cls, root, kw):
    """(path, md5) of the files torchvision's integrity check reads for this dataset class and split."""
    if hasattr(cls, 'split_list'):                              # SVHN: one .mat file per split
        _, name, md5 = cls.split_list[kw['split']]
        return [(os.path.join(root, name), md5)]
    if not hasattr(cls, 'train_list'):                          # FashionMNIST: existence only (read by _read_idx)
        return []
    return [(os.path.join(root, cls.base_folder, f), md5) for f, md5 in cls.train_list + cls.test_list]


def _corrupt_file(cls, root, kw):
    """The first file that is present but fails torchvision's MD5 check, else None."""
    from torchvision.datasets.utils import check_integrity
    return next((p for p, md5 in _checked_files(cls, root, kw) if os.path.exists(p) and not check_integrity(p, md5)),
                None)


def _unreadable_file(cls, root, kw):
    """A file that passes the MD5 check but does not parse: the first CIFAR pickle that fails to load, or the
    dataset's folder when the format is not a pickle."""
    if not hasattr(cls, 'meta'):
        return next((p for p, _ in _checked_files(cls, root, kw)), root)
    for p in [p for p, _ in _checked_files(cls, root, kw)] + [os.path.join(root, cls.base_folder, cls.meta['filename'])]:
        try:
            with open(p, 'rb') as f:
                pickle.load(f, encoding='latin1')
        except Exception:  # noqa: BLE001  any failure to parse names this file
            return p
    return os.path.join(root, cls.base_folder)


def _replace_hint(what):
    return (f'delete it and run again on a networked machine (torchvision downloads {what} again), '
            f'or copy a good copy of the file in its place')


def _torchvision(cls, root, what, **kw):
    try:
        return cls(root, download=False, **kw)
    except (RuntimeError, FileNotFoundError):
        bad = _corrupt_file(cls, root, kw)           # present but failing the check: corrupt, not missing
        if bad:
            raise DataError(f'{bad} is corrupt (its MD5 differs from the official file); {_replace_hint(what)}') from None
    except Exception as e:  # noqa: BLE001  present, passes the MD5 check, does not parse
        bad = _unreadable_file(cls, root, kw)
        raise DataError(f'{bad} is corrupt (torchvision cannot read it: {type(e).__name__}); '
                        f'{_replace_hint(what)}') from None
    try:
        return cls(root, download=True, **kw)
    except Exception as e:  # no network, bad archive, ...
        raise DataError(f'{what} not found under {root} and the download failed ({type(e).__name__}); '
                        f'download it with torchvision on a networked machine and copy it to {root}') from None


def _hwc_to_nchw(x):
    return np.ascontiguousarray(np.asarray(x, dtype=np.uint8).transpose(0, 3, 1, 2))


def load_cifar(name, root):
    from torchvision import datasets
    cls = datasets.CIFAR10 if name == 'cifar10' else datasets.CIFAR100
    what = 'CIFAR-10 (cifar-10-batches-py/)' if name == 'cifar10' else 'CIFAR-100 (cifar-100-python/)'
    tr, te = _torchvision(cls, root, what, train=True), _torchvision(cls, root, what, train=False)
    return (_hwc_to_nchw(tr.data), np.asarray(tr.targets, np.int64),
            _hwc_to_nchw(te.data), np.asarray(te.targets, np.int64))


def _resize(pil, size):
    """PIL bilinear Resize((size, size)) of an RGB image -> uint8 CHW (the whole image, squashed: ACR's STL resize)."""
    from PIL import Image
    return np.asarray(pil.resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)


def _resize32(x_nchw):
    """PIL bilinear Resize((32,32)) once at load time, as ACR's STL transforms do per image."""
    from PIL import Image
    out = np.empty((len(x_nchw), 3, 32, 32), np.uint8)
    for i, im in enumerate(x_nchw):
        out[i] = _resize(Image.fromarray(im.transpose(1, 2, 0)), 32)
    return out


def load_stl10(root, with_unlabeled=True):
    from torchvision import datasets
    what = 'STL-10 (stl10_binary/)'
    tr = _torchvision(datasets.STL10, root, what, split='train')
    te = _torchvision(datasets.STL10, root, what, split='test')
    ex = _resize32(_torchvision(datasets.STL10, root, what, split='unlabeled').data) if with_unlabeled else None
    return (_resize32(tr.data), tr.labels.astype(np.int64), _resize32(te.data), te.labels.astype(np.int64), ex)


def load_svhn(root):
    import importlib.util
    if importlib.util.find_spec('scipy') is None:
        raise DataError('SVHN needs scipy (torchvision reads the .mat files with scipy.io): pip install scipy')
    from torchvision import datasets
    tr = _torchvision(datasets.SVHN, root, 'SVHN (train_32x32.mat)', split='train')
    te = _torchvision(datasets.SVHN, root, 'SVHN (test_32x32.mat)', split='test')
    return tr.data, tr.labels.astype(np.int64), te.data, te.labels.astype(np.int64)


_FMNIST_FIX = ('replace it: apt-get install --reinstall dataset-fashion-mnist (the system copy), or delete it and run '
               'again on a networked machine (torchvision downloads Fashion-MNIST)')


def _read_idx(path):
    """IDX format (MNIST family): 0, 0, dtype 0x08 (uint8), ndim; dims as big-endian int32; the bytes.
    A file that does not decompress, or whose size differs from what its header says, is corrupt."""
    try:
        with gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb') as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:   # gzip.BadGzipFile is an OSError; a cut file is EOFError
        raise DataError(f'{path} is corrupt (cannot be read: {type(e).__name__}); {_FMNIST_FIX}') from None
    ndim = raw[3] if len(raw) >= 4 and raw[:3] == bytes([0, 0, 8]) else 0
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim))
    need = 4 + 4 * ndim + int(np.prod(shape))
    if ndim == 0 or len(raw) != need:
        raise DataError(f'{path} is corrupt (not a uint8 IDX file of the size its header gives: {len(raw)} bytes, '
                        f'expected {need if ndim else "an IDX header"}); {_FMNIST_FIX}')
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_fmnist(root):
    """The four IDX files: under --data-dir first (itself, FashionMNIST/raw, fashion-mnist), then the system copy."""
    names = ['train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte']
    dirs = [root, os.path.join(root, 'FashionMNIST', 'raw'), os.path.join(root, 'fashion-mnist'), FMNIST_SYSTEM_DIR]
    for d in dirs:
        for ext in ('.gz', ''):
            paths = [os.path.join(d, n + ext) for n in names]
            if all(os.path.exists(p) for p in paths):
                return paths
    return None


def load_fmnist(root):
    """Fashion-MNIST: 28x28 gray -> zero-pad 2 px to 32x32 -> the gray plane copied to 3 channels.

    Three equal channels keep every model and augmentation op unchanged (Color then acts as identity,
    as it does on any gray image in PIL). Read from Debian's dataset-fashion-mnist when installed.
    """
    paths = _find_fmnist(root)
    if paths is None:
        from torchvision import datasets
        _torchvision(datasets.FashionMNIST, root, 'Fashion-MNIST', train=True)
        paths = _find_fmnist(root)
    xs = [_read_idx(p) for p in paths]
    for x, y, p in ((xs[0], xs[1], paths[1]), (xs[2], xs[3], paths[3])):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f'{p} is corrupt ({len(y)} labels for {len(x)} images of shape {x.shape[1:]}); {_FMNIST_FIX}')
        bad = np.flatnonzero(y >= NUM_CLASSES['fmnist'])     # would be dropped by the split, or break evaluation
        if len(bad):
            raise DataError(f'{p} is corrupt ({len(bad)} labels outside 0-9, the first {y[bad[0]]} at index '
                            f'{bad[0]}); {_FMNIST_FIX}')

    def prep(x):
        x = np.pad(x, ((0, 0), (2, 2), (2, 2)))
        return np.ascontiguousarray(np.repeat(x[:, None], 3, axis=1))
    return prep(xs[0]), xs[1].astype(np.int64), prep(xs[2]), xs[3].astype(np.int64)


IMAGENET127_FILES = [f'train_data_batch_{i}' for i in range(1, 11)] + ['val_data']


def load_imagenet127(root, size):
    """ACR/CoSSL Small-ImageNet-127: pickles with 'data' (N, 3*s*s) uint8 and 1-based 'labels'."""
    d = os.path.join(root, f'small_imagenet_127_{size}')
    missing = [f for f in IMAGENET127_FILES if not os.path.exists(os.path.join(d, f))]
    if missing:
        raise DataError(f'ImageNet-127 at {size}px needs {d}/train_data_batch_1..10 and val_data '
                        f'(missing: {missing[0]}); build them with CoSSL\'s Small-ImageNet-127 script '
                        f'(manual download, see README "Datasets")')

    def read(files):
        xs, ys = [], []
        for f in files:
            with open(os.path.join(d, f), 'rb') as fh:
                try:
                    e = pickle.load(fh, encoding='latin1')
                    xs.append(np.asarray(e['data'], np.uint8)); ys.extend(e['labels'])
                except Exception:
                    raise DataError(f'{os.path.join(d, f)} is corrupt (not a Small-ImageNet pickle: a dict with '
                                    f'data/labels); re-create it with CoSSL\'s Small-ImageNet-127 script') from None
                if xs[-1].ndim != 2 or xs[-1].shape[1] != 3 * size * size or len(xs[-1]) != len(e['labels']):
                    raise DataError(f'{os.path.join(d, f)} holds {xs[-1].shape[-1]} values per image for '
                                    f'{len(e["labels"])} labels; --img-size {size} needs {3 * size * size} per '
                                    f'image: check --img-size or re-create the file')
        x = np.concatenate(xs).reshape(-1, 3, size, size)
        return np.ascontiguousarray(x), np.asarray(ys, np.int64) - 1
    return read(IMAGENET127_FILES[:-1]) + read(IMAGENET127_FILES[-1:])


# ------------------------------------------------------------------------------------------------
# synthetic: a generated, learnable long-tail-ready image set with known object boxes
# ------------------------------------------------------------------------------------------------

def _shape_mask(kind, s):
    """Binary s x s mask of one of 5 shapes."""
    yy, xx = np.mgrid[0:s, 0:s] + 0.5
    c = s / 2
    masks = [np.ones((s, s), bool),                                           # square
             (xx - c) ** 2 + (yy - c) ** 2 <= c ** 2,                         # disc
             yy >= np.abs(xx - c) * 2,                                        # triangle
             (np.abs(xx - c) < s / 6) | (np.abs(yy - c) < s / 6),             # plus
             np.abs(xx - yy) < s / 4]                                         # diagonal bar
    return masks[kind]


def make_synthetic(n_per_class=600, n_test=50, num_classes=10, size=32, seed=0):
    """Class c = shape (c % 5) x colour group (c // 5), random size 8-16 px at a random place,
    pasted on a smooth random texture. Deterministic in `seed`. Returns a Dataset with boxes.

    The object is the only class evidence, so a CAM box should find it (tests measure that IoU).
    Vectorised per object size: generating the 7000 images takes well under a second.
    """
    rng = np.random.RandomState(seed)
    palette = np.array([[220, 60, 60], [60, 90, 220]], np.float32)

    def gen(n_each):
        n = n_each * num_classes
        y = np.repeat(np.arange(num_classes), n_each)
        coarse = rng.randint(60, 190, (n, 3, 5, 5)).astype(np.float32)
        x = np.kron(coarse, np.ones((1, 1, 7, 7), np.float32))[:, :, :size, :size]
        x += rng.normal(0, 12, x.shape).astype(np.float32)
        s = rng.randint(8, 17, n)
        x0, y0 = (rng.randint(0, size - s + 1) for _ in range(2))
        col = palette[(y // 5) % 2] + rng.normal(0, 15, (n, 3)).astype(np.float32)
        boxes = np.zeros((n, 4), np.int64)
        for size_k in np.unique(s):                       # one vectorised paste per object size
            idx = np.where(s == size_k)[0]
            masks = np.stack([_shape_mask(k, size_k) for k in range(5)])[y[idx] % 5]      # [m,s,s]
            rows = y0[idx, None] + np.arange(size_k)                                      # [m,s]
            cols = x0[idx, None] + np.arange(size_k)
            patch = x[idx[:, None, None, None], np.arange(3)[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
            patch = np.where(masks[:, None], col[idx][:, :, None, None], patch)
            x[idx[:, None, None, None], np.arange(3)[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]] = patch
            ys, xs = masks.any(2), masks.any(1)                                           # [m,s] each
            first = lambda a: a.argmax(1)                                                 # noqa: E731
            last = lambda a: size_k - 1 - a[:, ::-1].argmax(1)                            # noqa: E731
            boxes[idx] = np.stack([x0[idx] + first(xs), y0[idx] + first(ys),
                                   x0[idx] + last(xs) + 1, y0[idx] + last(ys) + 1], 1)
        return np.clip(x, 0, 255).astype(np.uint8), y, boxes
    tx, ty, tb = gen(n_per_class)
    vx, vy, vb = gen(n_test)
    return Dataset('synthetic', tx, ty, vx, vy, num_classes, *STATS['synthetic'], train_boxes=tb, test_boxes=vb)


# ------------------------------------------------------------------------------------------------
# folder: the user's own image folder (torchvision ImageFolder layout), decoded once, held like the others
# ------------------------------------------------------------------------------------------------

FOLDER_LAYOUT = 'DIR/train/<class>/<images>, DIR/test/<class>/<images> (or val/), optionally DIR/unlabeled/<images>'
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')   # torchvision's


@dataclass
class FolderLayout:
    """The files of an image folder; classes numbered head to tail (training count descending, ties by name),
    as ACR re-indexes ImageNet-127, so that class 0 is the head wherever the code assumes it (the LT profiles,
    the head/tail halves)."""
    root: str
    classes: list      # class names, head -> tail
    train: list        # per class: its image paths, sorted
    test: list
    unlabeled: list    # image paths under DIR/unlabeled/, or None without that folder
    notes: list


def _images_under(d):
    """Image files under d, recursively, in sorted order, links followed (torchvision ImageFolder); other files
    and hidden ones are not images."""
    out = []
    for top, dirs, files in os.walk(d, followlinks=True):
        dirs[:] = sorted(x for x in dirs if not x.startswith('.'))
        out += [os.path.join(top, f) for f in sorted(files)
                if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith('.')]
    return out


def _class_folders(d):
    """{class name: image paths} of the class folders of d; a stray file or an empty class is an error."""
    names = sorted(e for e in os.listdir(d) if not e.startswith('.'))
    stray = next((e for e in names if not os.path.isdir(os.path.join(d, e))), None)
    if stray:
        raise DataError(f'{os.path.join(d, stray)} is not inside a class folder: {d} holds one folder per class '
                        f'({FOLDER_LAYOUT})')
    twins = next(((a, b) for i, a in enumerate(names) for b in names[i + 1:] if _name_key(a) == _name_key(b)), None)
    if twins:
        raise DataError(f'class folders {twins[0]!r} and {twins[1]!r} of {d} differ only in case or Unicode form, so '
                        f'reports could not tell them apart (and a case-insensitive copy merges them); merge or rename one')
    classes = {c: _images_under(os.path.join(d, c)) for c in names}
    empty = next((c for c, files in classes.items() if not files), None)
    if empty:
        raise DataError(f'class {empty!r} has no images in {os.path.join(d, empty)} (.jpg, .png, ...); add images '
                        f'or remove the folder')
    return classes


def _name_key(name):
    """A class name up to case and Unicode form ('café' typed on macOS is NFD, on Linux usually NFC)."""
    return unicodedata.normalize('NFC', name).casefold()


def folder_layout(root):
    """List (decode nothing) and check an image folder: train/ and test/ (or val/) with the same classes, at least
    two, none empty; an unlabeled/ folder, when present, not empty. Raises DataError naming the class or folder."""
    train_dir, unl_dir = os.path.join(root, 'train'), os.path.join(root, 'unlabeled')
    test_dirs = [os.path.join(root, d) for d in ('test', 'val') if os.path.isdir(os.path.join(root, d))]
    if not os.path.isdir(train_dir) or not test_dirs:
        missing = train_dir if not os.path.isdir(train_dir) else os.path.join(root, 'test')
        raise DataError(f'{missing} not found: --dataset folder reads {FOLDER_LAYOUT} (--data-dir DIR)')
    train, test = _class_folders(train_dir), _class_folders(test_dirs[0])
    if len(train) < 2:
        raise DataError(f'{train_dir} holds {len(train)} class folder(s); a classifier needs at least 2')
    for c in sorted(set(test) - set(train)):
        twin = next((t for t in train if _name_key(t) == _name_key(c)), None)
        fix = (f'rename one: it differs from {twin!r} of {train_dir} only in case or Unicode form' if twin else
               f'add its training images or remove it from {test_dirs[0]}')
        raise DataError(f'class {c!r} of {test_dirs[0]} is missing from {train_dir}: the model cannot learn it; {fix}')
    for c in sorted(set(train) - set(test)):
        raise DataError(f'class {c!r} has no folder in {test_dirs[0]}, so its accuracy cannot be measured; add its '
                        f'test images')
    unlabeled = _images_under(unl_dir) if os.path.isdir(unl_dir) else None
    if unlabeled == []:
        raise DataError(f'{unl_dir} holds no images (.jpg, .png, ...); add the unlabeled images or remove the folder')
    classes = sorted(train, key=lambda c: (-len(train[c]), c))
    notes = [f'{test_dirs[0]} is the test set; {test_dirs[1]} is not read'] if len(test_dirs) > 1 else []
    return FolderLayout(root, classes, [train[c] for c in classes], [test[c] for c in classes], unlabeled, notes)


def available_memory(device=None):
    """Bytes free for the decoded images: the GPU's free memory (CUDA), else the host's available RAM."""
    if device is not None and device.type == 'cuda':
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open('/proc/meminfo') as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable:'))
    except (OSError, StopIteration, ValueError):
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


def check_fits(root, n_images, size, device=None):
    """Before decoding: n_images uint8 images of 3 x size x size must fit the host (the decoded arrays) and the
    device (the training tensors; on the CPU these are a second copy in the same RAM, so twice the bytes)."""
    need = n_images * 3 * size * size
    cuda = device is not None and device.type == 'cuda'
    checks = [('host RAM', None, need if cuda else 2 * need)] + ([(f'{device} memory', device, need)] if cuda else [])
    for where, dev, nbytes in checks:
        free = available_memory(dev)
        if nbytes > free:
            raise DataError(f'{root}: {n_images:,} images at {size} px are {nbytes / 2 ** 30:.1f} GiB as uint8'
                            f'{"" if cuda else " (decoded arrays + training tensors)"}, more than the '
                            f'{free / 2 ** 30:.1f} GiB available in {where}; use --img-size 32 or fewer images')


def _decode(path, size):
    """One image -> uint8 CHW RGB at size x size. JPEGs decode at the smallest DCT scale still >= size (PIL draft:
    the resize reads fewer pixels, ~8x faster on photos); any mode (L, RGBA, P, CMYK) becomes RGB."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.draft('RGB', (size, size))
            return _resize(im.convert('RGB'), size)
    except Exception as e:  # noqa: BLE001  PIL: UnidentifiedImageError, 'image file is truncated' (OSError), ...
        why = (str(e).splitlines() or [''])[0][:80]
        raise DataError(f'{path} cannot be decoded ({type(e).__name__}: {why}); replace or delete it') from None


def decode_images(paths, size, workers=None):
    """uint8 [N, 3, size, size], decoded once in threads (PIL releases the GIL while it decodes); the first file
    that fails, in path order, raises DataError."""
    from concurrent.futures import ThreadPoolExecutor
    out = np.empty((len(paths), 3, size, size), np.uint8)
    with ThreadPoolExecutor(workers or min(16, os.cpu_count() or 1)) as pool:
        for i, x in enumerate(pool.map(lambda p: _decode(p, size), paths)):
            out[i] = x
    return out


def image_stats(x, chunk=4096):
    """Per-channel mean and std (population) of uint8 NCHW images in [0, 1], summed in chunks (no float copy)."""
    s, s2 = np.zeros(3), np.zeros(3)
    for i in range(0, len(x), chunk):
        c = x[i:i + chunk].astype(np.float64) / 255
        s, s2 = s + c.sum((0, 2, 3)), s2 + (c * c).sum((0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    return tuple(mean.round(6).tolist()), tuple(np.sqrt(np.maximum(s2 / n - mean ** 2, 0)).round(6).tolist())


def load_folder(root, size, with_unlabeled=True, counts='as-given', labeled_share=0.1, device=None):
    """An image folder as a Dataset: classes head to tail (folder_layout), every image decoded once at size px,
    mean/std from the training images. counts 'as-given' keeps the folder's class counts (lt_train_set and
    ltssl_indices then subsample nothing); 'exp' lets them draw the exponential profile as on CIFAR. Without
    unlabeled/, labeled_share of each class is labeled and the rest of train/ is the unlabeled set."""
    lay = folder_layout(root)
    unlabeled = lay.unlabeled if with_unlabeled else None
    files = [f for fs in lay.train for f in fs] + [f for fs in lay.test for f in fs]
    check_fits(root, len(files) + len(unlabeled or []), size, device)
    per_class = lambda split: np.repeat(np.arange(len(lay.classes)), [len(f) for f in split])  # noqa: E731
    train_x = decode_images([f for fs in lay.train for f in fs], size)
    test_x = decode_images([f for fs in lay.test for f in fs], size)
    extra = decode_images(unlabeled, size) if unlabeled else None
    mean, std = image_stats(train_x)
    return Dataset('folder', train_x, per_class(lay.train), test_x, per_class(lay.test), len(lay.classes), mean, std,
                   extra_x=extra, notes=lay.notes, class_names=lay.classes, as_given=counts == 'as-given',
                   labeled_share=None if lay.unlabeled is not None else labeled_share)


def share_counts(labels, share, num_classes):
    """Per class round(share * n_c) labeled, at least one (a class without labeled images would have prior 0,
    log 0 in LA/ACR), the rest unlabeled: ACR's ImageNet-127 rule (imagenet127_split) for any share."""
    have = np.bincount(np.asarray(labels), minlength=num_classes)
    n = np.clip(np.around(have * share).astype(int), 1, have)
    return n.tolist(), (have - n).tolist()


# ------------------------------------------------------------------------------------------------
# ImageNet-LT (Liu et al. 2019, OLTR lists; jitter.md §4.1, §4.5): too large for the device, so its
# images stay JPEG files decoded by PIL in DataLoader workers -- the one dataset off the device path.
# ------------------------------------------------------------------------------------------------

IMAGENET_LT_DIR = 'imagenet_lt'
IMAGENET_LT_LISTS = {'train': 'ImageNet_LT_train.txt', 'test': 'ImageNet_LT_test.txt'}
IMAGENET_LT_SIZES = {'train': 115846, 'test': 50000}  # published: 1000 classes, 1280 -> 5 train images
_IMAGENET_LT_HOWTO = ('put ImageNet_LT_train.txt / ImageNet_LT_test.txt (OLTR) in {d} and link ImageNet-2012 '
                      'train/ and val/ (val sorted into class folders) beside them')


def read_lt_list(path):
    """OLTR list lines 'train/n01440764/n01440764_10026.JPEG 0' -> (relative paths, int64 labels)."""
    files, labels = [], []
    with open(path) as f:
        for k, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].isdigit():
                raise DataError(f'{path}:{k}: expected "<relative image path> <class id>", got {line.strip()[:60]!r}')
            files.append(parts[0])
            labels.append(int(parts[1]))
    if not files:
        raise DataError(f'{path} lists no images; ' + _IMAGENET_LT_HOWTO.format(d=os.path.dirname(path)))
    return files, np.asarray(labels, np.int64)


def _imagenet_lt_lists(root):
    d = os.path.join(root, IMAGENET_LT_DIR)
    out = {}
    for split, name in IMAGENET_LT_LISTS.items():
        p = os.path.join(d, name)
        if not os.path.exists(p):
            raise DataError(f'ImageNet-LT list {p} not found: ' + _IMAGENET_LT_HOWTO.format(d=d))
        out[split] = read_lt_list(p)
    return d, out


_JPEG_FIX = 'copy the original JPEG from ImageNet-2012 (ILSVRC2012 train/ or val/) in its place'


def _file_size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def load_imagenet_lt(root):
    """ImageNet-LT as file lists + labels. Every listed image must exist (checked now, not 3 hours in)."""
    d, lists = _imagenet_lt_lists(root)
    for split, (files, _) in lists.items():
        sizes = [_file_size(os.path.join(d, f)) for f in files]
        missing = [f for f, n in zip(files, sizes) if n is None]
        if missing:
            raise DataError(f'{len(missing)} of {len(files)} ImageNet-LT {split} images missing under {d} '
                            f'(first: {missing[0]}); ' + _IMAGENET_LT_HOWTO.format(d=d))
        empty = [f for f, n in zip(files, sizes) if n == 0]
        if empty:
            raise DataError(f'{os.path.join(d, empty[0])} is corrupt (an empty file; {len(empty)} listed {split} '
                            f'images are empty); {_JPEG_FIX}')
    (tr_f, tr_y), (te_f, te_y) = lists['train'], lists['test']
    C = int(max(tr_y.max(), te_y.max())) + 1
    notes = [f'{s} list has {len(lists[s][0])} images, not the published {n}: not the ImageNet-LT split'
             for s, n in IMAGENET_LT_SIZES.items() if len(lists[s][0]) != n]
    mean, std = STATS['imagenet_lt']
    return Dataset('imagenet_lt', None, tr_y, None, te_y, C, mean, std, notes=notes, root=d,
                   train_files=tr_f, test_files=te_f)


class JpegImages(torch.utils.data.Dataset):
    """uint8 CHW crops of listed JPEGs (normalised later, on the device).

    Train: RandomResizedCrop(size), HorizontalFlip, ColorJitter(0.4, 0.4, 0.4, 0) -- RIDE's ImageNet-LT
    transforms (jitter.md §4.5). Keys are (index, seed): each sample's randomness comes from its own seed,
    so a batch is the same whichever worker decodes it, and a resumed run sees the same crops.
    Test: Resize(size * 256/224) + CenterCrop(size).
    """

    def __init__(self, root, files, labels, size=224, train=True):
        from torchvision import transforms as T
        self.root, self.files, self.labels = root, files, labels
        self.tf = (T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ColorJitter(0.4, 0.4, 0.4, 0),
                              T.PILToTensor()]) if train else
                   T.Compose([T.Resize(size * 256 // 224), T.CenterCrop(size), T.PILToTensor()]))
        self.train = train

    def __len__(self):
        return len(self.files)

    def __getitem__(self, key):
        from PIL import Image
        i, seed = key if self.train else (key, None)
        path = os.path.join(self.root, self.files[i])
        try:
            with Image.open(path) as im:
                img = im.convert('RGB')
        except (OSError, SyntaxError, ValueError) as e:   # PIL: UnidentifiedImageError / truncated file are OSErrors
            raise DataError(f'{path} is corrupt (PIL cannot decode it: {type(e).__name__}); {_JPEG_FIX}') from None
        if seed is None:
            return self.tf(img), self.labels[i]
        with torch.random.fork_rng(devices=[]):    # torchvision draws from the global RNG
            torch.manual_seed(seed)
            return self.tf(img), self.labels[i]


def _worker_init(_):
    # Ctrl-C reaches the whole process group: workers ignore it, so the main process can finish its step,
    # checkpoint and exit cleanly (a worker killed mid-fetch would turn that into a crash)
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def jpeg_loader(images, batches, workers, pin=False):
    """A DataLoader over fixed index batches (lists of keys); workers decode ahead of the step."""
    return torch.utils.data.DataLoader(images, batch_sampler=batches, num_workers=workers, pin_memory=pin,
                                       prefetch_factor=4 if workers else None,
                                       worker_init_fn=_worker_init if workers else None)


def sample_seeds(seed, step, n):
    """Per-sample augmentation seeds of one training step (a pure function of run seed and step)."""
    base = (int(seed) * 1_000_003 + int(step)) * 65_537
    return [(base + k) % (2 ** 63) for k in range(n)]


def decode_workers(given=None):
    """JPEG-decoding workers: decoding is the bottleneck (~5.5 ms per ImageNet JPEG per core, measured), so every
    core but the main one, shared among the processes of this node under torchrun; at most 16."""
    per_node = int(os.environ.get('LOCAL_WORLD_SIZE', '1'))
    return given if given is not None else max(1, min(16, (os.cpu_count() or 2) // per_node - 1))


class JpegEpochs:
    """ImageNet-LT's passes over full-size JPEGs, decoded (and augmented) by PIL in DataLoader workers.

    rows(keys) -> this process's rows of a global batch (torchrun: each rank decodes only its share).
    Augmentation seeds are per sample and per global step (sample_seeds), so a resumed epoch decodes the
    same views as an uninterrupted one."""

    def __init__(self, ds, img_size, seed, workers, device, rows=lambda keys: keys):
        self.ds, self.img_size, self.seed, self.rows = ds, img_size, seed, rows
        self.workers, self.device = decode_workers(workers), device

    def _loader(self, files, labels, keys, train):
        images = JpegImages(self.ds.root, files, labels, self.img_size, train=train)
        return jpeg_loader(images, keys, self.workers, self.device.type == 'cuda')

    def train(self, batches, first_step, skip=0):
        """Decoded views of an epoch's index batches (the epoch's first global step: first_step), from batch
        `skip` on -> an iterator of device tensors."""
        keys = [list(zip(b, sample_seeds(self.seed, first_step + k, len(b))))
                for k, b in enumerate(b.cpu().tolist() for b in batches)]
        loader = self._loader(self.ds.train_files, self.ds.train_y, [self.rows(k) for k in keys[skip:]], True)
        return (x.to(self.device, non_blocking=True) for x, _ in loader)

    def test(self, batch=256):
        """(images, labels) device batches of this process's rows of the test set."""
        n = len(self.ds.test_y)
        keys = [self.rows(list(range(i, min(i + batch, n)))) for i in range(0, n, batch)]
        dev = self.device
        return ((x.to(dev, non_blocking=True), y.to(dev, non_blocking=True))
                for x, y in self._loader(self.ds.test_files, self.ds.test_y, keys, False))


# ------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------

DATASETS = ('cifar10', 'cifar100', 'stl10', 'svhn', 'fmnist', 'imagenet127', 'synthetic', 'imagenet_lt', 'folder')


def load_dataset(name, data_dir='./datasets', img_size=32, with_unlabeled=True, *, counts='as-given',
                 labeled_share=0.1, device=None):
    """Load a dataset as uint8 NCHW numpy arrays. Raises DataError with a one-line fix.
    counts, labeled_share, device: --dataset folder only (load_folder)."""
    if name == 'synthetic':
        return make_synthetic()
    if name == 'imagenet_lt':
        return load_imagenet_lt(data_dir)
    if name == 'folder':
        return load_folder(data_dir, img_size, with_unlabeled, counts, labeled_share, device)
    extra = None
    if name in ('cifar10', 'cifar100'):
        arrays = load_cifar(name, data_dir)
    elif name == 'stl10':
        *arrays, extra = load_stl10(data_dir, with_unlabeled)
    elif name == 'svhn':
        arrays = load_svhn(data_dir)
    elif name == 'fmnist':
        arrays = load_fmnist(data_dir)
    elif name == 'imagenet127':
        arrays = load_imagenet127(data_dir, img_size)
    else:
        raise DataError(f'unknown dataset {name!r}; choose one of {", ".join(DATASETS)}')
    mean, std = STATS[name]
    num_classes = int(arrays[1].max()) + 1 if name == 'imagenet127' else NUM_CLASSES[name]
    return Dataset(name, *arrays, num_classes, mean, std, extra_x=extra)


def dataset_present(name, data_dir, img_size=32):
    """Cheap presence check (no download) for scripts' pre-flight. Returns (ok, message)."""
    where = {'cifar10': 'cifar-10-batches-py', 'cifar100': 'cifar-100-python', 'stl10': 'stl10_binary',
             'svhn': 'train_32x32.mat', 'imagenet127': f'small_imagenet_127_{img_size}'}
    if name == 'synthetic' or (name == 'fmnist' and _find_fmnist(data_dir)):
        return True, ''
    if name in ('imagenet_lt', 'folder'):
        try:
            _imagenet_lt_lists(data_dir) if name == 'imagenet_lt' else folder_layout(data_dir)
        except DataError as e:
            return False, str(e)
        return True, ''
    if name == 'imagenet127':
        d = os.path.join(data_dir, where[name])
        missing = [f for f in IMAGENET127_FILES if not os.path.exists(os.path.join(d, f))]
        return not missing, f'ImageNet-127 files missing under {d} (e.g. {missing[0]})' if missing else ''
    if name in where and os.path.exists(os.path.join(data_dir, where[name])):
        return True, ''
    if name == 'fmnist':
        return False, (f'Fashion-MNIST not found under {data_dir} (itself, FashionMNIST/raw, fashion-mnist) nor in '
                       f'{FMNIST_SYSTEM_DIR} (apt-get install dataset-fashion-mnist)')
    return False, f'{name} not found under {data_dir} ({where.get(name, "?")})'


# ------------------------------------------------------------------------------------------------
# Device-side batches
# ------------------------------------------------------------------------------------------------

class EpochSampler:
    """Index batches of a shuffled dataset, drop_last, reshuffled each pass: a DataLoader with
    shuffle=True, drop_last=True (ACR's labeled and unlabeled loaders), drawn on the device.

    State is (perm, pos); the permutation comes from `gen`, so checkpointing gen + state resumes exactly.
    """

    def __init__(self, n, batch_size, device, gen):
        if batch_size > n:
            raise ValueError(f'batch {batch_size} is larger than the set ({n})')
        self.n, self.b, self.gen, self.device = n, batch_size, gen, device
        self.perm, self.pos = torch.randperm(n, generator=gen, device=device), 0

    def next(self):
        if self.pos + self.b > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen, device=self.device), 0
        out = self.perm[self.pos:self.pos + self.b]
        self.pos += self.b
        return out

    def state_dict(self):
        return {'perm': self.perm, 'pos': self.pos}

    def load_state_dict(self, d):
        self.perm, self.pos = d['perm'].to(self.device), d['pos']


def draw_lt_view(B, gen, device, pad=4):
    """The random numbers of B RIDE/LDAM-DRW training views: crop shift, flip, rotation angle in [-1, 1)."""
    shift = torch.randint(0, 2 * pad + 1, (B, 2), generator=gen, device=device)
    flip = torch.rand(B, generator=gen, device=device) < 0.5
    return dict(shift=shift, flip=flip, angle=torch.rand(B, generator=gen, device=device) * 2 - 1)


def lt_view(x, gen, pad=4, degrees=15.0):
    """RIDE CIFAR-LT training view: RandomCrop(32, padding=4) (zero fill), HorizontalFlip, then
    RandomRotation(15) (NEAREST, zero fill), as ONE batched affine resample on the device.

    Composition (output pixel -> source pixel): rotate, then flip, then the crop's integer shift.
    degrees=0 gives the LDAM-DRW pipeline (crop + flip only); pure integer shifts and flips land on
    pixel centres, so that part is exact. gen: a torch.Generator, or draw_lt_view(...) drawn beforehand.
    """
    B, _, H, W = x.shape
    dev = x.device
    r = gen if isinstance(gen, dict) else draw_lt_view(B, gen, dev, pad)
    shift, flip = r['shift'].float() - pad, r['flip']
    ang = r['angle'] * math.radians(degrees)
    cos, sin = torch.cos(ang), torch.sin(ang)
    sx = torch.where(flip, -1.0, 1.0)
    theta = torch.stack([torch.stack([sx * cos, -sx * sin, -2 * shift[:, 0] / W], 1),   # flip applied after rotation
                         torch.stack([sin, cos, -2 * shift[:, 1] / H], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, (B, 3, H, W), align_corners=False)
    out = torch.nn.functional.grid_sample(x.float(), grid, mode='nearest', padding_mode='zeros', align_corners=False)
    return out.round().to(torch.uint8)
