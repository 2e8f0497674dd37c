"""Reference-style PIL pipeline: the independent oracle for augment.py and the speed baseline.

Written from the reference code (Gank0078/ACR dataset/randaugment.py == kekmodel/FixMatch-pytorch,
and ACR dataset/cifar.py TransformFixMatch; spec: /work/shared/spec/anchors.md §1.3), never from
augment.py (it must not be imported here). Three entry points:
  * parametrised ops `OPS[name](img, v, sign)`, `pil_randaugment_mc(img, params)`, `pil_cutout`:
    the same drawn parameters can be fed to both pipelines (parity tests);
  * `TransformFixMatch` / `FixMatchUnlabeled`: ACR's per-image torchvision pipeline with its own
    Python/NumPy randomness, returning (weak, strong, strong1) (speed baseline for bench.py);
  * `RefLTSSL(task)` / `RefLT(task)`: bench.py's pipeline (b), the reference training step (ACR train.py /
    kekmodel FixMatch; LDAM-DRW/RIDE loaders) on a DataLoader over these transforms, started from a fresh
    train.py task's weights, framework loss and BEM flags (tests/test_bench.py checks equal losses).
"""
import copy
import random

import numpy as np
import PIL.ImageDraw
import PIL.ImageEnhance
import PIL.ImageOps
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

import bem
import ltssl
import models
import ride

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


# ----------------------------------------------------------------------------- pipeline (b) for bench.py
# The reference recipe (Gank0078/ACR train.py, kekmodel FixMatch): the PIL TransformFixMatch above in a torch
# DataLoader, fp32 NCHW (cuDNN may use TF32 for convs, torch's default), interleave, one joint forward, the same
# ltssl.py framework loss, SGD + kekmodel's per-tensor ModelEMA, `.item()` of the loss terms every step (ACR's
# AverageMeters), and BEM with host-side CamMix boxes (a .cpu() of the CAM, then cv2 CCL_WU per sample). LT:
# torchvision PIL RandomCrop/Flip/Rotation + WeightedRandomSampler (the jitter sampler's class probabilities).
# BEM's bank draw/mix/statistics are bem.py's device code (only the boxes go through the host), so (b)'s BEM cost
# is a lower bound of a Python reference. Shared with train.py, for a fair comparison: the initial weights, the
# framework, BEM's flags and state, the LR schedules (ltssl.acr_cosine, ride.lr_lambda). It never imports
# train.py or bench.py: a task is read through its attributes.

def interleave(x, size):
    """kekmodel/ACR interleave: a pure permutation of the joint batch (BN statistics unchanged)."""
    s = list(x.shape)
    return x.reshape([-1, size] + s[1:]).transpose(0, 1).reshape([-1] + s[1:])


def de_interleave(x, size):
    s = list(x.shape)
    return x.reshape([size, -1] + s[1:]).transpose(0, 1).reshape([-1] + s[1:])


class RefEMA:
    """kekmodel models/ema.py ModelEMA: a Python loop over the state_dict, one tensor at a time."""

    def __init__(self, model, decay):
        self.ema, self.decay = copy.deepcopy(model).eval(), decay
        self.param_keys = [k for k, _ in self.ema.named_parameters()]
        self.buffer_keys = [k for k, _ in self.ema.named_buffers()]
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        msd, esd = model.state_dict(), self.ema.state_dict()
        for k in self.param_keys:
            esd[k].copy_(esd[k] * self.decay + (1. - self.decay) * msd[k].detach())
        for k in self.buffer_keys:
            esd[k].copy_(msd[k])


class HostBoxBEM(bem.BEM):
    """bem.BEM with the reference's host CamMix: .cpu() of the CAM (a sync), then bem.cam_boxes' own cv2 mode
    (cv2 CCL_WU, one mask at a time in a host loop).
    The bank holds the normalised float views the reference DataLoader yields."""

    def _boxes(self, fmap_l, fmap_w, labels, head_weight, cam_weights):
        cam_map = bem.cam(torch.cat([fmap_l, fmap_w]).detach(), head_weight[labels].detach())
        return bem.cam_boxes(cam_map.cpu(), self.shape[1:], self.tau_c, mode='cv2').to(self.device)


