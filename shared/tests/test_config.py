from dataclasses import dataclass, field
from typing import Literal

import click
import pytest
import yaml
from click.testing import CliRunner

from trainkit.config import config_from_dict, config_to_dict, explicit_cli_values, load_config, save_config
from trainkit.errors import UserError


@dataclass
class Optim:
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class Cfg:
    name: str = "run"
    epochs: int = 3
    schedule: Literal["cosine", "linear"] = "cosine"
    wandb_project: str | None = None
    optim: Optim = field(default_factory=Optim)


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_file_flags_and_overrides_in_order(tmp_path):
    p = write(tmp_path, "epochs: 5\noptim:\n  lr: 0.001\n")
    cfg = load_config(Cfg, p, overrides=["optim.lr=2e-4"], cli_values={"epochs": 7, "name": "x"})
    assert cfg.epochs == 7 and cfg.name == "x"
    assert cfg.optim.lr == pytest.approx(2e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == [0.9, 0.999]


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(UserError) as e:
        load_config(Cfg, p)
    msg = str(e.value)
    assert "unknown config key 'optim.lrr'" in msg and str(p) in msg and "optim.lr" in msg


def test_wrong_type_names_key_file_and_type(tmp_path):
    p = write(tmp_path, "epochs: many\n")
    with pytest.raises(UserError) as e:
        load_config(Cfg, p)
    assert "'epochs'" in str(e.value) and str(p) in str(e.value) and "expected int" in str(e.value)


def test_bad_overrides():
    with pytest.raises(UserError, match="expected key=value"):
        load_config(Cfg, None, overrides=["optim.lr"])
    with pytest.raises(UserError, match="unknown config key 'optim.momentum'"):
        load_config(Cfg, None, overrides=["optim.momentum=0.9"])
    with pytest.raises(UserError, match=r"expected float"):
        load_config(Cfg, None, overrides=["optim.lr=fast"])
    with pytest.raises(UserError, match=r"expected one of \['cosine', 'linear'\]"):
        load_config(Cfg, None, overrides=["schedule=quad"])
    assert load_config(Cfg, None, overrides=["wandb_project=null"]).wandb_project is None


def test_missing_required_value(tmp_path):
    @dataclass
    class Req:
        data_dir: str

    with pytest.raises(UserError, match="missing required config key 'data_dir'"):
        load_config(Req, write(tmp_path, "{}\n"))


def test_roundtrip_dict_and_yaml(tmp_path):
    cfg = load_config(Cfg, None, overrides=["optim.lr=0.5", "name=abc"])
    d = config_to_dict(cfg)
    assert d == {"name": "abc", "epochs": 3, "schedule": "cosine", "wandb_project": None,
                 "optim": {"lr": 0.5, "betas": [0.9, 0.999]}}
    assert config_from_dict(Cfg, d) == cfg
    path = save_config(cfg, tmp_path / "run")
    assert config_from_dict(Cfg, yaml.safe_load(path.read_text())) == cfg


def test_explicit_cli_values_only_typed_flags():
    seen = {}

    @click.command()
    @click.option("--epochs", type=int, default=3)
    @click.option("--lr", type=float, default=1e-4)
    @click.pass_context
    def cmd(ctx, epochs, lr):
        seen.update(explicit_cli_values(ctx, {"epochs": "epochs", "lr": "optim.lr"}))

    assert CliRunner().invoke(cmd, ["--lr", "0.01"]).exit_code == 0
    assert seen == {"optim.lr": 0.01}


def test_base_config_layers_under_file_and_overrides(tmp_path):
    saved = config_to_dict(load_config(Cfg, None, overrides=["epochs=9", "optim.lr=0.5"]))  # e.g. from a checkpoint
    p = write(tmp_path, "name: from-file\n")
    cfg = load_config(Cfg, p, overrides=["optim.betas=[0.8, 0.9]"], base=saved)
    assert (cfg.epochs, cfg.optim.lr, cfg.name, cfg.optim.betas) == (9, 0.5, "from-file", [0.8, 0.9])
    with pytest.raises(UserError, match="unknown config key 'optim.lrr'"):
        load_config(Cfg, None, overrides=["optim.lrr=1"], base=saved)


def test_resume_config_keeps_the_checkpoint_and_refuses_run_changes(tmp_path):
    from trainkit.config import config_changes, resolve_resume_config

    saved = config_to_dict(Cfg(name="ckpt", epochs=4, schedule="linear", optim=Optim(lr=3e-3)))
    rules = dict(run_defining=("schedule", "optim"), may_change=("optim.betas",))
    # No flags: everything comes from the checkpoint, not from the dataclass defaults.
    cfg = resolve_resume_config(Cfg, saved, **rules)
    assert (cfg.name, cfg.epochs, cfg.schedule, cfg.optim.lr) == ("ckpt", 4, "linear", 3e-3)
    # Settings that may change on resume pass (more epochs, an exempted key); the result says so honestly.
    cfg = resolve_resume_config(Cfg, saved, cli_values={"epochs": 9}, overrides=["optim.betas=[0.8, 0.9]"], **rules)
    assert cfg.epochs == 9 and cfg.optim.betas == [0.8, 0.9] and cfg.optim.lr == 3e-3
    assert [k for k, _, _ in config_changes(saved, config_to_dict(cfg))] == ["epochs", "optim.betas"]
    # Giving a run-defining key its saved value is fine (also spelled as a string / a YAML float).
    resolve_resume_config(Cfg, saved, overrides=["optim.lr=3e-3", "schedule=linear"], **rules)
    # Changing one is a one-line error naming the key, both values and where it came from.
    with pytest.raises(UserError) as e:
        resolve_resume_config(Cfg, saved, overrides=["optim.lr=1e-2"], **rules)
    text = str(e.value)
    assert "'optim.lr' from 0.003 to 0.01" in text and "--set optim.lr=1e-2" in text and "\n" not in text
    assert "--allow_config_change" in text
    with pytest.raises(UserError, match="'schedule' from 'linear' to 'cosine'.*command line"):
        resolve_resume_config(Cfg, saved, cli_values={"schedule": "cosine"}, **rules)
    yaml_file = write(tmp_path, "schedule: cosine\n")
    with pytest.raises(UserError, match=f"'schedule'.*{yaml_file}") as e:
        resolve_resume_config(Cfg, saved, path=yaml_file, **rules)
    # a key from the --config file: the fix is to drop --config on resume, not to change the run (amt audit M2)
    assert "resume without --config" in str(e.value)
    # ... unless the package's explicit override flag was given.
    cfg = resolve_resume_config(Cfg, saved, overrides=["optim.lr=1e-2"], allow_changes=True, **rules)
    assert cfg.optim.lr == 1e-2


def test_resume_config_paths_compare_by_location(tmp_path, monkeypatch):
    from trainkit.config import resolve_resume_config

    monkeypatch.chdir(tmp_path)
    saved = config_to_dict(Cfg(name=str(tmp_path / "data")))
    cfg = resolve_resume_config(Cfg, saved, cli_values={"name": "./data"}, run_defining=("name",))
    assert cfg.name == "./data"
    with pytest.raises(UserError, match="'name'"):
        resolve_resume_config(Cfg, saved, cli_values={"name": "./other"}, run_defining=("name",))


def test_key_aliases_map_a_guides_spelling_onto_the_config_key(tmp_path):
    from dataclasses import dataclass, field

    @dataclass
    class Train:
        T_0: float = 10.0

    @dataclass
    class Cfg:
        KEY_ALIASES = {"T_0": "train.T_0"}
        train: Train = field(default_factory=Train)

    path = tmp_path / "c.yaml"
    path.write_text("T_0: 5\n")
    assert load_config(Cfg, path).train.T_0 == 5
    assert load_config(Cfg, None, ["T_0=7"]).train.T_0 == 7
    path.write_text("T_0: 5\ntrain:\n  T_0: 6\n")
    with pytest.raises(UserError, match="both 'T_0' and 'train.T_0'"):
        load_config(Cfg, path)
