"""The digest of a config file the main job records with its settings (qarep_dense.demo.config_digest)."""
import pytest

from qarep_dense.demo.config_digest import config_digest


def _write(folder, files):
    for name, text in files.items():
        (folder / name).write_text(text)


def test_a_value_in_a_base_changes_the_digest_and_a_comment_does_not(tmp_path):
    _write(tmp_path, {"base.toml": "# the recipe\n[optim]\nlr0 = 0.01\n",
                      "child.toml": 'base = "base.toml"\n[model]\nblock = "repvgg"\n'})
    first = config_digest(tmp_path / "child.toml")
    (tmp_path / "base.toml").write_text("# the recipe, reworded\n\n[optim]\nlr0 = 0.01\n")
    assert config_digest(tmp_path / "child.toml") == first
    (tmp_path / "base.toml").write_text("# the recipe\n[optim]\nlr0 = 0.04\n")
    assert config_digest(tmp_path / "child.toml") != first


def test_mmengine_bases_are_followed_and_package_bases_skipped(tmp_path):
    _write(tmp_path, {"model.py": "model = dict(type='EncoderDecoder')\n",
                      "top.py": "_base_ = ['./model.py', 'mmseg::_base_/default_runtime.py']\nlr = 0.01\n"})
    first = config_digest(tmp_path / "top.py")
    (tmp_path / "model.py").write_text("model = dict(type='EncoderDecoder', pretrained=None)\n")
    assert config_digest(tmp_path / "top.py") != first


def test_a_missing_base_is_named(tmp_path):
    _write(tmp_path, {"child.toml": 'base = "gone.toml"\n'})
    with pytest.raises(FileNotFoundError, match="gone.toml: config file not found"):
        config_digest(tmp_path / "child.toml")
