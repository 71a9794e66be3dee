"""Configs: presets load, overrides apply with types checked, bad keys and values are refused."""
import pytest

from recon.config import ReconConfig, list_presets, load_config, merge, parse_override
from recon.errors import ReconError
from recon.pipeline import parse_duration


def test_presets_load():
    names = list_presets()
    assert {"default", "fast", "vanilla"} <= set(names)
    for n in names:
        cfg = load_config(n)
        assert isinstance(cfg, ReconConfig)
        assert cfg.preset == n


def test_fast_is_cheaper_than_default():
    fast, default = load_config("fast"), load_config("default")
    assert fast.train.time_budget < default.train.time_budget
    assert fast.train.iterations < default.train.iterations


def test_override_sets_nested_field_with_type():
    cfg = load_config("fast", ["train.iterations=123", "data.views=4", "train.floater_steps=[0.1, 0.2]"])
    assert cfg.train.iterations == 123
    assert cfg.data.views == "4"
    assert cfg.train.floater_steps == [0.1, 0.2]


def test_override_int_into_float_field():
    cfg = load_config(None, ["train.time_budget=60"])
    assert cfg.train.time_budget == 60.0 and isinstance(cfg.train.time_budget, float)


@pytest.mark.parametrize("bad", ["train.nope=1", "nosection.x=1", "train.iterations=abc", "train.iterations",
                                 "train.sh_degree=true"])
def test_bad_overrides_are_refused(bad):
    with pytest.raises(ReconError):
        load_config(None, [bad])


def test_unknown_preset_names_choices():
    with pytest.raises(ReconError, match="default"):
        load_config("does-not-exist")


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ReconError, match="x.yaml"):
        load_config(p)
    p.write_text("train:\n  iterationz: 3\n")
    with pytest.raises(ReconError, match="iterationz"):
        load_config(p)


def test_merge_keeps_other_fields():
    base = ReconConfig()
    cfg = merge(base, parse_override("train.iterations=7"))
    assert cfg.train.iterations == 7
    assert cfg.train.lr_means == base.train.lr_means
    assert base.train.iterations != 7  # the original is untouched


@pytest.mark.parametrize("text,secs", [("90", 90), ("90s", 90), ("5m", 300), ("1h", 3600), ("1m30s", 90)])
def test_parse_duration(text, secs):
    assert parse_duration(text) == secs


@pytest.mark.parametrize("text", ["", "5 minutes", "m5", "-3s"])
def test_parse_duration_refuses(text):
    with pytest.raises(ReconError):
        parse_duration(text)
