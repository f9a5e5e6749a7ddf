"""Config schema, the published YAML files, config -> model, and config errors."""
import os

import pytest

from spin.config import ConfigError, get_cfg, load_config, plan_key
from spin.share_transform import unique_parameters
from spin.models import build_model, plan_from_cfg
from spin.sharing import SharingError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")

# Every key the published configs use (SPIN-REFERENCE §4).
REFERENCE_KEYS = """TRAIN.ENABLE TRAIN.DATASET TRAIN.BATCH_SIZE TRAIN.EVAL_PERIOD TRAIN.CHECKPOINT_PERIOD
TRAIN.AUTO_RESUME TRAIN.MIXED_PRECISION TRAIN.CHECKPOINT_FILE_PATH TRAIN.CHECKPOINT_EPOCH_RESET
DATA.PATH_TO_DATA_DIR DATA.MEAN DATA.STD DATA.NUM_FRAMES DATA.TRAIN_CROP_SIZE DATA.TEST_CROP_SIZE
DATA.INPUT_CHANNEL_NUM DATA.TRAIN_JITTER_SCALES_RELATIVE DATA.TRAIN_JITTER_ASPECT_RELATIVE
CONVMIXER.CHANNEL CONVMIXER.PATCH_KERNEL CONVMIXER.PATCH_STRIDE CONVMIXER.PATCH_PADDING
CONVMIXER.KERNEL CONVMIXER.DEPTH CONVMIXER.ACT_FUNC CONVMIXER.WEIGHT_SHARE.ENABLE
CONVMIXER.WEIGHT_SHARE.SHARING_DISTRIBUTION CONVMIXER.WEIGHT_SHARE.SHARING_MAPPING
CONVMIXER.WEIGHT_SHARE.SHARE_RATE CONVMIXER.WEIGHT_SHARE.REDUCTION_FN AUG.ENABLE AUG.COLOR_JITTER
AUG.AA_TYPE AUG.INTERPOLATION AUG.RE_PROB AUG.RE_MODE AUG.RE_COUNT AUG.RE_SPLIT MIXUP.ENABLE
MIXUP.ALPHA MIXUP.CUTMIX_ALPHA MIXUP.PROB MIXUP.SWITCH_PROB MIXUP.LABEL_SMOOTH_VALUE SOLVER.BASE_LR
SOLVER.BASE_LR_SCALE_NUM_SHARDS SOLVER.LR_POLICY SOLVER.MAX_EPOCH SOLVER.OPTIMIZING_METHOD
SOLVER.WEIGHT_DECAY SOLVER.MOMENTUM SOLVER.WARMUP_EPOCHS SOLVER.CLIP_GRAD_L2NORM MODEL.NUM_CLASSES
MODEL.ARCH MODEL.MODEL_NAME MODEL.LOSS_FUNC MODEL.DROPOUT_RATE TEST.ENABLE TEST.DATASET
TEST.BATCH_SIZE TEST.CHECKPOINT_FILE_PATH DATA_LOADER.NUM_WORKERS DATA_LOADER.PIN_MEMORY NUM_GPUS
NUM_SHARDS RNG_SEED OUTPUT_DIR TENSORBOARD.ENABLE LOG_PERIOD BN.WEIGHT_DECAY""".split()


def test_defaults_have_every_reference_key():
    cfg = get_cfg()
    for key in map(plan_key, REFERENCE_KEYS):  # the published CONVMIXER.WEIGHT_SHARE.X is WEIGHT_SHARE.X
        node = cfg
        for part in key.split("."):
            assert part in node, key
            node = node[part]
    ws = cfg.WEIGHT_SHARE  # upstream patch defaults
    assert (cfg.CONVMIXER.DEPTH, cfg.CONVMIXER.CHANNEL, cfg.CONVMIXER.PATCH_KERNEL) == (32, 768, 7)
    assert (ws.ENABLE, ws.SHARING_DISTRIBUTION, ws.SHARING_MAPPING, ws.SHARE_RATE, ws.REDUCTION_FN) == \
        (False, "uniform", "sequential", 1, None)


