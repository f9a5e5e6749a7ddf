"""timm interop: converted weights give timm's logits; spin models are creatable through timm."""
import pytest
import timm
import torch
import torch.nn as nn
from timm.models.convmixer import ConvMixer

from conftest import randomize_bn
from spin.engine.checkpoint import load_model_weights
from spin.models import SpinConvMixer, convert_timm_state_dict
from spin.share_transform import fuse
from spin.sharing import build_plan


@pytest.mark.parametrize("act,act_layer", [("relu", nn.ReLU), ("gelu", nn.GELU)])
def test_timm_conversion_gives_identical_logits(act, act_layer):
    ref = randomize_bn(ConvMixer(dim=24, depth=3, kernel_size=5, patch_size=4, num_classes=7,
                                 act_layer=act_layer)).eval()
    ours = SpinConvMixer(dim=24, depth=3, patch_kernel=4, kernel_size=5, act=act, num_classes=7,
                         pointwise_residual=False)
    ours.load_state_dict(convert_timm_state_dict(ref.state_dict()), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours.eval()(x), ref(x), rtol=1e-5, atol=1e-5)


def test_wfws_starts_from_timm_weights():
    ref = randomize_bn(ConvMixer(dim=24, depth=4, kernel_size=3, patch_size=4, num_classes=7,
                                 act_layer=nn.ReLU)).eval()
    wfws = SpinConvMixer(dim=24, depth=4, patch_kernel=4, kernel_size=3, num_classes=7,
                         pointwise_residual=False, plan=build_plan(4, share_rate=2), fusion="mean")
    load_model_weights(wfws, convert_timm_state_dict(ref.state_dict()), source="timm")
    sd = ref.state_dict()
    fused = fuse(wfws)
    torch.testing.assert_close(fused.state_dict()["pwise_w.1"], (sd["blocks.2.1.weight"] + sd["blocks.3.1.weight"]) / 2)


def test_conversion_rejects_foreign_keys():
    with pytest.raises(KeyError, match="not part of a timm ConvMixer"):
        convert_timm_state_dict({"fc.weight": torch.zeros(1)})


def test_timm_create_model():
    assert "spin_ws_convmixer_768_32_14_3" in timm.list_models("spin_*")
    m = timm.create_model("spin_ws_convmixer_768_32_14_3", num_classes=10, dim=32, depth=4)
    assert isinstance(m, SpinConvMixer) and len(m.shared.sets) == 2 and m.num_classes == 10
    assert m(torch.randn(1, 3, 28, 28)).shape == (1, 10)
    with pytest.raises(ValueError, match="no hub weights"):
        timm.create_model("spin_convmixer_768_32_14_3", pretrained=True)
