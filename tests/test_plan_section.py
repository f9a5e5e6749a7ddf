"""WEIGHT_SHARE is the plan section of every family; the published CONVMIXER.WEIGHT_SHARE.* (the
SPIN YAMLs, and every config, checkpoint, identity and sweep file spin wrote before) is read as it.

tests/fixtures/before_one_plan_section.json was written by spin c8ad88c (before this change): for a
ConvMixer and a DeiT config, the opts it was loaded with, its config dump (a checkpoint's ``cfg``,
a run's config.yaml) and its identity (a checkpoint's ``identity``)."""
import json
import os

import pytest
import torch
import yaml

from spin import identity as idn
from spin.cli import main
from spin.config import ConfigError, get_cfg, load_config, merge_known
from spin.engine import checkpoint as cu
from spin.models import build_model, plan_section
from spin.sweep import load_sweep_file
from spin.sweep.report import collect
from spin.sweep.spec import SweepError, grid_trials

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
TINY = os.path.join(CONFIGS, "tests", "tiny-ws.yaml")
with open(os.path.join(ROOT, "tests", "fixtures", "before_one_plan_section.json")) as f:
    BEFORE = json.load(f)
CLASSES = ["a", "b", "c"]


def dumped(cfg) -> dict:
    return yaml.safe_load(cfg.dump())


@pytest.mark.parametrize("name", ["ConvMixer.yaml", "WS-ConvMixer.yaml", "WFWS-ConvMixer.yaml"])
def test_published_yamls_fill_weight_share_with_what_they_say(name):
    with open(os.path.join(CONFIGS, name)) as f:
        said = yaml.safe_load(f)["CONVMIXER"].get("WEIGHT_SHARE", {})
    cfg = load_config([os.path.join(CONFIGS, name)])
    expected = get_cfg().WEIGHT_SHARE
    expected.merge_from_other_cfg(type(expected)(said))  # the file's keys, as yacs reads them
    assert cfg.WEIGHT_SHARE == expected
    assert "WEIGHT_SHARE" not in dumped(cfg)["CONVMIXER"] and dumped(cfg)["WEIGHT_SHARE"] == dumped(expected)


def test_published_values():
    """The values read from the three files (configs/*.yaml), written out."""
    vanilla, ws, wfws = (load_config([os.path.join(CONFIGS, n)]).WEIGHT_SHARE
                         for n in ("ConvMixer.yaml", "WS-ConvMixer.yaml", "WFWS-ConvMixer.yaml"))
    assert vanilla == get_cfg().WEIGHT_SHARE and not vanilla.ENABLE
    for ws_cfg, fusion in ((ws, None), (wfws, "mean")):
        assert (ws_cfg.ENABLE, ws_cfg.SHARING_DISTRIBUTION, ws_cfg.SHARING_MAPPING, ws_cfg.SHARE_RATE,
                ws_cfg.REDUCTION_FN, ws_cfg.SCOPE) == (True, "uniform", "sequential", 2, fusion, "")


def test_one_section_for_every_family():
    cfg = get_cfg()
    assert "WEIGHT_SHARE" not in cfg.CONVMIXER and cfg.WEIGHT_SHARE.SCOPE == ""
    with pytest.warns(DeprecationWarning, match="cfg.WEIGHT_SHARE"):
        assert plan_section(cfg) is cfg.WEIGHT_SHARE


def test_command_line_opts_under_the_published_name():
    cfg = load_config([os.path.join(CONFIGS, "WS-ConvMixer.yaml")],
                      ["CONVMIXER.WEIGHT_SHARE.SHARE_RATE", "4", "CONVMIXER.WEIGHT_SHARE.SCOPE", "both"])
    assert (cfg.WEIGHT_SHARE.SHARE_RATE, cfg.WEIGHT_SHARE.SCOPE) == (4, "both")
    assert "WEIGHT_SHARE" not in dumped(cfg)["CONVMIXER"]
    # a later source overrides an earlier one whatever name either uses
    later = load_config([os.path.join(CONFIGS, "WS-ConvMixer.yaml")], ["WEIGHT_SHARE.SHARE_RATE", "8"])
    assert later.WEIGHT_SHARE.SHARE_RATE == 8
    # both names in one source agreeing are one setting
    same = load_config(None, ["CONVMIXER.WEIGHT_SHARE.SHARE_RATE", "2", "WEIGHT_SHARE.SHARE_RATE", "2"])
    assert same.WEIGHT_SHARE.SHARE_RATE == 2