@pytest.mark.parametrize("name,params,unique,n_sets", [
    ("ConvMixer.yaml", 20_465_896, 20_465_896, 32),
    ("WS-ConvMixer.yaml", 11_016_424, 11_016_424, 16),
    ("WFWS-ConvMixer.yaml", 20_465_896, 11_016_424, 32),
])
def test_published_configs_build(name, params, unique, n_sets):
    cfg = load_config([os.path.join(CONFIGS, name)])
    assert cfg.SOLVER.WEIGHT_DECAY == 2e-5 and cfg.TRAIN.CHECKPOINT_FILE_PATH == ""
    m = build_model(cfg)
    assert sum(p.numel() for p in m.parameters()) == params
    assert unique_parameters(m) == unique
    assert sum(k.startswith("pwise_w.") for k in m.state_dict()) == n_sets


def test_command_line_overrides_file():
    cfg = load_config([os.path.join(CONFIGS, "WS-ConvMixer.yaml")],
                      ["CONVMIXER.WEIGHT_SHARE.SHARING_MAPPING", "strided", "NUM_GPUS", "2",
                       "CONVMIXER.DEPTH", "8", "CONVMIXER.WEIGHT_SHARE.SHARE_RATE", "4"])
    assert cfg.NUM_GPUS == 2
    assert list(plan_from_cfg(cfg).layer_to_set) == [0, 1, 0, 1, 0, 1, 0, 1]


def test_custom_distribution_and_mapping_from_config():
    base = ["CONVMIXER.DEPTH", "6", "CONVMIXER.WEIGHT_SHARE.ENABLE", "True"]
    cfg = load_config(opts=base + ["CONVMIXER.WEIGHT_SHARE.SHARING_DISTRIBUTION", "custom",
                                   "CONVMIXER.WEIGHT_SHARE.GROUP_SIZES", "[1, 2, 3]"])
    assert list(plan_from_cfg(cfg).layer_to_set) == [0, 1, 1, 2, 2, 2]
    cfg = load_config(opts=base + ["CONVMIXER.WEIGHT_SHARE.SHARING_MAPPING", "custom",
                                   "CONVMIXER.WEIGHT_SHARE.LAYER_MAP", "[0, 1, 2, 2, 1, 0]"])
    assert plan_from_cfg(cfg).groups == ((0, 5), (1, 4), (2, 3))
    cfg = load_config(opts=base + ["CONVMIXER.WEIGHT_SHARE.GROUP_SIZES", "[1, 2, 3]"])
    with pytest.raises(SharingError, match="SHARING_DISTRIBUTION custom"):
        plan_from_cfg(cfg)
    cfg = load_config(opts=["CONVMIXER.WEIGHT_SHARE.REDUCTION_FN", "mean"])
    with pytest.raises(SharingError, match="ENABLE True"):
        plan_from_cfg(cfg)


def test_unknown_key_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key CONVMIXER.DEPTHS .*CONVMIXER.DEPTH"):
        load_config(opts=["CONVMIXER.DEPTHS", "8"])


def test_unknown_key_in_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("SOLVER:\n  BASE_LRR: 0.1\n")
    with pytest.raises(ConfigError, match=r"SOLVER.BASE_LRR in config file .*bad.yaml.*SOLVER.BASE_LR"):
        load_config([str(f)])


def test_wrong_type_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="wrong value type.*TRAIN.BATCH_SIZE"):
        load_config(opts=["TRAIN.BATCH_SIZE", "big"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([str(tmp_path / "nope.yaml")])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(opts=["NUM_GPUS"])


def test_an_integer_for_a_float_key_is_that_float(tmp_path):
    f = tmp_path / "lr.yaml"
    f.write_text("SOLVER:\n  BASE_LR: 1\n  WEIGHT_DECAY: 0\n")
    cfg = load_config([str(f)], ["SOLVER.WARMUP_EPOCHS", "3", "MODEL.DROP_PATH_RATE", "0"])
    got = (cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.WARMUP_EPOCHS, cfg.MODEL.DROP_PATH_RATE)
    assert got == (1.0, 0.0, 3.0, 0.0) and all(type(v) is float for v in got)
    assert type(load_config(None, ["SOLVER.MAX_EPOCH", "3"]).SOLVER.MAX_EPOCH) is int  # ints stay ints
    f.write_text("SOLVER:\n  CLIP_GRAD_L2NORM: 1.0\n")  # a key whose default is None: the file's value rules
    assert load_config([str(f)], ["SOLVER.CLIP_GRAD_L2NORM", "2"]).SOLVER.CLIP_GRAD_L2NORM == 2.0
