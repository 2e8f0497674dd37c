"""Generated image folders in torchvision's ImageFolder layout, for tests/test_folder.py (and by hand:
`python tests/folders.py DIR` writes one).

Every image is one solid colour, so any resize leaves it that colour: the colours written here are the oracle
for the decoded pixels and the mean/std that data.load_folder computes. Formats, sizes and modes are mixed (PNG and
JPEG, 12-90 px, RGB, gray, RGBA, palette) as a user's folder would be.
"""
import os
import sys

import numpy as np
from PIL import Image

# class -> training images; the head-to-tail order (owl, cat, yak, dog, emu) differs from the name order
COUNTS = {'cat': 12, 'dog': 5, 'emu': 3, 'owl': 24, 'yak': 8}
HEAD_TO_TAIL = ['owl', 'cat', 'yak', 'dog', 'emu']
BASE = {'cat': (200, 40, 40), 'dog': (40, 200, 40), 'emu': (40, 40, 200), 'owl': (200, 200, 40), 'yak': (40, 200, 200)}


def write_image(path, rgb, rng):
    """A solid image of colour rgb (or its gray level), random size, in the format of the path's extension."""
    w, h = (int(v) for v in rng.randint(12, 90, 2))
    mode = 'RGB' if path.endswith('.jpg') else ['RGB', 'RGBA', 'P', 'L'][rng.randint(4)]
    if rng.rand() < 0.15:
        mode = 'L'
    if mode == 'L':
        rgb = (int(round(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])),) * 3   # PIL's L conversion
        im = Image.new('L', (w, h), rgb[0])
    else:
        im = Image.new('RGB', (w, h), tuple(rgb))
        im = im.convert('RGBA') if mode == 'RGBA' else im.convert('P', palette=Image.Palette.ADAPTIVE) if mode == 'P' else im
    im.save(path, quality=95) if path.endswith('.jpg') else im.save(path)
    if mode == 'P':     # an adaptive palette holds the one colour (the web palette would dither it): read it back
        rgb = tuple(int(v) for v in np.asarray(Image.open(path).convert('RGB'))[0, 0])
    return tuple(int(v) for v in rgb)


def make_folder(root, counts=COUNTS, n_test=2, n_unlabeled=20, seed=0):
    """root/train/<class>/, root/test/<class>/ and (n_unlabeled > 0) root/unlabeled/ (half flat, half in folders
    whose names are ignored). Returns {'train': {class: [colours]}, 'test': ..., 'unlabeled': [colours]} in the
    sorted file order of each class."""
    rng = np.random.RandomState(seed)
    truth = {'train': {}, 'test': {}, 'unlabeled': []}

    def colour(c):
        return tuple(int(v) for v in np.clip(np.array(BASE[c]) + rng.randint(-30, 31, 3), 0, 255))
    for split, n_of in (('train', counts), ('test', {c: n_test for c in counts})):
        for c, n in n_of.items():
            d = os.path.join(root, split, c)
            os.makedirs(d, exist_ok=True)
            truth[split][c] = [write_image(os.path.join(d, f'{k:03d}.{"jpg" if k % 2 else "png"}'), colour(c), rng)
                               for k in range(n)]
    for k in range(n_unlabeled):
        d = os.path.join(root, 'unlabeled', *(['batch1'] if k >= n_unlabeled // 2 else []))
        os.makedirs(d, exist_ok=True)
        truth['unlabeled'].append(write_image(os.path.join(d, f'u{k:03d}.{"jpg" if k % 2 else "png"}'),
                                              colour(list(counts)[k % len(counts)]), rng))
    return truth


def write_synthetic(root, counts, n_test, seed=0):
    """data.make_synthetic's shapes (learnable: the object is the class) as a folder, upscaled to mixed sizes,
    PNG and JPEG; classes named after their shape and colour."""
    import data
    ds = data.make_synthetic(n_per_class=max(counts), n_test=n_test, num_classes=len(counts), seed=seed)
    rng = np.random.RandomState(seed)
    names = [f'{("red", "blue")[c // 5]}-{("square", "disc", "triangle", "plus", "bar")[c % 5]}' for c in range(len(counts))]
    for split, x, y, keep in (('train', ds.train_x, ds.train_y, counts), ('test', ds.test_x, ds.test_y, [n_test] * len(counts))):
        for c, n in enumerate(keep):
            d = os.path.join(root, split, names[c])
            os.makedirs(d, exist_ok=True)
            for k, i in enumerate(np.flatnonzero(y == c)[:n]):
                s = int(rng.choice([32, 48, 64, 96]))
                im = Image.fromarray(x[i].transpose(1, 2, 0)).resize((s, s), Image.BICUBIC)
                im.save(os.path.join(d, f'{k:04d}.{"jpg" if k % 2 else "png"}'))
    return names


if __name__ == '__main__':   # python tests/folders.py DIR [--synthetic]: a folder to try --dataset folder on
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if '--synthetic' in sys.argv:
        lt = [int(500 * 100 ** (-k / 9)) for k in range(10)]     # gamma 100 over 10 classes, 500 -> 5
        print(write_synthetic(sys.argv[1], lt, 50))
    else:
        make_folder(sys.argv[1])
