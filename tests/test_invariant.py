"""The invariant every reported number rests on: after N optimizer steps, the run's in-loop
evaluation, a model read back fresh from its saved checkpoint, ``spin test`` of that checkpoint and
its export (fused WS, ONNX) all give the same logits and numbers — for every family, every kind of
sharing, SGD and fused AdamW, EMA on and off. ``check_run`` is the one helper: a new family or
fusion gets the whole check by adding a row to CASES."""
import os

import pytest
import torch

import spin
from spin.config import load_config
from spin.engine import verify
from spin.engine.trainer import test as run_test
from spin.engine.trainer import train
from test_engine import json_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")

# Each family's digits config, shrunk: depth 4, width 32, 32x32 inputs.
FAMILIES = {
    "convmixer": ("tests/tiny-ws.yaml", "CONVMIXER.WEIGHT_SHARE",
                  ["MODEL.NUM_CLASSES", "10"]),
    "deit": ("digits/WS-DeiT-digits.yaml", "WEIGHT_SHARE",
             ["VIT.EMBED_DIM", "32", "VIT.DEPTH", "4", "VIT.NUM_HEADS", "2"]),
    "convnext": ("digits/WS-ConvNeXt-iso-digits.yaml", "WEIGHT_SHARE",
                 ["CONVNEXT.DIM", "32", "CONVNEXT.DEPTH", "4"]),
    "mixer": ("digits/WS-Mixer-digits.yaml", "WEIGHT_SHARE",
              ["MIXER.EMBED_DIM", "32", "MIXER.DEPTH", "4"]),
}
KINDS = {
    "vanilla": ["ENABLE", "False"],
    "ws": ["ENABLE", "True", "SHARE_RATE", "2"],
    "wfws-mean": ["ENABLE", "True", "SHARE_RATE", "2", "REDUCTION_FN", "mean"],
    "wfws-choose_first": ["ENABLE", "True", "SHARE_RATE", "2", "REDUCTION_FN", "choose_first"],
    "wfws-scalar": ["ENABLE", "True", "SHARE_RATE", "2", "REDUCTION_FN", "scalar_weighted_mean"],
    "wfws-channel": ["ENABLE", "True", "SHARE_RATE", "2", "REDUCTION_FN", "channel_weighted_mean"],
    "ws-lora": ["ENABLE", "True", "SHARE_RATE", "2", "RELAX", "lora", "RELAX_RANK", "2"],
    "wfws-scale": ["ENABLE", "True", "SHARE_RATE", "2", "REDUCTION_FN", "mean", "RELAX", "scale"],
}
# Every family x kind with fused AdamW (the optimizer that skips version bumps) and EMA (the EMA
# model is checked too); SGD without EMA for each family's plain WS and WFWS. Two evaluations per
# run: the first fills whatever a model may memoise, the second must still see the weights the
# optimizer wrote since.
CASES = [(f, k, "adamw", True) for f in FAMILIES for k in KINDS]
CASES += [(f, k, "sgd", False) for f in FAMILIES for k in ("ws", "wfws-mean")]


def family_cfg(family, kind, out, optimizer="adamw", ema=False, extra=()):
    base, section, arch = FAMILIES[family]
    plan = [f"{section}.{k}" if i % 2 == 0 else k for i, k in enumerate(KINDS[kind])]
    opts = ["TRAIN.DATASET", "digits", "TEST.DATASET", "digits", "DATA.PATH_TO_DATA_DIR", "",
            "DATA.TRAIN_CROP_SIZE", "32", "DATA.TEST_CROP_SIZE", "32", "TRAIN.BATCH_SIZE", "16",
            "TEST.BATCH_SIZE", "120", "TRAIN.MAX_ITERS_PER_EPOCH", "2", "SOLVER.MAX_EPOCH", "2",
            "SOLVER.WARMUP_EPOCHS", "0.0", "SOLVER.BASE_LR", "0.01" if optimizer == "adamw" else "0.1",
            "TRAIN.EVAL_PERIOD", "1", "TRAIN.CHECKPOINT_PERIOD", "1", "TRAIN.ENABLE", "True",
            "TEST.ENABLE", "False", "TENSORBOARD.ENABLE", "False", "LOG_PERIOD", "0",
            "SOLVER.OPTIMIZING_METHOD", optimizer, "MODEL_EMA.ENABLE", str(ema), "MODEL_EMA.DECAY", "0.5",
            "OUTPUT_DIR", str(out), *arch, *plan, *extra]
    return load_config([os.path.join(CONFIGS, base)], opts)


