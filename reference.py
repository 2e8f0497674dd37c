"""Reference-style PIL pipeline: the independent oracle for augment.py and the speed baseline.

Written from the reference code (Gank0078/ACR dataset/randaugment.py == kekmodel/FixMatch-pytorch,
and ACR dataset/cifar.py TransformFixMatch; spec: /work/shared/spec/anchors.md §1.3), never from
augment.py (it must not be imported here). Two entry points:
  * parametrised ops `OPS[name](img, v, sign)`, `pil_randaugment_mc(img, params)`, `pil_cutout`:
    the same drawn parameters can be fed to both pipelines (parity tests);
  * `TransformFixMatch` / `FixMatchUnlabeled`: ACR's per-image torchvision pipeline with its own
    Python/NumPy randomness, returning (weak, strong, strong1) (speed baseline for bench.py).
"""
import random

import numpy as np
import PIL.ImageDraw
import PIL.ImageEnhance
import PIL.ImageOps
import torch
from PIL import Image
from torchvision import transforms

PARAMETER_MAX = 10


def _float_parameter(v, max_v):
    return float(v) * max_v / PARAMETER_MAX


def _int_parameter(v, max_v):
    return int(v * max_v / PARAMETER_MAX)


# ----------------------------------------------------------------------------- the 14 ops
# Same bodies as fixmatch_augment_pool(), but the random sign (`if random.random() < 0.5: v = -v`)
# is an explicit argument. Magnitude constants (max_v, bias) are inlined from the pool.

def AutoContrast(img, v, sign):
    return PIL.ImageOps.autocontrast(img)


def Brightness(img, v, sign):
    return PIL.ImageEnhance.Brightness(img).enhance(_float_parameter(v, 0.9) + 0.05)


def Color(img, v, sign):
    return PIL.ImageEnhance.Color(img).enhance(_float_parameter(v, 0.9) + 0.05)


def Contrast(img, v, sign):
    return PIL.ImageEnhance.Contrast(img).enhance(_float_parameter(v, 0.9) + 0.05)


def Equalize(img, v, sign):
    return PIL.ImageOps.equalize(img)


def Identity(img, v, sign):
    return img


def Posterize(img, v, sign):
    return PIL.ImageOps.posterize(img, _int_parameter(v, 4) + 4)


def Rotate(img, v, sign):
    v = _int_parameter(v, 30)
    return img.rotate(-v if sign < 0 else v)


def Sharpness(img, v, sign):
    return PIL.ImageEnhance.Sharpness(img).enhance(_float_parameter(v, 0.9) + 0.05)


def ShearX(img, v, sign):
    v = _float_parameter(v, 0.3)
    v = -v if sign < 0 else v
    return img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0))


def ShearY(img, v, sign):
    v = _float_parameter(v, 0.3)
    v = -v if sign < 0 else v
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0))


def Solarize(img, v, sign):
    return PIL.ImageOps.solarize(img, 256 - _int_parameter(v, 256))


def TranslateX(img, v, sign):
    v = _float_parameter(v, 0.3)
    v = int((-v if sign < 0 else v) * img.size[0])
    return img.transform(img.size, Image.AFFINE, (1, 0, v, 0, 1, 0))


def TranslateY(img, v, sign):
    v = _float_parameter(v, 0.3)
    v = int((-v if sign < 0 else v) * img.size[1])
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v))


POOL = [AutoContrast, Brightness, Color, Contrast, Equalize, Identity, Posterize, Rotate,
        Sharpness, ShearX, ShearY, Solarize, TranslateX, TranslateY]   # fixmatch_augment_pool order
OPS = {f.__name__: f for f in POOL}
SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}   # ops that draw a random sign


def pil_cutout(img, centre, v=16):
    """CutoutAbs(img, v) with the two np.random.uniform draws given as centre = (x0, y0)."""
    w, h = img.size
    x0, y0 = centre
    x0 = int(max(0, x0 - v / 2.))
    y0 = int(max(0, y0 - v / 2.))
    x1 = int(min(w, x0 + v))
    y1 = int(min(h, y0 + v))
    img = img.copy()
    PIL.ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), (127, 127, 127))
    return img


def pil_randaugment_mc(img, params, cutout=16):
    """RandAugmentMC body with explicit params: dict of per-op lists op (index into POOL), v, apply,
    sign, plus cutout_centre (x0, y0). See `sample_params` to slice a batched draw."""
    for o, v, a, s in zip(params["op"], params["v"], params["apply"], params["sign"]):
        if a:
            img = POOL[o](img, v, s)
    return pil_cutout(img, params["cutout_centre"], cutout)


def sample_params(params, b):
    """Per-sample Python view of a batched parameter dict (tensors op/v/apply/sign [n, B],
    cutout_centre [B, 2]) as drawn by the fast pipeline."""
    col = lambda t: [int(u) for u in t[:, b].tolist()]  # noqa: E731
    return dict(op=col(params["op"]), v=col(params["v"]), apply=col(params["apply"]),
                sign=col(params["sign"]), cutout_centre=tuple(params["cutout_centre"][b].tolist()))


class RandAugmentMC:
    """ACR/FixMatch RandAugmentMC(n, m) with its own random / np.random draws, in the original order."""

    def __init__(self, n=2, m=10):
        assert n >= 1 and 1 <= m <= 10
        self.n, self.m = n, m

    def __call__(self, img):
        for op in random.choices(POOL, k=self.n):
            v = np.random.randint(1, self.m)
            if random.random() < 0.5:
                # the original draws the sign inside the op, only for the signed ops
                sign = -1 if op.__name__ in SIGNED and random.random() < 0.5 else 1
                img = op(img, v, sign)
        w, h = img.size
        centre = (np.random.uniform(0, w), np.random.uniform(0, h))
        return pil_cutout(img, centre, 16)


# ----------------------------------------------------------------------------- ACR pipeline

class TransformFixMatch:
    """ACR dataset/cifar.py TransformFixMatch: returns normalised (weak, strong, strong1)."""

    def __init__(self, mean, std, size=32):
        flip_crop = [transforms.RandomHorizontalFlip(),
                     transforms.RandomCrop(size=size, padding=int(size * 0.125), padding_mode="reflect")]
        self.weak = transforms.Compose(flip_crop)
        self.strong = transforms.Compose(flip_crop + [RandAugmentMC(n=2, m=10)])
        self.normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=mean, std=std)])

    def __call__(self, x):
        weak, strong, strong1 = self.weak(x), self.strong(x), self.strong(x)
        return self.normalize(weak), self.normalize(strong), self.normalize(strong1)


class FixMatchUnlabeled(torch.utils.data.Dataset):
    """Unlabeled-stream dataset over uint8 images [N, H, W, 3] (CIFAR layout; [N, 3, H, W] is
    transposed). __getitem__ -> ((weak, strong, strong1), label), as ACR's CIFAR10SSL does."""

    def __init__(self, images, labels, mean, std):
        images = np.asarray(images, dtype=np.uint8)
        if images.shape[1] == 3 and images.shape[-1] != 3:
            images = images.transpose(0, 2, 3, 1)
        self.images = np.ascontiguousarray(images)
        self.labels = np.asarray(labels)
        self.transform = TransformFixMatch(mean, std, size=self.images.shape[1])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])
