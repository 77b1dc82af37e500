import re
from pathlib import Path

import pytest

from clinkd.config import (
    ConfigError,
    RecipeConfig,
    apply_overrides,
    dump_config,
    flat_key,
    load_config,
    parse_override,
    preset_names,
)

ROOT = Path(__file__).resolve().parents[1]
ENGINE_FOLDERS = ("accelerate", "deepspeed")  # launcher configs, not recipes
CONFIGS = sorted(p for p in ROOT.glob("configs/**/*.yaml") if p.parent.name not in ENGINE_FOLDERS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.name))
def test_every_shipped_config_and_preset_loads(path, tmp_path):
    cfg = load_config(path)
    (tmp_path / "resolved.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "resolved.yaml") == cfg  # what a run saves reproduces it
    for preset in preset_names(path):
        assert load_config(path, preset=preset) != cfg, preset  # a preset changes something


def test_launcher_configs_parse():
    import json

    import yaml

    for path in ROOT.glob("configs/accelerate/*.yaml"):
        assert yaml.safe_load(path.read_text())["distributed_type"], path
    stages = {
        path.name: json.loads(path.read_text())["zero_optimization"]["stage"]
        for path in ROOT.glob("configs/deepspeed/*.json")
    }
    assert stages == {"zero2.json": 2, "zero3.json": 3, "zero3_offload.json": 3}


def test_default_config_is_shipped():
    assert any(p.name == "default.yaml" for p in CONFIGS)


def test_overrides_parse_yaml_values():
    assert parse_override("train.lr=1e-3") == (["train", "lr"], 1e-3)
    assert parse_override("model.path=null") == (["model", "path"], None)
    tree = apply_overrides({}, ["predict.max_new_tokens.VG=12", "name=x"])
    assert tree == {"predict": {"max_new_tokens": {"VG": 12}}, "name": "x"}


def test_override_wins_over_preset_and_file():
    path = Path(__file__).resolve().parents[1] / "configs/default.yaml"
    cfg = load_config(path, ["train.batch_size=3"], preset="quick")
    assert cfg.train.batch_size == 3
    assert cfg.model.size == "xs"  # from the preset
    assert cfg.name == "quick"


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr=abc", "train.lr"),
        ("train.bogus=1", "train.bogus"),
        ("model.size=xxl", "model.size"),
        ("predict.max_new_tokens.XX=3", "predict.max_new_tokens"),
    ],
)
def test_errors_name_the_offending_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_override_into_a_value_is_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: run\n")
    with pytest.raises(ConfigError, match="name is a value"):
        load_config(path, ["name.x=1"])
    with pytest.raises(ConfigError, match="name: Input should be a valid string"):
        load_config(None, ["name.x=1"])


def test_unknown_preset_and_missing_file(tmp_path):
    path = Path(__file__).resolve().parents[1] / "configs/default.yaml"
    with pytest.raises(ConfigError, match="preset 'nope'"):
        load_config(path, preset="nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "loop.yaml").symlink_to("loop.yaml")
    with pytest.raises(ConfigError, match="loop.yaml is a symlink loop"):
        load_config(tmp_path / "loop.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=0.01", "model.init=scratch", "model.size=xs"])
    saved = tmp_path / "resolved.yaml"
    saved.write_text(dump_config(cfg))
    assert load_config(saved) == cfg


def test_the_code_defaults_are_the_default_recipe():
    assert RecipeConfig() == load_config(ROOT / "configs/default.yaml")
    cfg = RecipeConfig()
    assert (cfg.distill.enabled, cfg.reflect.enabled, cfg.select.method, cfg.rope.name) == (True, True, "sasg", "mcg")


def test_presets_are_built_in_and_a_recipe_can_add_its_own(tmp_path):
    import yaml

    assert "presets" not in yaml.safe_load((ROOT / "configs/default.yaml").read_text(encoding="utf-8"))
    quick = load_config(None, preset="quick")
    assert (quick.name, quick.model.size, quick.distill.enabled, quick.select.method) == ("quick", "xs", True, "sasg")
    assert quick == load_config(ROOT / "configs/default.yaml", preset="quick")
    path = tmp_path / "r.yaml"
    path.write_text("presets:\n  tiny: {model: {init: scratch, size: xs}}\n", encoding="utf-8")
    assert load_config(path, preset="tiny").model.size == "xs"
    assert preset_names(path) == ["quick", "tiny"]


