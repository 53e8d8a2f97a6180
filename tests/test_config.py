"""Typed TOML configs: inheritance, overrides, and errors that name the file and the key."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import torch

from qarep_dense.config import ConfigError, config_from_dict, config_to_dict, load_config, parse_override
from qarep_dense.tasks.classification import ClsConfig

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Optim:
    lr: float = 0.1
    milestones: tuple[int, ...] = (30, 60)
    mode: Literal["normal", "custom"] = "normal"
    clip: float | None = None
    name: str = "sgd"


@dataclass
class Root:
    optim: Optim = field(default_factory=Optim)
    epochs: int = 10
    amp: bool = True


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_inheritance_deep_merges_and_overrides_apply_last(tmp_path):
    write(tmp_path / "base" / "common.toml", 'epochs = 5\n[optim]\nlr = 0.5\nname = "base"\n')
    child = write(tmp_path / "child.toml", 'base = "base/common.toml"\n[optim]\nlr = 2\n')
    cfg = load_config(child, Root)
    assert cfg.epochs == 5                       # from the base
    assert cfg.optim.name == "base"              # sibling key of an overridden table survives the merge
    assert cfg.optim.lr == 2.0 and isinstance(cfg.optim.lr, float)  # int coerced to the float field
    assert cfg.optim.milestones == (30, 60)      # dataclass default
    cfg = load_config(child, Root, ["optim.lr=0.25", "amp=false", "optim.milestones=[1, 2, 3]",
                                    "optim.clip=1.5", "optim.mode=custom", "epochs=7"])
    assert (cfg.optim.lr, cfg.amp, cfg.optim.milestones, cfg.optim.clip, cfg.optim.mode, cfg.epochs) == \
        (0.25, False, (1, 2, 3), 1.5, "custom", 7)
    # later overrides win; comma lists and none parse by the field type
    cfg = load_config(child, Root, ["epochs=1", "epochs=2", "optim.milestones=4,5", "optim.clip=none"])
    assert (cfg.epochs, cfg.optim.milestones, cfg.optim.clip) == (2, (4, 5), None)


def test_multiple_bases_merge_in_order(tmp_path):
    write(tmp_path / "a.toml", "epochs = 1\n[optim]\nlr = 1.0\n")
    write(tmp_path / "b.toml", "epochs = 2\n")
    cfg = load_config(write(tmp_path / "c.toml", 'base = ["a.toml", "b.toml"]\n'), Root)
    assert (cfg.epochs, cfg.optim.lr) == (2, 1.0)


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path / "x.toml", "[optim]\nlrr = 0.1\n")
    with pytest.raises(ConfigError, match=r"x\.toml: unknown key 'optim\.lrr' \(did you mean 'optim\.lr'\?\)"):
        load_config(path, Root)
    # a key put in the wrong table is suggested by its last component
    path = write(tmp_path / "y.toml", "lr = 0.1\n")
    with pytest.raises(ConfigError, match=r"y\.toml: unknown key 'lr' \(did you mean 'optim\.lr'\?\)"):
        load_config(path, Root)


def test_error_in_a_base_names_the_base_file(tmp_path):
    write(tmp_path / "parent.toml", "[optim]\nmomentum = 0.9\n")
    child = write(tmp_path / "child.toml", 'base = "parent.toml"\nepochs = 3\n')
    with pytest.raises(ConfigError, match=r"parent\.toml: unknown key 'optim\.momentum'"):
        load_config(child, Root)
    child = write(tmp_path / "orphan.toml", 'base = "missing.toml"\n')
    with pytest.raises(ConfigError, match=r"missing\.toml: config file not found \(base of .*orphan\.toml\)"):
        load_config(child, Root)


@pytest.mark.parametrize("text, pattern", [
    ('[optim]\nlr = "abc"\n', r"key 'optim\.lr' expects float; got str 'abc'"),
    ("epochs = true\n", r"key 'epochs' expects int; got bool True"),
    ("epochs = 2.5\n", r"key 'epochs' expects int; got float 2\.5"),
    ('[optim]\nmode = "fancy"\n', r"key 'optim\.mode' expects one of 'normal', 'custom'; got str 'fancy'"),
    ('[optim]\nmilestones = [1, "a"]\n', r"key 'optim\.milestones' expects tuple\[int, \.\.\.\]"),
    ("optim = 3\n", r"key 'optim' is a table; got int 3"),
])
def test_wrong_type_names_file_and_key(tmp_path, text, pattern):
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError, match=r"bad\.toml: " + pattern):
        load_config(path, Root)


def test_invalid_toml_and_cycles_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"broken\.toml: invalid TOML"):
        load_config(write(tmp_path / "broken.toml", "epochs = = 3\n"), Root)
    write(tmp_path / "p.toml", 'base = "q.toml"\n')
    write(tmp_path / "q.toml", 'base = "p.toml"\n')
    with pytest.raises(ConfigError, match=r"inheritance cycle"):
        load_config(tmp_path / "p.toml", Root)


@pytest.mark.parametrize("item, pattern", [
    ("optim.lrr=0.1", r"--set optim\.lrr=0\.1: unknown key 'optim\.lrr' \(did you mean 'optim\.lr'\?\)"),
    ("epochs=abc", r"--set epochs=abc: key 'epochs' expects int; cannot parse 'abc'"),
    ("amp=maybe", r"--set amp=maybe: key 'amp' expects bool"),
    ("optim.mode=fancy", r"--set optim\.mode=fancy: key 'optim\.mode' expects one of 'normal', 'custom'"),
    ("optim=1", r"--set optim=1: key 'optim' is a table"),
    ("epochs.x=1", r"--set epochs\.x=1: key 'epochs' is not a table"),
    ("optim.lr", r"--set optim\.lr: expected KEY=VALUE"),
])
def test_override_errors(tmp_path, item, pattern):
    path = write(tmp_path / "ok.toml", "epochs = 1\n")
    with pytest.raises(ConfigError, match=pattern):
        load_config(path, Root, [item])


def test_parse_override_splits_at_first_equals():
    assert parse_override(" data.root = a=b ") == ("data.root", "a=b")


def test_config_dict_round_trip_is_plain(tmp_path):
    cfg = load_config(write(tmp_path / "c.toml", "[optim]\nmilestones = [3]\n"), Root, ["optim.clip=0.5"])
    plain = config_to_dict(cfg)
    assert plain == {"optim": {"lr": 0.1, "milestones": [3], "mode": "normal", "clip": 0.5, "name": "sgd"},
                     "epochs": 10, "amp": True}
    json.dumps(plain)  # JSON-safe
    torch.save({"config": plain}, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["config"] == plain
    assert config_from_dict(plain, Root) == cfg


def test_shipped_cls_configs_load_with_their_inheritance():
    configs = sorted((REPO / "configs" / "cls").glob("*.toml"))
    assert len(configs) >= 9
    loaded = {p.stem: load_config(p, ClsConfig) for p in configs}
    a0 = loaded["a0_repvgg_imagenet"]
    assert (a0.model.block, a0.optim.l2, a0.optim.epochs, a0.data.batch_size) == ("repvgg", "custom", 120, 256)
    agg = loaded["digits_repvgg_aggressive"]
    assert (agg.model.arch, agg.optim.lr, agg.optim.weight_decay, agg.optim.l2) == ("A0h", 0.4, 5e-4, "custom")
    assert loaded["digits_qarepvgg"].optim.l2 == "normal" and loaded["b1g4_qarepvgg_imagenet"].model.arch == "B1g4"


def test_cross_field_checks_name_the_file_and_key(tmp_path):
    path = write(tmp_path / "m.toml", '[model]\narch = "Z9"\n')
    with pytest.raises(ConfigError, match=r"m\.toml: model\.arch 'Z9' is not one of"):
        load_config(path, ClsConfig)
    path = write(tmp_path / "d.toml", '[data]\nkind = "digits"\n')
    with pytest.raises(ConfigError, match=r"d\.toml: data\.kind 'digits' needs model\.num_classes = 10"):
        load_config(path, ClsConfig)
    with pytest.raises(ConfigError, match=r"repopt\.hs_checkpoint is set but model\.block is 'qarepvgg'"):
        load_config(write(tmp_path / "r.toml", ""), ClsConfig, ["repopt.hs_checkpoint=hs.pt"])


def test_cross_field_check_broken_by_an_override_blames_that_override(tmp_path):
    path = write(tmp_path / "ok.toml", '[model]\narch = "A0"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, ClsConfig, ["optim.epochs=3", "model.arch=zzz", "train.seed=1"])
    assert str(err.value).startswith("--set model.arch=zzz: model.arch 'zzz' is not one of")
    assert "ok.toml" not in str(err.value)
    # a check across two keys: the override that completes the bad combination is named
    with pytest.raises(ConfigError, match=r"^--set model\.num_classes=3: data\.kind 'digits' needs"):
        load_config(write(tmp_path / "d.toml", '[data]\nkind = "digits"\n[model]\nnum_classes = 10\n'), ClsConfig,
                    ["optim.lr=0.2", "model.num_classes=3"])
    # the file itself wrong, overrides innocent: the file keeps the blame
    with pytest.raises(ConfigError, match=r"^.*m\.toml: model\.arch 'Z9' is not one of"):
        load_config(write(tmp_path / "m.toml", '[model]\narch = "Z9"\n'), ClsConfig, ["optim.lr=0.2"])
