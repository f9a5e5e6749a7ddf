"""Distillation (DISTILL.*): the losses against hand computations, the teacher (no gradient, not
checkpointed, checked before anything is written), exact resume, gradient accumulation, and the
relation / attention taps."""
import csv
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from spin.config import ConfigError, load_config
from spin.distill_loss import attention_kd, hard_kd, relation_kd, soft_kd
from spin.engine import checkpoint as cu
from spin.engine.distill import DistillationLoss, DistillError, file_sha256
from spin.engine.loop import train_one_epoch
from spin.engine.trainer import train
from spin.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tests", "tiny-ws.yaml")
S = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
T = torch.tensor([[1.0, 1.5, 0.0], [-2.0, 0.0, 1.0]])


def _softmax(row, tau=1.0):
    e = [math.exp(v / tau) for v in row]
    return [x / sum(e) for x in e]


# ------------------------------------------------------------------------ the losses, by hand
@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_soft_kd_equals_hand_computation(tau):
    kls = []
    for s, t in zip(S.tolist(), T.tolist()):
        p, q = _softmax(t, tau), _softmax(s, tau)
        kls.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
    want = tau * tau * sum(kls) / len(kls)  # Hinton: tau^2 KL(teacher || student), mean over rows
    assert soft_kd(S, T, tau).item() == pytest.approx(want, rel=1e-5)
    assert soft_kd(T, T, tau).item() == pytest.approx(0.0, abs=1e-7)


def test_hard_kd_is_cross_entropy_on_the_teacher_argmax():
    # teacher argmax: row 0 -> class 1, row 1 -> class 2
    want = (-math.log(_softmax(S[0].tolist())[1]) - math.log(_softmax(S[1].tolist())[2])) / 2
    assert hard_kd(S, T).item() == pytest.approx(want, rel=1e-6)


def test_sequence_logits_are_rows():
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    assert soft_kd(s, t, 2.0).item() == pytest.approx(soft_kd(s.reshape(10, 7), t.reshape(10, 7), 2.0).item())


