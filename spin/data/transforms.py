"""Train and eval transforms (SPIN §5). Train with AUG.ENABLE: timm's RandomResizedCrop, flip,
RandAugment, normalize, RandomErasing; without it: RandomResizedCrop, flip, normalize. Eval:
resize to int(crop / DATA.VAL_CROP_RATIO) (224 -> 256) and center crop."""
from __future__ import annotations

from timm.data import create_transform
from torchvision import transforms as T

from .folder import DataError

_INTERP = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
           "nearest": T.InterpolationMode.NEAREST}


def _interp(name: str):
    try:
        return _INTERP[name.lower()]
    except KeyError:
        raise DataError(f"unknown AUG.INTERPOLATION {name!r}; allowed: {', '.join(_INTERP)}") from None


def build_train_transform(cfg):
    d, a = cfg.DATA, cfg.AUG
    scale, ratio = tuple(d.TRAIN_JITTER_SCALES_RELATIVE), tuple(d.TRAIN_JITTER_ASPECT_RELATIVE)
    hflip = 0.5 if d.RANDOM_FLIP else 0.0
    if a.ENABLE:
        _interp(a.INTERPOLATION)
        try:  # timm asserts on strings it cannot parse; say which key and what it accepts
            return create_transform(
                input_size=d.TRAIN_CROP_SIZE, is_training=True, scale=scale, ratio=ratio, hflip=hflip,
                color_jitter=a.COLOR_JITTER, auto_augment=a.AA_TYPE or None,
                interpolation=a.INTERPOLATION.lower(), mean=tuple(d.MEAN), std=tuple(d.STD),
                re_prob=a.RE_PROB, re_mode=a.RE_MODE.lower(), re_count=a.RE_COUNT,
                re_num_splits=2 if a.RE_SPLIT else 0)
        except (AssertionError, ValueError, KeyError, IndexError) as e:
            raise DataError(
                f"timm cannot build the augmentation AUG.AA_TYPE {a.AA_TYPE!r} ({e or type(e).__name__}); "
                f"give a timm string such as rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, v0 or original, "
                f"or '' for none") from None
    return T.Compose([
        T.RandomResizedCrop(d.TRAIN_CROP_SIZE, scale=scale, ratio=ratio,
                            interpolation=_interp(a.INTERPOLATION)),
        T.RandomHorizontalFlip(hflip),
        T.ToTensor(),
        T.Normalize(d.MEAN, d.STD),
    ])


def build_eval_transform(cfg):
    d = cfg.DATA
    size = int(d.TEST_CROP_SIZE / d.VAL_CROP_RATIO)
    return T.Compose([
        T.Resize(size, interpolation=_interp(cfg.AUG.INTERPOLATION)),
        T.CenterCrop(d.TEST_CROP_SIZE),
        T.ToTensor(),
        T.Normalize(d.MEAN, d.STD),
    ])
