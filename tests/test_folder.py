"""--dataset folder: a user's image folder (torchvision ImageFolder layout) on both tasks.

The folders are generated (tests/folders.py): every image is one solid colour in a mixed format, size and mode, so
the colours written are the oracle for the decoded pixels and for the mean/std; the class counts written are the
oracle for the head-to-tail order and for what every report shows. Split counts are worked by hand below.
"""
import csv
import os
import shutil

import numpy as np
import pytest

import folders
from conftest import COMMON, run_train

import data
import report
from test_bad_input import assert_rejected, run_inproc

COUNTS = [folders.COUNTS[c] for c in folders.HEAD_TO_TAIL]     # [24, 12, 8, 5, 3]
LTSSL = COMMON + ['--task', 'ltssl', '--dataset', 'folder', '--width', '1', '--batch-size', '8', '--iters', '2',
                  '--eval-every', '1', '--log-every', '1']
LT = COMMON + ['--task', 'lt', '--dataset', 'folder', '--batch-size', '8', '--epochs', '1', '--log-every', '1']


@pytest.fixture(scope='module')
def made(tmp_path_factory):
    """(root, truth) of the default generated folder: 5 classes [24, 12, 8, 5, 3] head to tail, 2 test images
    each, 20 unlabeled images (half flat, half in a sub-folder)."""
    root = tmp_path_factory.mktemp('folder') / 'pets'
    return str(root), folders.make_folder(str(root))


@pytest.fixture(scope='module')
def made_no_unlabeled(made, tmp_path_factory):
    root = str(tmp_path_factory.mktemp('folder') / 'pets-nou')
    shutil.copytree(made[0], root, ignore=shutil.ignore_patterns('unlabeled'))
    return root


def solid(truth_split):
    """Decoded images as the oracle sees them: per image its colour, head-to-tail class order."""
    return np.array([rgb for c in folders.HEAD_TO_TAIL for rgb in truth_split[c]], float)


# ------------------------------------------------------------------------------------------------
# decoding, order, statistics
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('size', [32, 64])
def test_load_folder_decodes_every_image_to_its_colour(made, size):
    root, truth = made
    ds = data.load_folder(root, size)
    assert ds.class_names == folders.HEAD_TO_TAIL
    assert np.bincount(ds.train_y).tolist() == COUNTS and np.bincount(ds.test_y).tolist() == [2] * 5
    assert ds.train_x.shape == (52, 3, size, size) and ds.train_x.dtype == np.uint8
    for x, want in ((ds.train_x, solid(truth['train'])), (ds.test_x, solid(truth['test'])),
                    (ds.extra_x, np.array(truth['unlabeled'], float))):
        # a solid image stays solid under any resize; JPEG (quality 95, chroma subsampled) moves it a few levels
        assert np.abs(x.astype(float) - want[:, :, None, None]).max() <= 6
    # mean/std over all training pixels: each image has size^2 pixels of one colour (population std over images)
    got = np.concatenate([ds.mean, ds.std])
    want = solid(truth['train']) / 255
    np.testing.assert_allclose(got, np.concatenate([want.mean(0), want.std(0)]), atol=0.01)


def test_classes_ordered_head_to_tail_ties_by_name(tmp_path):
    folders.make_folder(str(tmp_path), counts={'yak': 3, 'cat': 3, 'emu': 5}, n_test=1, n_unlabeled=0)
    lay = data.folder_layout(str(tmp_path))
    assert lay.classes == ['emu', 'cat', 'yak'] and lay.unlabeled is None
    assert [len(f) for f in lay.train] == [5, 3, 3]