def test_relation_and_attention_kd_vanish_only_on_equal_inputs():
    x = torch.randn(2, 6, 8)
    assert relation_kd(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert relation_kd(x, torch.randn(2, 6, 4)).item() > 0  # widths may differ, tokens may not
    with pytest.raises(ValueError, match="same \\(batch, tokens\\)"):
        relation_kd(x, torch.randn(2, 5, 8))
    a = torch.softmax(torch.randn(2, 3, 6, 6), -1)
    assert attention_kd(a, a).item() == pytest.approx(0.0, abs=1e-6)
    b = torch.softmax(torch.randn(2, 3, 6, 6), -1)
    want = (a * (a.log() - b.log())).sum(-1).mean()  # KL(A_t || A_s) per query row
    assert attention_kd(b, a).item() == pytest.approx(want.item(), rel=1e-5)


def test_distillation_loss_mixes_label_and_kd_terms_and_teacher_gets_no_grad():
    student, teacher = nn.Linear(3, 3), nn.Linear(3, 3)
    teacher.eval().requires_grad_(False)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    crit = DistillationLoss(nn.CrossEntropyLoss(), teacher, student, kind="soft", alpha=0.3, tau=2.0)
    out = student(x)
    loss = crit(x, out, y)
    want = 0.7 * nn.functional.cross_entropy(out, y) + 0.3 * soft_kd(out, teacher(x), 2.0)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    loss.backward()
    assert student.weight.grad is not None and teacher.weight.grad is None
    assert crit.seconds > 0


def test_hidden_and_attention_taps_on_a_vit():
    from spin.models.vit import vision_transformer

    kw = dict(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3)
    student = vision_transformer(**kw)
    teacher = vision_transformer(**kw)
    teacher.load_state_dict(student.state_dict())
    teacher.eval().requires_grad_(False)
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    crit = DistillationLoss(nn.CrossEntropyLoss(), teacher, student, alpha=0.5, hidden_weight=1.0,
                            attn_weight=1.0, layers=[-1, 0])
    out = student.train()(x)  # no dropout or drop path: the teacher's function; taps record training forwards
    crit(x, out, y)
    assert set(crit.parts) == {"base", "kd", "hidden", "attn"}
    assert crit.parts["kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert crit.parts["hidden"].item() == pytest.approx(0.0, abs=1e-5)
    assert crit.parts["attn"].item() == pytest.approx(0.0, abs=1e-5)
    # another student: all three terms positive; evaluation forwards are not recorded
    other = vision_transformer(**kw).train()
    crit = DistillationLoss(nn.CrossEntropyLoss(), teacher, other, hidden_weight=1.0, attn_weight=1.0)
    with torch.no_grad():
        other.eval()(x)
    assert crit._s.hidden == {} and crit._s.attn == {}
    out = other.train()(x)
    crit(x, out, y)
    assert all(crit.parts[k].item() > 0 for k in ("kd", "hidden", "attn"))
    crit.close()


def test_layer_pairs_follow_the_lists_and_shapes_are_checked_before_training():
    from spin.engine.distill import build_distillation
    from spin.models.vit import vision_transformer

    kw = dict(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3)
    student, teacher = vision_transformer(**kw), vision_transformer(**kw)
    with torch.no_grad():  # peaked attention maps: a random init's are near uniform in every layer
        for blk in student.blocks:
            blk.attn.qkv.weight.mul_(20)
    teacher.load_state_dict(student.state_dict())
    teacher.eval().requires_grad_(False)
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    terms = {}
    for name, t_layers in (("same", [0, 1]), ("crossed", [1, 0])):
        crit = DistillationLoss(nn.CrossEntropyLoss(), teacher, student, attn_weight=1.0, layers=[0, 1],
                                teacher_layers=t_layers)
        crit(x, student.train()(x), y)
        terms[name] = crit.parts["attn"].item()
        crit.close()
    # student 0 with teacher 0 (identical models: zero) vs student 0 with teacher 1 (other attention)
    assert terms["same"] == pytest.approx(0.0, abs=1e-5) and terms["crossed"] > 1e-2
    # a teacher of another token count (patch 4: 17 tokens vs 5): refused when the loss is built
    other = vision_transformer(**dict(kw, patch_size=4)).eval().requires_grad_(False)
    cfg = load_config([], ["DISTILL.ENABLE", "True", "DISTILL.TEACHER", "t.pyth", "DISTILL.HIDDEN_WEIGHT", "1",
                           "DATA.TRAIN_CROP_SIZE", "16"])
    with pytest.raises(DistillError, match="pair 0 \\(hidden\\).*same \\(batch, tokens\\)"):
        build_distillation(cfg, nn.CrossEntropyLoss(), other, student)


def test_attention_kd_on_a_convmixer_is_refused():
    m = build_model(load_config([TINY]))
    with pytest.raises(DistillError, match="attn.qkv"):
        DistillationLoss(nn.CrossEntropyLoss(), m, m, attn_weight=1.0)


def test_gradient_accumulation_equals_the_large_batch():
    torch.manual_seed(0)
    data = [(torch.randn(8, 5), torch.randint(0, 3, (8,)), 0) for _ in range(4)]
    big = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]), 0) for a, b in zip(data[::2], data[1::2])]
    models = []
    for loader, accum in ((big, 1), (data, 2)):
        torch.manual_seed(1)
        m = nn.Linear(5, 3)
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        train_one_epoch(m, loader, opt, nn.CrossEntropyLoss(), torch.device("cpu"), 0, 1, lambda e: 0.5,
                        log_period=0, accum_steps=accum)
        models.append(m)
    assert torch.allclose(models[0].weight, models[1].weight, atol=1e-6)
    assert not torch.equal(models[0].weight, nn.Linear(5, 3).weight)
    # a group whose last batch is unreadable still steps on the batches it has
    torch.manual_seed(1)
    m = nn.Linear(5, 3)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    before = m.weight.detach().clone()
    train_one_epoch(m, data[:1] + [(None, None, 8)], opt, nn.CrossEntropyLoss(), torch.device("cpu"), 0, 1,
                    lambda e: 0.5, log_period=0, accum_steps=2)
    assert not torch.equal(m.weight, before)


# ------------------------------------------------------------------------ the engine
def _cfg(data, out, *opts):
    return load_config([TINY], ["DATA.PATH_TO_DATA_DIR", data, "OUTPUT_DIR", str(out), "LOG_PERIOD", "0", *opts])


