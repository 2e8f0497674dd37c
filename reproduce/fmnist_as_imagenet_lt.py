"""Write Fashion-MNIST-LT as an ImageNet-LT tree (OLTR lists + JPEG folders), to run the ImageNet-LT code path
(`train.py --dataset imagenet_lt`: list parsing, JPEG decoding in workers, RIDE ResNeXt-50) on real images
offline. Not a paper table: a check that the path learns.

  python reproduce/fmnist_as_imagenet_lt.py OUT_DIR [--imb 100] [--img-max 600] [--test-per-class 100]
  python train.py --task lt --dataset imagenet_lt --data-dir OUT_DIR --img-size 32 ...

Train: the LDAM-style long-tailed subset (img_max -> img_max/imb) of Fashion-MNIST's train split; test: the
first --test-per-class images of each class of its test split. 28x28 gray, saved as RGB JPEG (quality 95).
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import data  # noqa: E402


def write(out, x, y, idx, folder, name):
    """Save images x[idx] (uint8 [N,3,32,32], zero-padded 28x28) as <folder>/<wnid>/<name>; return list lines."""
    lines = []
    for k, i in enumerate(idx):
        wnid = f'n{int(y[i]):08d}'
        rel = f'{folder}/{wnid}/{name.format(k=k)}'
        os.makedirs(os.path.join(out, folder, wnid), exist_ok=True)
        Image.fromarray(x[i, :, 2:30, 2:30].transpose(1, 2, 0)).save(os.path.join(out, rel), 'JPEG', quality=95)
        lines.append(f'{rel} {int(y[i])}')
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('out')
    p.add_argument('--imb', type=float, default=100)
    p.add_argument('--img-max', type=int, default=600)
    p.add_argument('--test-per-class', type=int, default=100)
    a = p.parse_args(argv)
    ds = data.load_dataset('fmnist')
    counts = data.lt_counts(a.img_max, 10, a.imb)
    tr = data.lt_subset(ds.train_y, counts, seed=0)
    te = np.concatenate([np.where(ds.test_y == c)[0][:a.test_per_class] for c in range(10)])
    d = os.path.join(a.out, data.IMAGENET_LT_DIR)
    lists = {'train': write(d, ds.train_x, ds.train_y, tr, 'train', 'fm_train_{k}.JPEG'),
             'test': write(d, ds.test_x, ds.test_y, te, 'val', 'fm_val_{k}.JPEG')}
    for split, name in data.IMAGENET_LT_LISTS.items():
        with open(os.path.join(d, name), 'w') as f:
            f.write('\n'.join(lists[split]) + '\n')
    print(f'{d}: train {counts} ({len(tr)} images), test {len(te)}')


if __name__ == '__main__':
    main()
