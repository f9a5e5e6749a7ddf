"""Config defaults in SlowFast's schema (yacs CfgNode: unknown keys and wrong types are errors).

The keys and defaults are the ones SPIN's YAML files and SlowFast users know; every key that
extends the published design space has a default that keeps upstream behaviour. The plan keys of
every family sit in WEIGHT_SHARE; the published YAMLs' CONVMIXER.WEIGHT_SHARE.* is read as
WEIGHT_SHARE.* (spin/config/parser.py).
"""
from yacs.config import CfgNode

_C = CfgNode()

# ------------------------------------------------------------------------------ training
_C.TRAIN = CfgNode()
_C.TRAIN.ENABLE = True
_C.TRAIN.DATASET = "imagenet"
# Per machine (SlowFast meaning): split over NUM_GPUS processes on that machine.
_C.TRAIN.BATCH_SIZE = 64
_C.TRAIN.EVAL_PERIOD = 10
_C.TRAIN.CHECKPOINT_PERIOD = 10
_C.TRAIN.AUTO_RESUME = True
_C.TRAIN.CHECKPOINT_FILE_PATH = ""
_C.TRAIN.CHECKPOINT_EPOCH_RESET = False
# True: fine-tune TRAIN.CHECKPOINT_FILE_PATH onto classes other than the ones it stores (else refused).
_C.TRAIN.CHECKPOINT_NEW_CLASSES = False
_C.TRAIN.MIXED_PRECISION = False
# Autocast dtype when MIXED_PRECISION: float16 (CUDA, with GradScaler) or bfloat16.
_C.TRAIN.AMP_DTYPE = "float16"
_C.TRAIN.CHANNELS_LAST = False
_C.TRAIN.COMPILE = False
# Stop an epoch after this many iterations (0 = the whole epoch); for smoke runs.
_C.TRAIN.MAX_ITERS_PER_EPOCH = 0
# Gradient accumulation (timm's --grad-accum-steps): one optimizer step per this many batches of
# TRAIN.BATCH_SIZE, so the effective batch is BATCH_SIZE x GRAD_ACCUM_STEPS.
_C.TRAIN.GRAD_ACCUM_STEPS = 1

# ------------------------------------------------------------------------------ data
_C.DATA = CfgNode()
_C.DATA.PATH_TO_DATA_DIR = ""
_C.DATA.MEAN = [0.485, 0.456, 0.406]
_C.DATA.STD = [0.229, 0.224, 0.225]
# SlowFast keys the published YAMLs carry; images only: NUM_FRAMES 1, ARCH 2d.
_C.DATA.NUM_FRAMES = 1
_C.DATA.TRAIN_CROP_SIZE = 224
_C.DATA.TEST_CROP_SIZE = 224
_C.DATA.INPUT_CHANNEL_NUM = [3]
_C.DATA.TRAIN_JITTER_SCALES_RELATIVE = [0.08, 1.0]
_C.DATA.TRAIN_JITTER_ASPECT_RELATIVE = [0.75, 1.3333333333333333]
_C.DATA.RANDOM_FLIP = True
# Eval resize: int(crop / VAL_CROP_RATIO) then center crop (224 -> 256 at 0.875).
_C.DATA.VAL_CROP_RATIO = 0.875
# torchvision data sets (cifar10/100) only download when asked.
_C.DATA.DOWNLOAD = False
# Train on the first N images of each class (sorted file order; 0 = all): small-data studies.
_C.DATA.TRAIN_IMAGES_PER_CLASS = 0
# Split names (timm's --train-split / --val-split); where a source lacks one, timm's synonyms stand
# in (validation for val). WebDataset shards without _info.json: a shard pattern, name-{000000..000009}.tar.
_C.DATA.TRAIN_SPLIT = "train"
_C.DATA.VAL_SPLIT = "val"
# Images in a split of an iterable source that does not record it (timm's --train-num-samples /
# --val-num-samples); 0 = the count the source records.
_C.DATA.TRAIN_NUM_SAMPLES = 0
_C.DATA.VAL_NUM_SAMPLES = 0

# ------------------------------------------------------------------------------ model
# Each model family adds its own architecture section (CONVMIXER, VIT, CONVNEXT, MIXER) when it
# registers (spin.models.family): its keys and defaults live beside its model.

