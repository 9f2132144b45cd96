"""Experiment files: the shipped tables build valid run configs; mistakes name the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from experiment_helpers import REPO_ROOT, write_experiment

from gemdepth.experiment import ExperimentConfigError, load_experiment
from gemdepth.experiment.cli import main
from gemdepth.experiment.config import Cell, deep_merge
from gemdepth.experiment.runner import build_run_config, run_dir

SHIPPED = sorted((REPO_ROOT / "experiments").glob("table*.yaml"))


def test_deep_merge_merges_mappings_and_replaces_lists() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    out = deep_merge(base, {"a": {"c": [3]}, "e": 2})
    assert out == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}  # not modified


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_experiments_build_their_models(path: Path, tmp_path: Path) -> None:
    from gemdepth.models import build_model, normalize_config, resolve_model_config

    exp = load_experiment(path, output=tmp_path)
    assert len(exp.seeds) >= 3 and exp.budget
    for variant in exp.variants:
        cfg = build_run_config(exp, Cell(variant, exp.seeds[0]))
        model_cfg = normalize_config(resolve_model_config(cfg["model"]["model"]))
        build_model(model_cfg)  # every variant is one the model code supports
        assert cfg["seed_everything"] == exp.seeds[0]
        assert cfg["trainer"]["max_steps"] == exp.budget["max_steps"]
        assert cfg["trainer"]["default_root_dir"] == str(run_dir(exp, Cell(variant, exp.seeds[0])))
        ckpt = [c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
        assert len(ckpt) == 1 and exp.budget["max_steps"] % ckpt[0]["init_args"]["every_n_train_steps"] == 0


def test_table4_variants_switch_what_the_paper_switches(tmp_path: Path) -> None:
    exp = load_experiment(REPO_ROOT / "experiments" / "table4.yaml", output=tmp_path)
    plugins = {v: build_run_config(exp, Cell(v, 0))["model"]["model"]["plugins"] for v in exp.variants}
    assert plugins["host"] == []
    assert [p["name"] for p in plugins["gem_astt"]] == ["gem", "astt"]
    assert plugins["spatial"][0].get("temporal") is False and plugins["spatial"][0].get("spatial", True)
    assert plugins["temporal"][0].get("spatial") is False and plugins["temporal"][0].get("temporal", True)
    # every variant trains on the same corpus and budget
    data = {v: build_run_config(exp, Cell(v, 0))["data"]["train_sources"] for v in exp.variants}
    assert len({str(d) for d in data.values()}) == 1


@pytest.mark.parametrize(("changes", "key", "hint"), [
    ({"budget": {"max_steps": 3, "max_time": "00:00:01:00"}}, "budget", "exactly one"),
    ({"budget": {"max_time": "5 minutes"}}, "budget.max_time", "DD:HH:MM:SS"),
    ({"budget": {"max_step": 3}}, "budget.max_step", "unknown key"),
    ({"seeds": [0, 0]}, "seeds", "repeated"),
    ({"seeds": "three"}, "seeds", "non-negative integers"),
    ({"variants": {"bad name": {}}}, "variants.bad name", "folder name"),
    ({"variants": {"host": [1, 2]}}, "variants.host", "mapping"),
    ({"eval": {"sets": ["nowhere"]}}, "eval.sets.nowhere", "neither a corpus"),
    ({"eval": {"sets": ["held_out"], "metrics": ["AbsRell"]}}, "eval.metrics", "unknown metric"),
    ({"train": ["missing"]}, "train", "not a corpus"),
    ({"base": "no_such_recipe.yaml"}, "base[0]", "does not exist"),
    ({"paper": {"columns": ["A"], "values": {"nope": [1.0]}}}, "paper.values.nope", "not a variant"),
    ({"colour": "blue"}, "colour", "unknown key"),
])
def test_config_errors_name_the_file_and_key(tmp_path: Path, changes: dict, key: str, hint: str) -> None:
    path = write_experiment(tmp_path, **changes)
    with pytest.raises(ExperimentConfigError) as info:
        load_experiment(path)
    assert str(info.value).startswith(f"{path}: {key}: ")
    assert hint in str(info.value)


def test_missing_key_and_cli_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_experiment(tmp_path)
    spec = yaml.safe_load(path.read_text())
    del spec["budget"]
    path.write_text(yaml.safe_dump(spec))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: budget: missing" in err


def test_list_and_bad_selection(mini_experiment: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(mini_experiment), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["host/seed0", "gem_astt/seed0", "host/seed1", "gem_astt/seed1"]
    assert all(line.split()[2] == "todo" for line in lines)
    with pytest.raises(SystemExit):
        main([str(mini_experiment), "--only", "nope/seed0", "--no-report"])
    assert "no variant 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(mini_experiment), "--index", "4", "--no-report"])
    assert "outside the grid" in capsys.readouterr().err