def test_one_key_under_both_names_with_different_values_is_an_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"^CONVMIXER.WEIGHT_SHARE.SHARE_RATE '4' and WEIGHT_SHARE.SHARE_RATE '2' "
                                          r"in command-line overrides: .*give it once, under WEIGHT_SHARE"):
        load_config(None, ["CONVMIXER.WEIGHT_SHARE.SHARE_RATE", "4", "WEIGHT_SHARE.SHARE_RATE", "2"])
    f = tmp_path / "both.yaml"
    f.write_text("CONVMIXER:\n  WEIGHT_SHARE:\n    ENABLE: True\n    SHARE_RATE: 4\n"
                 "WEIGHT_SHARE:\n  ENABLE: True\n  SHARE_RATE: 2\n")
    with pytest.raises(ConfigError, match=r"CONVMIXER.WEIGHT_SHARE.SHARE_RATE 4 and WEIGHT_SHARE.SHARE_RATE 2 in "
                                          r"config file .*both.yaml"):
        load_config([str(f)])
    assert main(["stats", "--cfg", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("spin: error:") == 1 and "Traceback" not in err and "WEIGHT_SHARE.SHARE_RATE 2" in err
    f.write_text("CONVMIXER:\n  WEIGHT_SHARE:\n    ENABLE: True\n    SHARE_RATE: 2\n"
                 "WEIGHT_SHARE:\n  SHARE_RATE: 2\n  SCOPE: both\n")
    cfg = load_config([str(f)])  # the two halves of one plan, agreeing where they overlap
    assert (cfg.WEIGHT_SHARE.ENABLE, cfg.WEIGHT_SHARE.SHARE_RATE, cfg.WEIGHT_SHARE.SCOPE) == (True, 2, "both")


@pytest.mark.parametrize("family", ["convmixer", "deit"])
def test_a_stored_config_from_before_translates(family):
    """A dump of that time carries both sections whole; the one its family did not read (at its
    defaults, the old ConvMixer one with SCOPE pointwise) must not leak into the plan."""
    old = BEFORE[family]
    new = load_config([os.path.join(ROOT, p) for p in old["files"]], old["opts"])
    stored = get_cfg()
    merge_known(stored, yaml.safe_load(old["cfg"]))
    assert stored == new and "WEIGHT_SHARE" not in dumped(stored)["CONVMIXER"]
    assert stored.WEIGHT_SHARE.SCOPE == ("" if family == "convmixer" else "attn+mlp")
    assert stored.WEIGHT_SHARE.SHARING_MAPPING == "strided"
    assert stored.WEIGHT_SHARE.REDUCTION_FN == ("mean" if family == "convmixer" else None)


def test_a_checkpoint_from_before_builds_its_model(tmp_path):
    old = BEFORE["convmixer"]
    model = build_model(load_config([TINY], old["opts"]))
    path = str(tmp_path / "old.pyth")
    torch.save({"epoch": 0, "model_state": model.state_dict(), "cfg": old["cfg"], "classes": CLASSES}, path)
    rebuilt, cfg, _ = cu.build_model_from_checkpoint(path)
    assert rebuilt.shared.fusion == "mean" and list(rebuilt.shared.plan.layer_to_set) == [0, 1, 2, 3, 0, 1, 2, 3]
    assert cfg.WEIGHT_SHARE.REDUCTION_FN == "mean" and "WEIGHT_SHARE" not in dumped(cfg)["CONVMIXER"]
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))


@pytest.mark.parametrize("family", ["convmixer", "deit"])
def test_an_identity_from_before_is_the_same_run(family):
    old = BEFORE[family]
    new_cfg = load_config([os.path.join(ROOT, p) for p in old["files"]], old["opts"])
    new = idn.identity(new_cfg, CLASSES)
    # derived from an old checkpoint's cfg and classes, it is today's identity
    assert cu.checkpoint_identity({"cfg": old["cfg"], "classes": CLASSES}) == new
    # stored by an old checkpoint: resuming with the same settings proceeds, without a logged difference
    for action in idn.RULES:
        assert idn.differences(old["identity"], new, action) == ([], [])
    # ... and a changed plan is still refused, named as today
    strided = old["opts"].index("strided")
    changed = idn.identity(load_config([os.path.join(ROOT, p) for p in old["files"]],
                                       old["opts"][:strided - 1] + old["opts"][strided + 1:]), CLASSES)
    with pytest.raises(idn.IdentityError, match=r"^lead: WEIGHT_SHARE layer->set map \[0, 1, 2, "):
        idn.check(old["identity"], changed, "resume", "lead", "fix")