def stats_of(output_dir, kind):
    """The run's json_stats lines of one ``_type``."""
    return [row for row in json_stats(output_dir) if row.get("_type") == kind]


def _logits(model, images):
    model.eval()
    with torch.no_grad():
        return model(images).float()


def check_run(cfg, onnx: bool = False) -> dict:
    """Train ``cfg`` and assert that every number and artifact of the run tells the same story."""
    res = train(cfg)
    out = cfg.OUTPUT_DIR
    record = verify.read_record(out)
    assert record is not None and record["agree"] and record.get("ema_agree", True), record
    last_val = stats_of(out, "val_epoch")[-1]
    assert len(stats_of(out, "val_epoch")) == cfg.SOLVER.MAX_EPOCH
    # the last val_epoch line is what the checkpoint does, read back in a fresh model ...
    assert verify.agree(last_val, record["checkpoint_eval"]), (last_val, record)
    # ... and what spin test says of the final checkpoint
    tested = run_test(cfg.clone())
    assert tested["checkpoint"] == res["checkpoint"]
    assert verify.agree(last_val, tested), (last_val, tested)
    fresh = verify.fresh_model(res["checkpoint"])
    images = torch.rand(6, 3, 32, 32)
    ref = _logits(fresh, images)
    plan, fusion = spin.sharing_of(fresh)
    if fusion:  # the WS export keeps the logits
        torch.testing.assert_close(_logits(spin.fuse(fresh), images), ref, rtol=1e-4, atol=1e-5)
    if onnx:  # the deployable artifact (fused, ONNX) keeps them too
        from spin.tools.export import export_checkpoint, onnx_session, run_onnx

        path = os.path.join(out, "model.onnx")
        export_checkpoint(res["checkpoint"], "onnx", out=path)
        got = run_onnx(onnx_session(path), images[:1])
        torch.testing.assert_close(got, ref[:1], rtol=1e-3, atol=1e-4)
    return record


@pytest.mark.parametrize("family,kind,optimizer,ema", CASES,
                         ids=[f"{f}-{k}-{o}{'-ema' if e else ''}" for f, k, o, e in CASES])
def test_reported_numbers_are_the_checkpoints(tmp_path, family, kind, optimizer, ema):
    record = check_run(family_cfg(family, kind, tmp_path / "run", optimizer, ema),
                       onnx=kind == "wfws-mean" and optimizer == "adamw")
    assert record["logit_gap"] <= verify.LOGIT_RTOL
    assert ("ema_agree" in record) == ema


def test_a_stale_evaluation_is_refused_not_reported(tmp_path, monkeypatch):
    """The end-of-run check is the guard: an in-loop number the checkpoint does not reproduce
    stops the run with one ConsistencyError (exit 1 on the command line), the checkpoint kept."""
    from spin.cli import main
    from spin.engine import trainer

    real = trainer.evaluate
    calls = []

    def stale(model, *a, **k):  # the second in-loop evaluation reports the first one's numbers
        calls.append(real(model, *a, **k))
        return calls[0] if len(calls) >= 2 else calls[-1]

    monkeypatch.setattr(trainer, "evaluate", stale)
    cfg = family_cfg("convmixer", "wfws-mean", tmp_path / "run")
    with pytest.raises(verify.ConsistencyError, match="differs from its saved checkpoint"):
        train(cfg)
    record = verify.read_record(cfg.OUTPUT_DIR)
    assert record and not record["agree"]
    assert os.path.isfile(record["checkpoint"])
    cfg = family_cfg("convmixer", "wfws-mean", tmp_path / "cli")
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.dump())
    assert main(["train", "--cfg", str(path)]) == 1