def host_bem(fresh):
    """A HostBoxBEM with the same flags and state as the task's (fresh) bem.BEM."""
    b = copy.deepcopy(fresh, {id(fresh.d_u_fn): fresh.d_u_fn})   # an external d^u (ACR's u_py) stays shared
    b.__class__ = HostBoxBEM
    b.bank_img = torch.zeros(b.bank_img.shape, dtype=torch.float32, device=b.device)
    return b


def _nhwc(x):
    return np.ascontiguousarray(x.cpu().numpy().transpose(0, 2, 3, 1))


class RefLabeled(torch.utils.data.Dataset):
    """ACR transform_labeled: flip + reflect-pad crop (PIL), ToTensor, Normalize."""

    def __init__(self, x, y, mean, std):
        self.x, self.y = _nhwc(x), y.cpu().numpy()
        self.t = TransformFixMatch(mean, std, size=self.x.shape[1])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.t.normalize(self.t.weak(Image.fromarray(self.x[i]))), int(self.y[i])


class RefUnlabeled(FixMatchUnlabeled):
    """FixMatchUnlabeled, target = u_real (ACR's -2 marks labeled images inside U). V = 2 strong
    views is exactly TransformFixMatch(x); V = 1 (FixMatch) computes weak + one strong view only."""

    def __init__(self, x, u_real, mean, std, views):
        super().__init__(_nhwc(x), u_real.cpu().numpy(), mean, std)
        self.views = views

    def __getitem__(self, i):
        img, t = Image.fromarray(self.images[i]), self.transform
        views = t(img) if self.views == 2 else (t.normalize(t.weak(img)), t.normalize(t.strong(img)))
        return views, bool(self.labels[i])


def _forever(loader):
    while True:
        yield from loader


def _loader(ds, batch_size, workers, sampler=None):
    sampler = sampler or torch.utils.data.RandomSampler(ds)
    return _forever(torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                                drop_last=True, persistent_workers=workers > 0))


class RefLTSSL:
    """Pipeline (b) for LTSSL. Build it from a FRESH task (before any step): it copies the initial weights,
    the framework (ltssl.py, the same loss) and BEM's flags; the data path is its own."""

    def __init__(self, task, workers=0):
        a, dev = task.args, task.device
        self.args, self.device, self.V, self.step = a, dev, task.V, task.step
        self.model = copy.deepcopy(task.model).to(memory_format=torch.contiguous_format)   # fp32 NCHW
        self.ema = RefEMA(self.model, a.ema)
        self.opt = torch.optim.SGD(models.no_decay_groups(self.model, a.wd), lr=a.lr, momentum=a.momentum,
                                   nesterov=a.nesterov)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, ltssl.acr_cosine(a.iters))
        self.fw = copy.deepcopy(task.fw)
        if task.bem is not None and not (a.bank and a.mix == 'cammix' and task.model.cam_layer_matches_head):
            raise ValueError('reference pipeline (b) reproduces BEM with the bank and plain-CAM CamMix only (the '
                             'configurations bench.py runs); other mixing setups have no reference-style counterpart')
        self.bem = host_bem(task.bem) if task.bem is not None else None
        self.gen = torch.Generator(dev).manual_seed(a.seed)
        # host copies of the task's split (the reference keeps numpy arrays and a PIL transform per item)
        self.sets = (RefLabeled(task.lab_x, task.lab_y, task.mean, task.std),
                     RefUnlabeled(task.unl_x, task.u_real, task.mean, task.std, self.V))
        self.workers, self._lab, self._unl = workers, None, None

    def next_batch(self):
        """ACR: next(labeled_iter), next(unlabeled_iter), then .to(device)."""
        if self._lab is None:   # workers start on first use (after (a) has finished)
            B = self.args.batch_size
            self._lab = _loader(self.sets[0], B, self.workers)
            self._unl = _loader(self.sets[1], self.args.mu * B, self.workers)
        xl, yl = next(self._lab)
        views, real = next(self._unl)
        to = lambda t: t.to(self.device)  # noqa: E731
        return to(xl), to(yl), to(views[0]), torch.cat([to(v) for v in views[1:]]), to(real)

    def train_step(self):
        return self.step_on(*self.next_batch())

    def step_on(self, xl, yl, uw, us, u_real):
        """One reference step on given normalised views (us = the V strong views, view-major). -> (loss, logs).
        BEM enters with the plug-in's two calls, as in any user's loop (bem.BEM's docstring)."""
        Bl, Bu, V = len(xl), len(uw), self.V
        mixes = None
        if self.bem is not None:
            us, mixes = self.bem.before_forward(us, self.gen)
        x = torch.cat([xl, uw, us])
        size = len(x) // Bl
        logits, fmap = self.model(interleave(x, size))
        logits = de_interleave(logits.transpose(0, 1), size).transpose(0, 1)   # [H,N,C]
        fmap = de_interleave(fmap, size)
        ls = logits[:, Bl + Bu:].reshape(len(logits), V, Bu, -1).transpose(0, 1)
        loss, logs, pl = self.fw.loss(logits[:, :Bl], yl, logits[:, Bl:Bl + Bu], ls, u_real, self.step, self.gen, mixes)
        if self.bem is not None:
            kw = {}
            if 'q_est' in pl:   # ACR: the statistics beside u_py come from its balanced head
                kw = dict(stat_logits_l=logits[1, :Bl].detach(), stat_logits_w=logits[1, Bl:Bl + Bu].detach(),
                          stat_q=pl['q_est'], stat_mask=pl['mask_est'])
            self.bem.after_forward(self.step, x_l=xl, y_l=yl, logits_l=logits[0, :Bl].detach(),
                                   fmap_l=fmap[:Bl].detach(), u_w=uw, logits_w=logits[0, Bl:Bl + Bu].detach(),
                                   q_u=pl['q'], mask_u=pl['mask'], u_real=u_real, fmap_w=fmap[Bl:Bl + Bu].detach(),
                                   head_weight=self.model.heads[0].weight.detach(), **kw)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.ema.update(self.model)
        self.step += 1
        # ACR's AverageMeters: loss.item() and the terms' .item() every step (host syncs)
        return loss.item(), {k: float(v.item()) for k, v in list(logs.items())[:3]}


