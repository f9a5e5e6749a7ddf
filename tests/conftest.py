import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_bn(model, seed=0):
    """Give every BatchNorm non-trivial affine and running stats, so eval-mode tests see them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model


def make_image_folder(root, classes=("a", "b", "c", "d"), n_train=24, n_val=8, size=32, seed=0):
    """Tiny learnable ImageNet-layout folder: class k is a noisy image of colour k."""
    import os

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (220, 220, 30), (30, 220, 220)]
    for split, n in (("train", n_train), ("val", n_val)):
        for k, c in enumerate(classes):
            d = os.path.join(root, split, c)
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                img = np.clip(np.array(colours[k % 5]) + rng.normal(0, 40, (size, size, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(os.path.join(d, f"{i:03d}.png"))
    return str(root)


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "data")
