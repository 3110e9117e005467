import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    # Frame/flow caches of test videos stay inside pytest's temp folder.
    os.environ["WUBU_GAN_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_video(tmp_path_factory):
    from wubu_gan.data import _write_video, shapes_frames

    path = tmp_path_factory.mktemp("video") / "shapes.mp4"
    _write_video(path, shapes_frames(90, 32, 32, seed=3), 32, 32)
    return path


def tiny_cfg(tmp_path, video, **kw):
    from wubu_gan.config import TrainConfig

    base = dict(video_data_path=str(video), image_h=16, image_w=16, latent_dim=16, epochs=2, batch_size=4, num_workers=0,
                checkpoint_dir=str(tmp_path / "run"), log_interval=1, save_interval=1000, gaad_num_regions=4,
                gaad_motion_num_regions=4, encoder_initial_tangent_dim=16, wubu_s_hyperbolic_dims=[16, 8],
                wubu_m_hyperbolic_dims=[8], wubu_t_hyperbolic_dims=[16], disc_base_disc_channels=16,
                disc_max_disc_channels=32, encoder_pixel_patch_size=4, validation_split_fraction=0.2,
                val_block_size=5, max_val_clips=8, learning_rate_gen=1e-3, learning_rate_disc=1e-4, lambda_kl=1e-4,
                quiet=True, device="cpu", wubu_dropout=0.0, keep_last_checkpoints=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def make_cfg():
    return tiny_cfg


@pytest.fixture(scope="session")
def base_run(tmp_path_factory, tiny_video):
    """One small run everyone reads (Q-controllers on, spectral norm on, augmentation, LR decay and the adaptive
    adversarial weight on, mid-epoch checkpoint at step 5 inside a logging interval of 3), so the resume test
    covers the augmentation draw, the decay schedule and the partial log window too."""
    from wubu_gan.train import train

    tmp = tmp_path_factory.mktemp("base")
    cfg = tiny_cfg(tmp, tiny_video, q_controller_enabled=True, disc_apply_spectral_norm=True, save_interval=5,
                   lambda_kl_update_interval=1, epochs=3, augment_flip=True, augment_color=True,
                   lr_decay_fraction=0.3, lambda_gan_adaptive=True, log_interval=3)
    logs = []
    summary = train(cfg, log=logs.append)
    return {"cfg": cfg, "summary": summary, "logs": logs, "dir": tmp / "run"}