# The sharing plan, one section for every family (the published YAMLs' CONVMIXER.WEIGHT_SHARE
# is read as this one).
_C.WEIGHT_SHARE = CfgNode()
_C.WEIGHT_SHARE.ENABLE = False
# uniform | front | back | middle | custom (then GROUP_SIZES)
_C.WEIGHT_SHARE.SHARING_DISTRIBUTION = "uniform"
# sequential | strided | pyramid | random (seeded by SEED) | custom (then LAYER_MAP)
_C.WEIGHT_SHARE.SHARING_MAPPING = "sequential"
_C.WEIGHT_SHARE.SHARE_RATE = 1
# None | mean | choose_first | scalar_weighted_mean | channel_weighted_mean
_C.WEIGHT_SHARE.REDUCTION_FN = None
# number of unique sets N; 0 = DEPTH // SHARE_RATE.
_C.WEIGHT_SHARE.NUM_SETS = 0
# explicit group sizes, used when SHARING_DISTRIBUTION is custom.
_C.WEIGHT_SHARE.GROUP_SIZES = []
# explicit layer -> set map, used when SHARING_MAPPING is custom.
_C.WEIGHT_SHARE.LAYER_MAP = []
# seed of the random mapping (part of the architecture: stored with every checkpoint's cfg).
_C.WEIGHT_SHARE.SEED = 0
# what is shared: the family's named parts joined with '+' or glob patterns on block-relative
# parameter names ('' = the family's default: ConvMixer pointwise, DeiT attn+mlp, ...).
_C.WEIGHT_SHARE.SCOPE = ""
# relaxed sharing: none | lora (per-layer rank-RELAX_RANK deltas) | scale (per-channel scale/shift)
_C.WEIGHT_SHARE.RELAX = "none"
_C.WEIGHT_SHARE.RELAX_RANK = 0

_C.MODEL = CfgNode()
_C.MODEL.NUM_CLASSES = 1000
_C.MODEL.ARCH = "2d"
_C.MODEL.MODEL_NAME = "WSConvMixer"
_C.MODEL.LOSS_FUNC = "cross_entropy"
_C.MODEL.DROPOUT_RATE = 0.5
# Stochastic depth: the drop-path rate of the last block, linear from 0 over the depth.
_C.MODEL.DROP_PATH_RATE = 0.0

# Exponential moving average of the weights (timm's ModelEmaV3), evaluated and checkpointed
# beside the model.
_C.MODEL_EMA = CfgNode()
_C.MODEL_EMA.ENABLE = False
_C.MODEL_EMA.DECAY = 0.99996

# ------------------------------------------------------------------------------ distillation
# Train against a teacher (DeiT's soft / hard-label KD; MiniViT's relation distillation). The
# teacher runs in eval mode without gradients and is never checkpointed; a checkpoint records its
# file's SHA-256, and a resume refuses another teacher.
_C.DISTILL = CfgNode()
_C.DISTILL.ENABLE = False
# A spin .pyth (its stored config builds it), or a timm .pth / .safetensors state dict (built as the
# student's vanilla counterpart: the config with WEIGHT_SHARE off). "": TRAIN.CHECKPOINT_FILE_PATH,
# the vanilla checkpoint a WFWS run starts from.
_C.DISTILL.TEACHER = ""
# soft: tau^2 KL(teacher || student) at temperature TAU; hard: cross-entropy on the teacher's argmax.
_C.DISTILL.TYPE = "soft"
# loss = (1 - ALPHA) * the label loss + ALPHA * the logit KD term (DeiT's distillation_alpha).
_C.DISTILL.ALPHA = 0.5
_C.DISTILL.TAU = 1.0
# Added terms: relation KD of the hidden states (block outputs) and of the attention maps (blocks
# with attn.qkv: ViT, Swin) of the block pairs LAYERS[k] (student) / TEACHER_LAYERS[k] (teacher);
# an int indexes the block stack (negative from its end), a string is a module path.
_C.DISTILL.HIDDEN_WEIGHT = 0.0
_C.DISTILL.ATTN_WEIGHT = 0.0
_C.DISTILL.LAYERS = [-1]
# [] = the same as LAYERS.
_C.DISTILL.TEACHER_LAYERS = []

# ------------------------------------------------------------------------------ augmentation
_C.AUG = CfgNode()
_C.AUG.ENABLE = False
_C.AUG.COLOR_JITTER = 0.4
_C.AUG.AA_TYPE = "rand-m9-mstd0.5-inc1"
_C.AUG.INTERPOLATION = "bicubic"
_C.AUG.RE_PROB = 0.25
_C.AUG.RE_MODE = "pixel"
_C.AUG.RE_COUNT = 1
_C.AUG.RE_SPLIT = False

_C.MIXUP = CfgNode()
_C.MIXUP.ENABLE = False
_C.MIXUP.ALPHA = 0.8
_C.MIXUP.CUTMIX_ALPHA = 1.0
_C.MIXUP.PROB = 1.0
_C.MIXUP.SWITCH_PROB = 0.5
_C.MIXUP.LABEL_SMOOTH_VALUE = 0.1