def write_sweep(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: {TINY}\n" + text)
    return str(path)


def test_sweep_files_name_keys_either_way(tmp_path):
    published = write_sweep(tmp_path, """opts: [CONVMIXER.WEIGHT_SHARE.ENABLE, True]
groups:
  g:
    opts: [CONVMIXER.WEIGHT_SHARE.SHARE_RATE, 2]
    grid: {CONVMIXER.WEIGHT_SHARE.SCOPE: [pointwise, both]}
  t:
    trials:
      wfws: [CONVMIXER.WEIGHT_SHARE.REDUCTION_FN, mean]
""")
    _, old_trials = load_sweep_file(published)
    with open(published) as f:
        current = f.read().replace("CONVMIXER.WEIGHT_SHARE.", "WEIGHT_SHARE.")
    _, new_trials = load_sweep_file(write_sweep(tmp_path, current.split("\n", 1)[1]))
    assert [t.key for t in old_trials] == ["g/SCOPE=pointwise-s0", "g/SCOPE=both-s0", "t/wfws-s0"]
    # the same trials: names, grid values (results.csv's columns), overrides and so identities
    assert [(t.key, t.values, t.opts) for t in old_trials] == [(t.key, t.values, t.opts) for t in new_trials]
    assert old_trials[1].values == {"WEIGHT_SHARE.SCOPE": "both"}
    assert not any("CONVMIXER.WEIGHT_SHARE" in str(o) for t in old_trials for o in t.opts)


def test_a_sweep_naming_one_key_twice_is_refused(tmp_path):
    with pytest.raises(SweepError, match=r"names WEIGHT_SHARE.SHARE_RATE twice \(CONVMIXER.WEIGHT_SHARE.SHARE_RATE "
                                         r"and WEIGHT_SHARE.SHARE_RATE\)"):
        grid_trials("g", [TINY], [], {"CONVMIXER.WEIGHT_SHARE.SHARE_RATE": [1], "WEIGHT_SHARE.SHARE_RATE": [2]}, 1)
    clash = write_sweep(tmp_path, """groups:
  t:
    trials:
      x: [CONVMIXER.WEIGHT_SHARE.SHARE_RATE, 4, WEIGHT_SHARE.SHARE_RATE, 2]
""")
    with pytest.raises(ConfigError, match=r"CONVMIXER.WEIGHT_SHARE.SHARE_RATE '4' and WEIGHT_SHARE.SHARE_RATE '2' "
                                          r"in trial t/x"):
        load_sweep_file(clash)


def test_the_published_study_file_still_loads():
    _, trials = load_sweep_file(os.path.join(ROOT, "studies", "mnist-spin", "study.yaml"))
    assert len(trials) == 19 * 8
    lora = next(t for t in trials if t.key == "e_relax/ws-r2-lora4-s0")
    cfg = load_config(lora.cfg_files, lora.opts)
    assert (cfg.WEIGHT_SHARE.ENABLE, cfg.WEIGHT_SHARE.SHARE_RATE, cfg.WEIGHT_SHARE.RELAX,
            cfg.WEIGHT_SHARE.RELAX_RANK) == (True, 2, "lora", 4)


def test_the_report_of_an_old_sweep_names_columns_as_today(tmp_path):
    folder = tmp_path / "sw" / "grid" / "SCOPE=both-s0"
    folder.mkdir(parents=True)
    (folder / "sweep_trial.json").write_text(json.dumps({
        "group": "grid", "name": "SCOPE=both", "seed": 0, "values": {"CONVMIXER.WEIGHT_SHARE.SCOPE": "both"},
        "cfg_files": [TINY], "opts": ["CONVMIXER.WEIGHT_SHARE.SCOPE", "both", "RNG_SEED", "0"]}))
    rows, keys = collect(str(tmp_path / "sw"))
    assert keys == ["WEIGHT_SHARE.SCOPE"] and rows[0]["WEIGHT_SHARE.SCOPE"] == "both" and rows[0]["kind"] == "WS"