def test_cached_block_reuses_fusions_and_forgets_them_on_exit():
    """spin.cached is the one place fusions outlive a forward: inside it the caller promises
    unchanged weights; after it, a changed weight is seen at once."""
    for family in ("convmixer", "deit"):
        model = spin.models.create_model(
            {"convmixer": "convmixer_768_32_14_3", "deit": "deit_tiny_patch16_224"}[family],
            **({"dim": 16, "depth": 4, "patch_kernel": 4} if family == "convmixer" else
               {"embed_dim": 16, "depth": 4, "num_heads": 2, "img_size": 32, "patch_size": 8}),
            num_classes=3, share_rate=2, fusion="mean").eval()
        x = torch.rand(2, 3, 32, 32)
        before = _logits(model, x)
        weight = model.blocks[1].pwise.weight if family == "convmixer" else model.blocks[1].attn.qkv.weight
        with spin.cached(model):
            torch.testing.assert_close(_logits(model, x), before)
            with torch.no_grad():
                weight.mul_(3.0)
            # inside the block the promise was broken: the memo is still the old fusion
            torch.testing.assert_close(_logits(model, x), before)
        after = _logits(model, x)
        assert not torch.allclose(after, before), family


def test_wfws_from_a_trained_vanilla_is_as_good_as_it_reports(tmp_path, image_folder):
    """The science guard (seconds): a tiny vanilla trained on an image folder, then WFWS mean from
    its checkpoint with fused AdamW. The WFWS checkpoint measured fresh must be at least as good
    as the run's own last evaluation said, and fusion from the trained vanilla must keep most of
    what it learnt (a stale fusion or a fusion grouped by the wrong map breaks one or the other)."""
    common = ["TRAIN.DATASET", "imagenet", "TEST.DATASET", "imagenet", "DATA.PATH_TO_DATA_DIR", image_folder,
              "MODEL.NUM_CLASSES", "4", "TRAIN.MAX_ITERS_PER_EPOCH", "0", "TEST.BATCH_SIZE", "8",
              "TRAIN.BATCH_SIZE", "8", "SOLVER.MAX_EPOCH", "3", "TRAIN.EVAL_PERIOD", "1",
              "TRAIN.CHECKPOINT_PERIOD", "1", "TEST.ENABLE", "False", "LOG_PERIOD", "0",
              "SOLVER.OPTIMIZING_METHOD", "adamw", "SOLVER.BASE_LR", "0.01"]
    base = os.path.join(CONFIGS, "tests", "tiny-ws.yaml")
    vanilla = train(load_config([base], common + ["CONVMIXER.WEIGHT_SHARE.ENABLE", "False",
                                                  "OUTPUT_DIR", str(tmp_path / "vanilla")]))
    wfws_cfg = load_config([base], common + [
        "CONVMIXER.WEIGHT_SHARE.REDUCTION_FN", "mean", "TRAIN.CHECKPOINT_FILE_PATH", vanilla["checkpoint"],
        "TRAIN.CHECKPOINT_EPOCH_RESET", "True", "OUTPUT_DIR", str(tmp_path / "wfws")])
    wfws = train(wfws_cfg)
    in_loop = 100 - stats_of(wfws_cfg.OUTPUT_DIR, "val_epoch")[-1]["top1_err"]
    fresh = 100 - run_test(wfws_cfg.clone())["top1_err"]
    assert fresh >= in_loop - 1e-9, (fresh, in_loop)
    assert 100 - vanilla["checkpoint_eval"]["top1_err"] >= 75.0  # the colours are learnable
    assert fresh >= 75.0, fresh