@pytest.fixture(scope="module")
def vanilla(tmp_path_factory):
    """A trained vanilla tiny ConvMixer and its data: the teacher of the tests below."""
    from conftest import make_image_folder

    root = tmp_path_factory.mktemp("kd")
    data = make_image_folder(root / "data")
    res = train(_cfg(data, root / "vanilla", "WEIGHT_SHARE.ENABLE", "False"))
    return data, res["checkpoint"]


def _kd(data, out, teacher_ck, *opts):
    return _cfg(data, out, "WEIGHT_SHARE.REDUCTION_FN", "mean", "TRAIN.CHECKPOINT_FILE_PATH", teacher_ck,
                "TRAIN.CHECKPOINT_EPOCH_RESET", "True", "DISTILL.ENABLE", "True", *opts)


def test_kd_run_records_teacher_not_its_weights_and_logs_its_time(vanilla, tmp_path):
    data, teacher_ck = vanilla
    res = train(_kd(data, tmp_path / "kd", teacher_ck, "DISTILL.TAU", "2.0"))
    assert res["checkpoint_eval"] is not None
    ck = cu.load_checkpoint(res["checkpoint"])
    student_keys = set(build_model(_kd(data, tmp_path / "x", teacher_ck)).state_dict())
    assert set(ck["model_state"]) == student_keys  # nothing of the teacher
    assert ck["distill_teacher"]["sha256"] == file_sha256(teacher_ck)
    with open(tmp_path / "kd" / "checkpoints" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["teacher_time"]) > 0 for r in rows)
    assert all(float(r["train_img_s_student"]) > float(r["train_img_s"]) for r in rows)