def _readme_rows() -> list[tuple[list[str], list[str]]]:
    """(keys, defaults) of every row of the README's configuration table, brace groups expanded."""
    section = (
        (ROOT / "README.md").read_text(encoding="utf-8").split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    )
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            keys_cell, defaults_cell = line.split(" | ")[:2]
            keys = [key for text in re.findall(r"`([^`]+)`", keys_cell) for key in _expand(text)]
            rows.append((keys, re.findall(r"`([^`]+)`", defaults_cell)))
    return rows


def _expand(key: str) -> list[str]:
    """``a.{b,c}`` → ``["a.b", "a.c"]``."""
    match = re.fullmatch(r"(.*)\{(.*)\}", key)
    return [match.group(1) + name for name in match.group(2).split(",")] if match else [key]


def test_the_readme_configuration_table_matches_the_code_defaults():
    defaults = RecipeConfig().model_dump(mode="json")
    rows = _readme_rows()
    for keys, values in rows:
        assert len(keys) == len(values), f"README row {keys}: {len(values)} defaults for {len(keys)} keys"
        for key, text in zip(keys, values):
            node = defaults
            for part in key.split("."):
                node = node[part]
            assert parse_override(f"{key}={text}")[1] == node, f"README says {key} = {text}, the code says {node!r}"
    assert {key.split(".")[0] for keys, _ in rows for key in keys} == set(RecipeConfig.model_fields)


# Numeric keys whose range depends on the model: checked against it when the model is built.
MODEL_BOUNDED = {
    "train.retrieval_layer": "negative counts from the top; RetrievalSupervision checks it against the text layers",
    "distill.ignore_index": "a label no token id takes: any negative number",
}


def _numeric_leaves(model_class, prefix: str = ""):
    """``(dotted key, bound metadata, int or float)`` of every number-valued key under ``model_class`` (a dict of
    numbers counts as one key: its values' bounds)."""
    import types
    import typing

    from pydantic import BaseModel
    from pydantic.dataclasses import is_pydantic_dataclass

    fields = model_class.model_fields if issubclass(model_class, BaseModel) else model_class.__pydantic_fields__
    for name, field in fields.items():
        key = flat_key(f"{prefix}{name}")
        kind = field.annotation
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None: X
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        if isinstance(kind, type) and (issubclass(kind, BaseModel) or is_pydantic_dataclass(kind)):
            yield from _numeric_leaves(kind, f"{prefix}{name}.")
        elif kind in (int, float):
            yield key, field.metadata, kind
        elif typing.get_origin(kind) is dict:
            value_type, *infos = typing.get_args(typing.get_args(kind)[1]) or (typing.get_args(kind)[1],)
            if value_type in (int, float):
                yield key, [item for info in infos for item in info.metadata], value_type


def _dict_key(key: str) -> str:
    """``key`` with the first entry of its default dict appended when it is a dict of numbers."""
    node = RecipeConfig().model_dump()
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else None  # under a null section (train.lora): no default
    return f"{key}.{next(iter(node))}" if isinstance(node, dict) else key


NUMERIC_KEYS = sorted(_numeric_leaves(RecipeConfig), key=lambda leaf: leaf[0])


def test_the_walk_finds_every_kind_of_numeric_key():
    keys = {key for key, _, _ in NUMERIC_KEYS}
    assert {
        "seed",
        "train.epochs",
        "predict.max_new_tokens",
        "pretrain.tasks",
        "data.synth.turns",
        "data.max_image_pixels",
    } <= keys
    assert {
        "distill.alpha",
        "distill.temperature",
        "distill.jsd_beta",
        "distill.chunk_size",
    } <= keys  # DistillConfig.loss, flat


@pytest.mark.parametrize("key, metadata, kind", NUMERIC_KEYS, ids=[leaf[0] for leaf in NUMERIC_KEYS])
def test_every_numeric_key_has_bounds_and_refuses_values_outside_them(key, metadata, kind):
    import annotated_types

    key = _dict_key(key)
    for value in (".nan", ".inf", "-.inf"):
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_config(None, [f"{key}={value}"])
    lower = [item for item in metadata if isinstance(item, (annotated_types.Gt, annotated_types.Ge))]
    if key in MODEL_BOUNDED:
        return
    assert lower, f"{key} has no lower bound"
    below = lower[0].gt if isinstance(lower[0], annotated_types.Gt) else lower[0].ge - (1 if kind is int else 1e-9)
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, [f"{key}={below}"])


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["predict.max_new_tokens.VG=0"], "predict.max_new_tokens.VG"),
        (["train.epochs=.inf"], "train.epochs"),
        (["rope.name=mcg", "rope.alpha=[.inf, 2]"], "rope: .*alpha"),
        (["seed=-1"], "seed"),
    ],
)
def test_values_that_used_to_fail_late_are_refused_when_the_recipe_loads(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, overrides)