# ------------------------------------------------------------------------------ solver
_C.SOLVER = CfgNode()
_C.SOLVER.BASE_LR = 0.1
_C.SOLVER.BASE_LR_SCALE_NUM_SHARDS = False
_C.SOLVER.LR_POLICY = "cosine"
_C.SOLVER.COSINE_END_LR = 0.0
_C.SOLVER.MAX_EPOCH = 300
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.DAMPENING = 0.0
_C.SOLVER.NESTEROV = True
_C.SOLVER.WEIGHT_DECAY = 1e-4
_C.SOLVER.WARMUP_EPOCHS = 0.0
_C.SOLVER.WARMUP_START_LR = 0.01
_C.SOLVER.OPTIMIZING_METHOD = "sgd"
_C.SOLVER.CLIP_GRAD_L2NORM = None
# SlowFast's key: no weight decay on 1-D parameters (biases, norms, layer scales) and on the
# model's no_weight_decay() names (ViT: pos_embed, cls_token), as timm and DeiT do.
_C.SOLVER.ZERO_WD_1D_PARAM = False

_C.BN = CfgNode()
_C.BN.WEIGHT_DECAY = 0.0

# ------------------------------------------------------------------------------ test
_C.TEST = CfgNode()
_C.TEST.ENABLE = True
_C.TEST.DATASET = "imagenet"
_C.TEST.BATCH_SIZE = 8
_C.TEST.CHECKPOINT_FILE_PATH = ""

_C.DATA_LOADER = CfgNode()
_C.DATA_LOADER.NUM_WORKERS = 8
_C.DATA_LOADER.PIN_MEMORY = True

_C.TENSORBOARD = CfgNode()
_C.TENSORBOARD.ENABLE = False
_C.TENSORBOARD.LOG_DIR = ""

# ------------------------------------------------------------------------------ run
_C.NUM_GPUS = 1
_C.NUM_SHARDS = 1
_C.SHARD_ID = 0
_C.RNG_SEED = 1
_C.OUTPUT_DIR = "."
_C.LOG_PERIOD = 10
# json_stats lines on the console: None = only when it is not a terminal (they always go to
# OUTPUT_DIR/stdout.log); True / False to force.
_C.LOG_JSON_TO_CONSOLE = None
_C.DIST_BACKEND = "nccl"


# The allowed values of the keys that name something; the modules that implement them read these.
# The families fill MODEL_FAMILIES (MODEL.MODEL_NAME alias -> family), FAMILY_SECTIONS and their
# own choices when they register.
MODEL_FAMILIES: dict[str, str] = {}
FAMILY_SECTIONS: dict[str, str] = {}
TIMM_DATASETS = ("tar", "hfds/NAME", "hfids/NAME", "wds/NAME", "tfds/NAME", "torch/NAME")
CHOICES = {
    "MODEL.MODEL_NAME": (),
    "MODEL.LOSS_FUNC": ("cross_entropy", "soft_cross_entropy"),
    "SOLVER.OPTIMIZING_METHOD": ("adamw", "adam", "sgd"),
    "SOLVER.LR_POLICY": ("onecycle", "cosine", "constant"),
    # spin's own data sets, then timm's formats (NAME: any name, as timm takes it)
    "TRAIN.DATASET": ("imagenet", "folder", "digits", "mnist", "cifar10", "cifar100") + TIMM_DATASETS,
    "TEST.DATASET": ("imagenet", "folder", "digits", "mnist", "cifar10", "cifar100") + TIMM_DATASETS,
    "TRAIN.AMP_DTYPE": ("float16", "bfloat16"),
    "DISTILL.TYPE": ("soft", "hard"),
    "AUG.INTERPOLATION": ("bicubic", "bilinear", "nearest"),
    "AUG.RE_MODE": ("const", "rand", "pixel"),
    "DIST_BACKEND": ("nccl", "gloo"),
}


def add_section(name: str, defaults: dict, choices: dict, model_names: dict) -> None:
    """A family's architecture section ``name`` with its ``defaults``, the allowed values of its
    keys that name something, and its MODEL.MODEL_NAME aliases (alias -> family)."""
    _C[name] = CfgNode(defaults)
    CHOICES.update(choices)
    MODEL_FAMILIES.update(model_names)
    FAMILY_SECTIONS.update({fam: name for fam in model_names.values()})
    CHOICES["MODEL.MODEL_NAME"] = tuple(MODEL_FAMILIES)


def get_cfg() -> CfgNode:
    """A fresh copy of the defaults (every registered family's section included)."""
    from .. import models  # noqa: F401  (the families add their sections when first imported)

    return _C.clone()