def test_resume_with_teacher_is_exact_and_refuses_another_teacher(vanilla, tmp_path):
    data, teacher_ck = vanilla
    opts = ("SOLVER.MAX_EPOCH", "2", "MIXUP.ENABLE", "True", "MODEL.LOSS_FUNC", "soft_cross_entropy",
            "TRAIN.GRAD_ACCUM_STEPS", "2", "DISTILL.TYPE", "hard")
    whole = train(_kd(data, tmp_path / "whole", teacher_ck, *opts))
    # a run stopped after epoch 1: the same folder without its last checkpoint
    shutil.copytree(tmp_path / "whole", tmp_path / "split")
    os.remove(tmp_path / "split" / "checkpoints" / "checkpoint_epoch_00002.pyth")
    split = train(_kd(data, tmp_path / "split", teacher_ck, *opts))
    assert split["start_epoch"] == 1
    a = cu.load_checkpoint(whole["checkpoint"])["model_state"]
    b = cu.load_checkpoint(split["checkpoint"])["model_state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the teacher file changed under a resumable run: refused, nothing written
    other = tmp_path / "other.pyth"
    ck = cu.load_checkpoint(teacher_ck)
    ck["model_state"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ck["model_state"].items()}
    torch.save(ck, other)
    before = sorted(os.listdir(tmp_path / "split" / "checkpoints"))
    with pytest.raises(cu.CheckpointError, match="another teacher"):
        train(_kd(data, tmp_path / "split", teacher_ck, *opts[:1], "3", *opts[2:], "DISTILL.TEACHER", str(other)))
    assert sorted(os.listdir(tmp_path / "split" / "checkpoints")) == before
    # the same bytes elsewhere are the same teacher
    shutil.copy(teacher_ck, tmp_path / "copy.pyth")
    assert train(_kd(data, tmp_path / "split", teacher_ck, *opts[:1], "3", *opts[2:], "DISTILL.TEACHER",
                     str(tmp_path / "copy.pyth")))["start_epoch"] == 2


def test_timm_state_dict_teacher_is_the_vanilla_counterpart_under_amp(vanilla, tmp_path):
    data, teacher_ck = vanilla
    bare = tmp_path / "bare.pth"  # a timm-style file: weights only, no config
    torch.save(cu.load_checkpoint(teacher_ck)["model_state"], bare)
    res = train(_cfg(data, tmp_path / "ws", "DISTILL.ENABLE", "True", "DISTILL.TEACHER", str(bare),
                     "SOLVER.MAX_EPOCH", "1", "TRAIN.MAX_ITERS_PER_EPOCH", "2",
                     "TRAIN.MIXED_PRECISION", "True", "TRAIN.AMP_DTYPE", "bfloat16"))
    assert cu.load_checkpoint(res["checkpoint"])["distill_teacher"]["path"] == str(bare)


def test_bad_teachers_are_one_error_before_anything_is_written(vanilla, tmp_path):
    data, teacher_ck = vanilla
    out = tmp_path / "never"
    # another class count
    five = tmp_path / "five.pth"
    sd = dict(cu.load_checkpoint(teacher_ck)["model_state"])
    sd["head.fc.weight"], sd["head.fc.bias"] = torch.zeros(5, sd["head.fc.weight"].shape[1]), torch.zeros(5)
    cfg5 = _cfg(data, tmp_path / "five", "WEIGHT_SHARE.ENABLE", "False", "MODEL.NUM_CLASSES", "5")
    cu.save_checkpoint(str(five), build_model(cfg5), 0, cfg5)
    with pytest.raises(DistillError, match="5 classes but the student 4"):
        train(_cfg(data, out, "DISTILL.ENABLE", "True", "DISTILL.TEACHER", str(five)))
    # weights of another architecture without a config
    torch.save({k: v for k, v in sd.items() if not k.startswith("head")}, tmp_path / "headless.pth")
    with pytest.raises(cu.CheckpointError, match="vanilla counterpart"):
        train(_cfg(data, out, "DISTILL.ENABLE", "True", "DISTILL.TEACHER", str(tmp_path / "headless.pth")))
    # a teacher with a fixed input size the student's crop does not fit
    vit = load_config([], ["MODEL.MODEL_NAME", "DeiT", "VIT.EMBED_DIM", "16", "VIT.DEPTH", "1", "VIT.NUM_HEADS", "2",
                           "VIT.PATCH_SIZE", "8", "DATA.TRAIN_CROP_SIZE", "16", "DATA.TEST_CROP_SIZE", "16",
                           "MODEL.NUM_CLASSES", "4"])
    cu.save_checkpoint(str(tmp_path / "vit16.pyth"), build_model(vit), 0, vit)
    with pytest.raises(DistillError, match="cannot run on the student's 3x32x32"):
        train(_cfg(data, out, "DISTILL.ENABLE", "True", "DISTILL.TEACHER", str(tmp_path / "vit16.pyth")))
    # config-level: missing file, the run's own folder, no teacher, stray keys
    for opts, msg in [(("DISTILL.ENABLE", "True", "DISTILL.TEACHER", str(tmp_path / "gone.pyth")), "does not exist"),
                      (("DISTILL.ENABLE", "True", "DISTILL.TEACHER", str(out)), "own OUTPUT_DIR"),
                      (("DISTILL.ENABLE", "True", "DISTILL.TEACHER", str(out / "checkpoints" / "c.pyth")),
                       "own OUTPUT_DIR"),
                      (("DISTILL.ENABLE", "True"), "needs a teacher"),
                      (("DISTILL.ALPHA", "0.9"), "DISTILL.ENABLE is False"),
                      (("DISTILL.ENABLE", "True", "DISTILL.TEACHER", teacher_ck, "DISTILL.ALPHA", "1.5"),
                       "DISTILL.ALPHA must be in"),
                      (("TRAIN.GRAD_ACCUM_STEPS", "0"), "GRAD_ACCUM_STEPS")]:
        with pytest.raises(ConfigError, match=msg):
            train(_cfg(data, out, *opts))
    assert not out.exists()


def test_cli_missing_teacher_is_one_line(tmp_path):
    out = tmp_path / "o"
    p = subprocess.run([sys.executable, "-m", "spin.cli", "train", "--cfg", TINY, "OUTPUT_DIR", str(out),
                        "DISTILL.ENABLE", "True", "DISTILL.TEACHER", str(tmp_path / "nope.pyth")],
                       capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines == [ln for ln in lines if ln.startswith("spin: error:")] and len(lines) == 1, p.stderr
    assert "DISTILL.TEACHER" in lines[0] and not out.exists()
