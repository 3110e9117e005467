"""The shipped default.yaml spells out exactly the dataclass defaults; flags map onto real keys."""
import dataclasses

from action_ddim.config import TRAIN_FLAGS, Config, default_config_path
from trainkit.config import config_to_dict, load_config


def test_default_yaml_matches_dataclass_defaults():
    assert config_to_dict(load_config(Config, default_config_path())) == config_to_dict(Config())


def test_every_train_flag_maps_to_a_config_key():
    cfg = Config()
    for dotted in TRAIN_FLAGS.values():
        section, key = dotted.split(".")
        assert key in {f.name for f in dataclasses.fields(getattr(cfg, section))}, dotted


def test_guide_defaults():
    c = Config()
    assert (c.model.d_model, c.model.num_layers, c.model.nhead) == (128, 4, 4)
    assert (c.train.batch_size, c.train.num_epochs, c.train.lr) == (32, 50, 1e-4)
    assert (c.train.device, c.train.save_dir, c.train.save_every) == ("auto", "checkpoints", 20)
    assert (c.train.plot_every, c.train.val_every, c.diffusion.num_inference_steps) == (10, 1, 50)


def test_one_split_import_folder_given_twice_trains_on_train_and_validates_on_val(tmp_path):
    # the workflow `train --data_dir D --val_data_dir D` on an `import-log --val_users` output
    import pytest

    from action_ddim.train import resolve_data
    from trainkit.errors import UserError

    (tmp_path / "D" / "train").mkdir(parents=True)
    (tmp_path / "D" / "val").mkdir()
    cfg = Config()
    cfg.data.data_dir = cfg.data.val_data_dir = str(tmp_path / "D")
    said = []
    assert resolve_data(cfg, said.append) == (tmp_path / "D" / "train", tmp_path / "D" / "val")
    assert "split import" in said[0]
    cfg.data.data_dir = cfg.data.val_data_dir = str(tmp_path / "D" / "train")   # any other folder twice: refused
    with pytest.raises(UserError, match="training directory"):
        resolve_data(cfg, said.append)