def test_labeled_share_without_unlabeled_folder_hand_worked(made_no_unlabeled):
    """Without unlabeled/: round(share * n_c), at least 1, labeled; the rest of train/ unlabeled (labels hidden).
    share 0.5 of [24, 12, 8, 5, 3]: 12, 6, 4, round(2.5) = 2 (half to even), round(1.5) = 2; share 0.1: 2.4 -> 2,
    1.2 -> 1, 0.8 -> 1, 0.5 -> 0 -> 1, 0.3 -> 0 -> 1. ACR's split: the unlabeled set is all of train/, the labeled
    images in it marked not real; --split random: the two disjoint."""
    for share, lab_want in ((0.5, [12, 6, 4, 2, 2]), (0.1, [2, 1, 1, 1, 1])):
        ds = data.load_folder(made_no_unlabeled, 32, labeled_share=share)
        rest = [h - n for h, n in zip(COUNTS, lab_want)]
        lab, unl, real, y, pool = data.ltssl_indices(ds, 1500, 3000, 100, None, 'consistent')
        assert np.bincount(y[lab], minlength=5).tolist() == lab_want and pool is ds.train_x
        assert sorted(unl) == list(range(52)) and np.bincount(y[unl[real]], minlength=5).tolist() == rest
        assert not set(lab) & set(unl[real])
        lab, unl, real, y, _ = data.ltssl_indices(ds, 1500, 3000, 100, None, 'consistent', split='random')
        assert np.bincount(y[lab], minlength=5).tolist() == lab_want and real.all()
        assert np.bincount(y[unl], minlength=5).tolist() == rest and not set(lab) & set(unl)


def test_exp_counts_draw_the_cifar_profile(tmp_path):
    """--folder-counts exp on a balanced folder of 10 per class, 3 classes: lt: lt_counts(10, 3, 4) = 10,
    int(10 * 4^-1/2) = 5, int(10 / 4) = 2; ltssl n1 6 m1 4 at 4: labeled [6, 3, 1], unlabeled [4, 2, 1]."""
    folders.make_folder(str(tmp_path), counts={'cat': 10, 'dog': 10, 'emu': 10}, n_test=1, n_unlabeled=0)
    ds = data.load_folder(str(tmp_path), 32, counts='exp')
    counts, *_ = data.lt_train_set(ds, 4, 'cpu')
    assert counts.tolist() == [10, 5, 2]
    lab, unl, real, y, _ = data.ltssl_indices(ds, 6, 4, 4, None, 'consistent')   # ACR: unl holds lab, real not
    assert np.bincount(y[lab]).tolist() == [6, 3, 1] and np.bincount(y[unl[real]]).tolist() == [4, 2, 1]


# ------------------------------------------------------------------------------------------------
# end to end: both tasks train; the class names reach report.py eval
# ------------------------------------------------------------------------------------------------

def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize('task,unlabeled', [('ltssl', True), ('ltssl', False), ('lt', True)])
def test_folder_trains_and_eval_names_the_classes(made, made_no_unlabeled, task, unlabeled, tmp_path, capsys):
    root = made[0] if unlabeled else made_no_unlabeled
    extra = [] if unlabeled or task == 'lt' else ['--labeled-share', '0.5']
    run = run_train((LTSSL if task == 'ltssl' else LT) + ['--data-dir', root] + extra, tmp_path / 'run')
    capsys.readouterr()
    assert report.main(['eval', str(run)]) == 0
    rows = read_csv(run / 'eval' / 'per_class.csv')
    assert [r['name'] for r in rows] == folders.HEAD_TO_TAIL
    # the labeled counts: all of train/ beside unlabeled/ (and for lt); share 0.5 worked by hand above
    want = COUNTS if unlabeled or task == 'lt' else [12, 6, 4, 2, 2]
    assert [int(r['train_count']) for r in rows] == want
    # RIDE's groups by name on the screen: owl at 24 is medium (20-100), the rest few (< 20); at share 0.5 all few
    lines = capsys.readouterr().out.splitlines()
    medium = ['owl'] if want[0] >= 20 else []
    assert f'  medium: {", ".join(medium) or "(none)"}' in lines
    assert f'  few: {", ".join(c for c in folders.HEAD_TO_TAIL if c not in medium)}' in lines


# ------------------------------------------------------------------------------------------------
# bad folders: exit 2, one line naming the file or class, no run directory
# ------------------------------------------------------------------------------------------------

def _truncate(path):
    with open(path, 'rb') as f:
        b = f.read()
    with open(path, 'wb') as f:
        f.write(b[:len(b) - 20])


