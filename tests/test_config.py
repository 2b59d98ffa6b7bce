"""Training config: presets, inheritance, overrides, key-path errors, round trips, commands, stage_at."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace

import pytest
import yaml
from click.testing import CliRunner
from unsamflow.trainer.commands.config import config as config_cmd
from unsamflow.trainer.commands.presets import presets as presets_cmd
from unsamflow.trainer.config import (
    CONFIG_VERSION,
    ConfigError,
    Stage,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    list_presets,
    load_config,
    stage_at,
    stage_starts,
)

DATASET_PRESETS = [f"{d}-{v}" for d in ("kitti", "sintel") for v in ("base", "aug", "aug-hg", "aug-hg-mf")]


def flat(d, prefix=""):
    """{'a': {'b': 1}, 'l': [{'x': 2}]} -> {'a.b': 1, 'l.0.x': 2}."""
    out = {}
    items = d.items() if isinstance(d, dict) else enumerate(d)
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict)):
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out


def diff_keys(a: TrainConfig, b: TrainConfig) -> set[str]:
    fa, fb = flat(config_to_dict(a)), flat(config_to_dict(b))
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


# --- presets ---


def test_all_expected_presets_exist_with_one_line_descriptions():
    names = list_presets()
    assert set(DATASET_PRESETS) | {"cpu-demo"} <= set(names)
    for name, description in names.items():
        assert description and "\n" not in description, name


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_every_preset_loads_validates_and_round_trips(name):
    cfg = load_config(name)
    assert cfg.name == name and cfg.config_version == CONFIG_VERSION
    data = config_to_dict(cfg)
    assert config_from_dict(json.loads(json.dumps(data))) == cfg  # JSON types only


def test_reference_schedule_and_dataset_values():
    for dataset, crop, occ_crop, thresh, vflip in (("kitti", (256, 832), (192, 640), 0.5, False),
                                                   ("sintel", (384, 832), (320, 704), 3.0, True)):
        cfg = load_config(f"{dataset}-aug-hg-mf")
        o = cfg.optim
        assert (o.lr, o.warmup, o.anneal, o.schedule) == (4e-4, 0.05, "linear", "onecycle")
        assert (o.clip, o.weight_decay) == (10.0, 1e-6)
        assert (o.batch_size, o.iterations, o.betas[1]) == (8, 200_000, 0.999)
        s0, s1, s2 = cfg.stages
        assert (s0.start, s0.photometric, s0.spatial, s0.occlusion) == (0.0, "l1_ssim", False, False)
        assert (s1.start, s1.photometric, s1.spatial, s1.occlusion) == (0.25, "census", True, True)
        assert (s0.w_ar, s1.w_ar) == (0.0, 0.02)
        assert (s1.key_aug, s1.w_hg) == (False, 0.0)
        # occlusion: range map in stage 0, forward-backward from stage 1 (reference occ_from_back false)
        occ = (cfg.loss.occlusion, s0.occ_method, s1.occ_method, s2.occ_method)
        assert occ == ("range", None, "fb", "fb")
        assert (s2.start, s2.photometric, s2.key_aug, s2.w_ar, s2.w_hg) == (0.75, "census", True, 0.1, 0.1)
        assert (cfg.loss.l1_weight, cfg.loss.ssim_weight, cfg.loss.smooth_weight) == (0.15, 0.85, 0.0)
        assert cfg.loss.hg.ransac_thresh == thresh and cfg.loss.hg.num_regions == 6
        assert (cfg.loss.aug.eps, cfg.loss.aug.q) == (0.0, 1.0)
        assert cfg.data.crop == crop and cfg.augment.occlusion_crop == occ_crop
        # the reference zooms whole KITTI frames to 256 x 832 (no crop); Sintel takes random crops
        assert cfg.data.resize == ((256, 832) if dataset == "kitti" else None)
        assert cfg.augment.spatial.hflip and cfg.augment.spatial.vflip == vflip
        assert cfg.model.mask_features
    kitti, sintel = load_config("kitti-base"), load_config("sintel-base")
    # the reference's two data phases (raw frames, then the benchmark sets), method notes section 5
    assert kitti.data.dataset == "kitti-raw > 0.5 kitti-2015-multiview+kitti-2012-multiview"
    assert sintel.data.dataset == "sintel-raw > 0.5 sintel-clean+sintel-final"
    assert kitti.augment.spatial.zoom == (1.0, 1.4, 0.99, 1.01)
    assert kitti.augment.spatial.squeeze == (1, 1, 1, 1)
    assert sintel.augment.spatial.zoom == (1.0, 1.5, 0.985, 1.015)
    assert sintel.augment.spatial.rotate == (-0.2, 0.2, -0.015, 0.015)
    assert sintel.augment.spatial.translate == (0.2, 0.015)


@pytest.mark.parametrize("dataset", ["kitti", "sintel"])
def test_inheritance_changes_exactly_the_expected_keys(dataset):
    base = load_config(f"{dataset}-base")
    common = {"name", "description"}
    aug = {"stages.2.key_aug", "stages.2.w_ar"}
    assert diff_keys(base, load_config(f"{dataset}-aug")) == common | aug
    assert diff_keys(base, load_config(f"{dataset}-aug-hg")) == common | aug | {"stages.2.w_hg"}
    full = load_config(f"{dataset}-aug-hg-mf")
    assert diff_keys(base, full) == common | aug | {"stages.2.w_hg", "model.mask_features"}
    assert base.stages[2].w_ar == 0.02 and not base.stages[2].key_aug and not base.model.mask_features


def test_kitti_and_sintel_differ_only_in_dataset_values():
    keys = diff_keys(load_config("kitti-base"), load_config("sintel-base"))
    assert keys == {
        "name", "description", "data.dataset", "data.resize", "data.crop", "data.val_dataset",
        "loss.hg.ransac_thresh", "augment.spatial.zoom", "augment.spatial.squeeze", "augment.spatial.rotate",
        "augment.spatial.translate", "augment.spatial.vflip", "augment.occlusion_crop",
    }


def test_cpu_demo_is_the_full_recipe_shrunk():
    demo, full = load_config("cpu-demo"), load_config("kitti-aug-hg-mf")
    assert demo.device == "cpu" and demo.data.dataset == "synthetic" and demo.model.mask_features
    # the same stages, except that the short demo keeps the range-map occlusion (see cpu-demo.yaml)
    assert [s.occ_method for s in demo.stages] == [None, "range", "range"]
    same = [replace(s, occ_method=None) for s in demo.stages]
    assert same == [replace(s, occ_method=None) for s in full.stages]
    assert demo.optim.iterations <= 500 and demo.optim.batch_size <= 4
    assert demo.data.crop[0] * demo.data.crop[1] <= 128 * 192
    # the cache must fill well before stage 2 ends (one object per sample per step at most)
    assert demo.augment.key_objects.cache_size <= demo.optim.batch_size * 0.25 * demo.optim.iterations / 4


# --- overrides ---


def test_overrides_nested_list_elements_and_values():
    cfg = load_config("kitti-aug", [
        "data.crop=[128,384]", "stages.1.w_ar=0.05", "optim.lr=2e-4", "augment.spatial.zoom=[1,1.2,1,1]",
        "data.roots.kitti2015=/data/KITTI", "data.masks={kitti2015: /masks/kitti}", "amp=off", "device=cuda",
        "augment.appearance.gamma=[0.7, 1.5]", "data.val_dataset=null", "augment.occlusion_crop=[64,128]",
    ])
    assert cfg.data.crop == (128, 384) and cfg.stages[1].w_ar == 0.05 and cfg.stages[2].w_ar == 0.1
    assert cfg.optim.lr == 2e-4 and isinstance(cfg.optim.lr, float)  # YAML reads "2e-4" as a string
    assert cfg.augment.spatial.zoom == (1.0, 1.2, 1.0, 1.0)
    assert cfg.data.roots == {"kitti2015": "/data/KITTI"} and cfg.data.masks == {"kitti2015": "/masks/kitti"}
    assert (cfg.amp, cfg.device, cfg.augment.appearance.gamma) == ("off", "cuda", (0.7, 1.5))
    assert cfg.data.val_dataset is None
    last_wins = load_config("kitti-aug", ["stages.2.w_ar=0.3", "stages.2.w_ar=0.4"])
    assert last_wins.stages[2].w_ar == 0.4


def test_a_plain_path_is_the_root_and_masks_of_every_component():
    from unsamflow.trainer.data import parse_mix, parse_phases
    from unsamflow.trainer.data.mixes import lookup

    cfg = load_config("sintel-aug", ["data.roots=/data/Sintel", "data.masks=/masks/sintel"])
    assert cfg.data.roots == {"*": "/data/Sintel"} and cfg.data.masks == {"*": "/masks/sintel"}
    for phase in parse_phases(cfg.data.dataset):  # sintel-raw, then sintel-clean + sintel-final
        for part in phase.parts:
            assert str(lookup(cfg.data.roots, part, "roots")) == "/data/Sintel"
    specific = {"*": "/all", "sintel-final": "/final"}
    clean, final = parse_mix("sintel-clean+sintel-final")
    assert str(lookup(specific, clean, "roots")) == "/all"
    assert str(lookup(specific, final, "roots")) == "/final"


@pytest.mark.parametrize("override, message", [
    ("optim.lr=-1", "optim.lr: must be > 0, got -1"),
    ("loss.occlusion=x", "loss.occlusion: must be one of 'range', 'fb', got 'x'"),
    ("data.foo=1", "data.foo: unknown key; known keys of data: dataset, roots"),
    ("loss.hg.bar=1", "loss.hg.bar: unknown key; known keys of loss.hg: ransac_thresh"),
    ("augment.spatial.bar=1", "augment.spatial.bar: unknown key; known keys of augment.spatial: zoom"),
    ("stages.1.foo=1", "stages.1.foo: unknown key; known keys of stages.1: start"),
    ("zzz=1", "zzz: unknown key; known keys of the config: config_version"),
    ("stages.1.w_ar=a", "stages.1.w_ar: must be a number, got 'a'"),
    ("stages.5.w_ar=1", "stages.5: no such element; stages has indices 0..2"),
    ("stages.x.w_ar=1", "stages.x: no such element"),
    ("optim.lr.x=1", "optim.lr: is a value (0.0004), not a section"),
    ("data.crop=[250,832]", "data.crop: must be positive multiples of 64"),
    ("data.crop=[64]", "data.crop: must be a list of 2 integers, got [64]"),
    ("data.crop=[128,256]", "augment.occlusion_crop: must fit in data.crop [128, 256], got [192, 640]"),
    ("data.resize=[200,832]", "data.crop: must fit in data.resize [200, 832], got [256, 832]"),
    ("data.resize=[0,832]", "data.resize: must be positive, got [0, 832]"),
    ("data.hflip=maybe", "data.hflip: must be true or false, got 'maybe'"),
    ("data.dataset=kitti-2015-multiview+no", "data.dataset: dataset mix 'kitti-2015-multiview+no': unknown"),
    ("data.roots=3", "data.roots: must be a mapping of strings to strings, got 3"),
    ("model.num_levels=9", "model.num_levels: must be in [1, 6], got 9"),
    ("optim.iterations=1.5", "optim.iterations: must be an integer, got 1.5"),
    ("optim.warmup=1", "optim.warmup: must be in [0, 1), got 1"),
    ("optim.betas=[0.9, 1.0]", "optim.betas: must be in [0, 1), got [0.9, 1]"),
    ("augment.appearance.hue=0.7", "augment.appearance.hue: must be in [0, 0.5], got 0.7"),
    ("augment.spatial.zoom=[1.4,1.0,1,1]", "augment.spatial.zoom: each (min, max) pair must have min <= max"),
    ("augment.key_objects.cache_size=0", "augment.key_objects.cache_size: must be >= 1, got 0"),
    ("stages.0.start=0.1", "stages.0.start: the first stage must start at 0, got 0.1"),
    ("stages.2.start=0.2", "stages.2.start: must be after stages.1.start (0.25), got 0.2"),
    ("stages.1.start=1", "stages.1.start: must be in [0, 1), got 1"),
    ("stages.1.photometric=ssim", "stages.1.photometric: must be one of 'l1_ssim', 'census', got 'ssim'"),
    ("stages.2.occlusion=false", "stages.2.key_aug: needs occlusion true"),
    ("data.max_key_objects=0", "stages.2.key_aug: needs data.max_key_objects > 0"),
    ("amp=fp32", "amp: must be one of 'off', 'bf16', 'fp16', got 'fp32'"),
    ("stages=3", "stages: must be a list of mappings, got 3"),
    ("stages=[]", "stages: must list at least one stage"),
    ("model=x", "model: must be a mapping of keys to values, got 'x'"),
    ("config_version=2", "config_version: this config has version 2; this unsamflow reads version 1"),
    ("optim.lr", "override 'optim.lr': expected key.sub=value"),
    ("=1", "expected key.sub=value"),
    ("data..crop=1", "expected key.sub=value"),
])
def test_bad_values_name_the_key_path(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("kitti-aug", [override])
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)  # BadInputError: the CLIs print it as one line


def test_stage_starts_scale_with_short_runs():
    """Stage starts are fractions: optim.iterations=2 is a valid run; a stage shorter than one iteration
    is skipped rather than refused."""
    from unsamflow.trainer.config import stage_at, stage_starts

    cfg = load_config("kitti-base", ["optim.iterations=2"])
    assert stage_starts(cfg) == [0, 0, 2]  # 0.25 * 2 rounds to 0: stage 0 is skipped
    assert [stage_at(cfg, it)[0] for it in (0, 1, 2)] == [1, 1, 2]
    assert stage_starts(load_config("kitti-base", ["optim.iterations=8"])) == [0, 2, 6]


def test_config_error_pickles_with_its_message():
    with pytest.raises(ConfigError) as info:
        load_config("kitti-base", ["data.foo=1"])
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.path == "data.foo"


def test_direct_construction_is_validated_too():
    assert TrainConfig().stages == (Stage(),)
    with pytest.raises(ConfigError, match="^w_ar: must be >= 0, got -1$"):
        Stage(w_ar=-1)
    with pytest.raises(ConfigError, match=r"^optim\.lr: must be > 0"):
        TrainConfig(optim={"lr": 0})
    assert TrainConfig(data={"crop": [64, 128]}, augment={"occlusion_crop": [64, 64]}).data.crop == (64, 128)


# --- files, inheritance ---


def test_yaml_file_with_base_patching_a_list(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "base: sintel-aug\ndescription: mine\noptim: {iterations: 1000}\nstages:\n  1: {w_ar: 0.03}\n"
    )
    (tmp_path / "child.yml").write_text("base: mine.yaml\nseed: 7\n")  # relative to the file
    cfg = load_config(tmp_path / "child.yml", ["stages.0.photometric=census"])
    assert (cfg.name, cfg.seed, cfg.optim.iterations) == ("child", 7, 1000)
    assert [s.w_ar for s in cfg.stages] == [0.0, 0.03, 0.1] and cfg.stages[0].photometric == "census"
    assert cfg.data.crop == (384, 832)  # from sintel-base, two levels up


def test_inheritance_cycle_and_bad_bases_fail(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle: a -> b -> a"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle: self -> self"):
        load_config(str(tmp_path / "self.yaml"))
    (tmp_path / "c.yaml").write_text("base: no-such-preset\n")
    with pytest.raises(ConfigError, match="unknown preset 'no-such-preset'; known presets: cpu-demo"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: kitti-base\nstages:\n  5: {w_ar: 1}\n")
    with pytest.raises(ConfigError, match=r"stages\.5: no such element to patch; the base has indices 0..2"):
        load_config(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "e.yaml")
    (tmp_path / "f.yaml").write_text("data: {crop: [256, 832\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "f.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown preset 'kitti'; known presets: "):
        load_config("kitti")


# --- dict round trip (checkpoints) ---


def test_round_trip_and_version_check():
    cfg = load_config("sintel-aug-hg-mf", ["data.roots.sintel=/d", "augment.appearance.gamma=[0.8,1.2]"])
    data = config_to_dict(cfg)
    assert isinstance(data["data"]["crop"], list) and isinstance(data["stages"], list)
    assert config_from_dict(data) == cfg
    with pytest.raises(ConfigError, match="config_version: this config has version 0; this unsamflow reads"):
        config_from_dict({**data, "config_version": 0})
    with pytest.raises(ConfigError, match="config_version: this config has version null"):
        config_from_dict({k: v for k, v in data.items() if k != "config_version"})
    with pytest.raises(ConfigError, match="loss.bogus: unknown key"):
        config_from_dict({**data, "loss": {**data["loss"], "bogus": 1}})
    with pytest.raises(ConfigError, match="must be a mapping"):
        config_from_dict(["not", "a", "dict"])  # type: ignore[arg-type]


# --- stages ---


def test_stage_at_boundaries():
    cfg = load_config("kitti-base")
    assert stage_starts(cfg) == [0, 50_000, 150_000]
    cases = [(0, 0), (49_999, 0), (50_000, 1), (149_999, 1), (150_000, 2), (199_999, 2), (10**6, 2)]
    for it, expected in cases:
        index, stage = stage_at(cfg, it)
        assert index == expected and stage is cfg.stages[expected], it
    demo = load_config("cpu-demo")
    n = demo.optim.iterations
    assert [stage_at(demo, i)[0] for i in (0, n // 4 - 1, n // 4, 3 * n // 4 - 1, 3 * n // 4, n - 1)] == \
        [0, 0, 1, 1, 2, 2]
    with pytest.raises(ConfigError, match="iteration must be >= 0"):
        stage_at(cfg, -1)


# --- commands ---


def test_presets_command_lists_names_and_descriptions():
    result = CliRunner().invoke(presets_cmd, [])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == len(list_presets())
    for name, description in list_presets().items():
        assert any(line.split()[0] == name and line.endswith(description) for line in lines)
    assert "Example" in CliRunner().invoke(presets_cmd, ["--help"]).output


def test_config_command_prints_yaml_and_json_that_load_back(tmp_path):
    runner = CliRunner()
    args = ["--preset", "kitti-aug-hg", "stages.1.w_ar=0.05", "data.crop=[256,768]"]
    expected = load_config("kitti-aug-hg", args[2:])
    result = runner.invoke(config_cmd, args)
    assert result.exit_code == 0, result.output
    assert config_from_dict(yaml.safe_load(result.output)) == expected
    (tmp_path / "resolved.yaml").write_text(result.output)  # a printed config is a valid config file
    again = load_config(tmp_path / "resolved.yaml")
    assert diff_keys(again, expected) == {"name"}
    result = runner.invoke(config_cmd, [*args, "--json"])
    assert result.exit_code == 0 and config_from_dict(json.loads(result.output)) == expected
    assert "python -m unsamflow.trainer config --preset" in runner.invoke(config_cmd, ["--help"]).output


def test_cli_group_reports_config_errors_as_one_line():
    from unsamflow.trainer.cli import main

    result = CliRunner().invoke(main, ["config", "--preset", "kitti-base", "optim.lr=-1"])
    assert result.exit_code == 2
    assert "error: optim.lr: must be > 0, got -1" in result.output
    assert CliRunner().invoke(main, ["presets"]).exit_code == 0


def test_overridden_training_data_does_not_validate_silently_on_the_presets_set():
    with pytest.raises(ConfigError, match=r"data.val_dataset: the preset validates on 'synthetic' but the "
                                          r"overrides train on 'sintel-clean'"):
        load_config("cpu-demo", ["data.dataset=sintel-clean"])
    off = load_config("cpu-demo", ["data.dataset=sintel-clean", "data.val_dataset=null"])
    assert off.data.val_dataset is None
    assert load_config("cpu-demo", ["data.dataset=sintel-clean", "data.val_dataset=sintel-final"])
    assert load_config("cpu-demo", ["data.dataset=synthetic*2"]).data.val_dataset == "synthetic"  # same data