class RefLTData(torch.utils.data.Dataset):
    def __init__(self, x, y, transform):
        self.x, self.y, self.t = _nhwc(x), y.cpu().numpy(), transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.t(Image.fromarray(self.x[i])), int(self.y[i])


class RefLT:
    """Pipeline (b) for LT: LDAM-DRW/RIDE PIL transforms + WeightedRandomSampler, fp32, .item() per step."""

    def __init__(self, task, workers=0):
        T, a = transforms, task.args
        self.device, self.B = task.device, a.batch_size
        self.model = copy.deepcopy(task.model).to(memory_format=torch.contiguous_format)
        self.criterion = copy.deepcopy(task.criterion)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=a.lr, momentum=a.momentum, weight_decay=a.wd,
                                   nesterov=a.nesterov)
        steps = task.lr_steps   # RIDE CustomLR: warm-up + step decays, stepped once per epoch
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda e: ride.lr_lambda(e, warmup=5, steps=steps))
        self.step = task.step
        size = task.train_x.shape[-1]
        ops = [T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()]
        ops += [T.RandomRotation(task.degrees)] if task.degrees else []
        self.transform = T.Compose(ops + [T.ToTensor(), T.Normalize(task.mean, task.std)])
        y = task.train_y.cpu()
        n = torch.bincount(y, minlength=task.C).double()
        self.weights = (task.sampler.class_probs().double() / n.clamp(min=1))[y]   # per-sample u_y / n_y
        self.set = RefLTData(task.train_x, task.train_y, self.transform)
        self.workers, self.ipe, self._it = workers, task.ipe, None

    def next_batch(self):
        if self._it is None:
            s = torch.utils.data.WeightedRandomSampler(self.weights, self.ipe * self.B, replacement=True)
            self._it = _loader(self.set, self.B, self.workers, s)
        x, y = next(self._it)
        return x.to(self.device), y.to(self.device)

    def train_step(self):
        return self.step_on(*self.next_batch())

    def step_on(self, x, y):
        out = self.model(x)
        if self.criterion is None:
            loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
        else:
            loss = self.criterion(out, y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.step += 1
        if self.step % self.ipe == 0:
            self.sched.step()
        return loss.item(), {}