BAD = {   # case -> (edit of a copied good folder, what the one line must name)
    'empty class': (lambda r: os.makedirs(os.path.join(r, 'train', 'zebra')), "'zebra'"),
    'test class not in train': (lambda r: shutil.copytree(os.path.join(r, 'test', 'cat'), os.path.join(r, 'test', 'gnu')),
                                "class 'gnu'"),
    'train class not in test': (lambda r: shutil.rmtree(os.path.join(r, 'test', 'dog')), "class 'dog'"),
    'truncated png': (lambda r: _truncate(os.path.join(r, 'train', 'cat', '000.png')), 'train/cat/000.png'),
    'truncated jpeg': (lambda r: _truncate(os.path.join(r, 'train', 'owl', '003.jpg')), 'train/owl/003.jpg'),
    'not an image': (lambda r: open(os.path.join(r, 'test', 'yak', '001.jpg'), 'w').write('hello'), 'test/yak/001.jpg'),
    'no test folder': (lambda r: shutil.rmtree(os.path.join(r, 'test')), '/test not found'),
    'stray file': (lambda r: open(os.path.join(r, 'train', 'notes.txt'), 'w').close(), 'train/notes.txt'),
    'class of non-image files': (lambda r: [os.makedirs(os.path.join(r, 'train', 'gnu')),
                                            open(os.path.join(r, 'train', 'gnu', 'notes.txt'), 'w').close()], "'gnu'"),
    'class names clash': (lambda r: shutil.copytree(os.path.join(r, 'train', 'cat'), os.path.join(r, 'train', 'Cat')),
                          "'Cat' and 'cat'"),
    'test class differs in case': (lambda r: os.rename(os.path.join(r, 'test', 'owl'), os.path.join(r, 'test', 'Owl')),
                                   "only in case"),
    'unicode form clash': (lambda r: [os.rename(os.path.join(r, s, 'owl'), os.path.join(r, s, n)) for s, n in
                                      (('train', 'caf\u00e9'), ('test', 'cafe\u0301'))], "only in case or Unicode"),
    'empty unlabeled': (lambda r: [os.remove(os.path.join(t, f)) for t, _, fs in os.walk(os.path.join(r, 'unlabeled'))
                                   for f in fs], '/unlabeled holds no images'),
}


@pytest.mark.parametrize('case', list(BAD))
def test_bad_folder_exits_2_naming_it(made, case, tmp_path, capsys):
    root = str(tmp_path / 'bad')
    shutil.copytree(made[0], root)
    edit, key = BAD[case]
    edit(root)
    out = tmp_path / 'run'
    rc, err = run_inproc(LTSSL + ['--data-dir', root, '--out', out], capsys)
    assert_rejected(rc, err, key)
    assert not out.exists()


def test_folder_larger_than_memory_says_so_before_decoding(made, tmp_path, capsys, monkeypatch):
    """52 + 10 + 20 = 82 images of 3 x 64 x 64 bytes = 1,007,616 bytes, twice on the CPU (decoded arrays +
    training tensors): refused when 1 MB is free, before one image is decoded."""
    monkeypatch.setattr(data, 'available_memory', lambda device=None: 2 * 1_007_616 - 1)
    monkeypatch.setattr(data, '_decode', lambda *a: pytest.fail('decoded an image before the memory check'))
    rc, err = run_inproc(LTSSL + ['--data-dir', made[0], '--img-size', '64', '--out', tmp_path / 'run'], capsys)
    assert_rejected(rc, err, '82 images at 64 px')
    assert 'host RAM' in err and not (tmp_path / 'run').exists()
    monkeypatch.setattr(data, 'available_memory', lambda device=None: 2 * 1_007_616)
    data.check_fits(made[0], 82, 64)          # exactly enough: accepted


@pytest.mark.parametrize('flag,key', [(['--n1', '40'], '--n1'), (['--imb-l', '10'], '--imb-l'),
                                      (['--labeled-share', '0.5'], '--labeled-share'), (['--split', 'random'], '--split')])
def test_flags_of_other_layouts_are_refused(made, flag, key, tmp_path, capsys):
    """As given beside unlabeled/: no profile is drawn and nothing is split, so these would change nothing."""
    rc, err = run_inproc(LTSSL + ['--data-dir', made[0], '--out', tmp_path / 'run'] + flag, capsys)
    assert_rejected(rc, err, key)
