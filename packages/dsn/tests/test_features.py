import importlib.util

import numpy as np
import pytest

from dsn import data as D
from dsn import features as Fe
from dsn.kts import kts_segments
from trainkit.errors import UserError


def test_frame_features_shape_norm_and_dedupe():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    frames[3] = frames[1]
    f = Fe.frame_features(frames)
    assert f.shape == (6, Fe.FEATURE_DIM) and f.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(f[3], f[1])
    # computing frames one at a time gives the same rows (no batch effects)
    np.testing.assert_allclose(Fe.frame_features(frames[4:5])[0], f[4], atol=1e-6)
    # other frame sizes are resized to 64x64 first
    assert Fe.frame_features(rng.integers(0, 256, (2, 48, 80, 3), dtype=np.uint8)).shape == (2, Fe.FEATURE_DIM)
    assert Fe.frame_features(np.zeros((0, 64, 64, 3), np.uint8)).shape == (0, Fe.FEATURE_DIM)
    with pytest.raises(ValueError):
        Fe.frame_features(np.zeros((2, 64, 64, 3), np.float32))


def test_frame_features_separate_scenes():
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 210
    red2 = red.copy()
    red2[30:34] = 255  # the same scene with a small change
    blue = np.zeros((64, 64, 3), np.uint8)
    blue[..., 2] = 210
    red3 = red.copy()
    red3[30:34] = 240
    f = Fe.frame_features(np.stack([red, red2, blue, red3]))
    assert f[0] @ f[1] > f[0] @ f[2] + 0.3
    assert f[1] @ f[3] > 0.9  # nearly the same picture


def test_kts_recovers_known_boundaries():
    rng = np.random.default_rng(0)
    lengths = [10, 15, 8, 20, 12]
    centres = rng.standard_normal((len(lengths), 32))
    x = np.concatenate([c + 0.15 * rng.standard_normal((n, 32)) for c, n in zip(centres, lengths)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_array_equal(kts_segments(x), np.cumsum(lengths)[:-1])
    # a constant sequence has no change point
    assert kts_segments(np.tile(x[:1], (30, 1))).size == 0


def test_segments_from_steps():
    cps, nfps = Fe.segments_from_steps(np.array([2, 5]), np.arange(7) * 15, 100)
    np.testing.assert_array_equal(cps, [[0, 29], [30, 74], [75, 99]])
    np.testing.assert_array_equal(nfps, [30, 45, 25])


def test_extract_features_on_tiny_video(tmp_path, video_writer):
    a = video_writer(tmp_path / "a.mp4", n_frames=180, fps=30)
    b = video_writer(tmp_path / "b.mp4", n_frames=60, fps=30, switch_at=60)
    root = Fe.extract_features([a, b], tmp_path / "ds", sample_fps=2.0, thumb_size=32)
    videos = D.load_videos(root)
    assert list(videos) == ["video_1", "video_2"]
    v = videos["video_1"]
    np.testing.assert_array_equal(v.picks, np.arange(12) * 15)  # 2 fps from 30 fps
    assert v.n_frames == 180 and v.fps == pytest.approx(30.0) and v.video_name == "a.mp4"
    assert v.features.shape == (12, Fe.FEATURE_DIM) and v.frames.shape == (12, 32, 32, 3)
    assert v.user_summary is None and v.gtscore is None
    # the red -> blue cut at frame 90 is found by KTS
    np.testing.assert_array_equal(v.change_points, [[0, 89], [90, 179]])
    assert videos["video_2"].change_points.tolist() == [[0, 59]]
    # thumbnails really are the decoded colours (mpeg4 is lossy: approximately)
    assert v.frames[0, ..., 0].mean() > 150 > 100 > v.frames[0, ..., 2].mean()
    assert v.frames[-1].astype(float).std(axis=1).mean() > 40  # the stripes of the second shot
    assert D.load_splits(root)  # leave-one-out splits for two videos

    root2 = Fe.extract_features([a, b], tmp_path / "ds_pca", pca_dim=3)
    assert D.load_videos(root2)["video_1"].features.shape == (12, 3)
    assert (root2 / "pca.npz").is_file()


def test_read_video_errors(tmp_path):
    with pytest.raises(UserError, match=r"^video not found"):
        Fe.read_video(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video")
    with pytest.raises(UserError, match=r"^cannot (open|decode) video"):
        Fe.read_video(junk)


def test_backbone_never_downloads(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert Fe.find_cached_backbone_weights("resnet18") is None
    frames = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(UserError, match=r"^unknown backbone 'vgg99'"):
        Fe.backbone_features(frames, "vgg99")
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(UserError, match=r"^backbone 'resnet18' needs torchvision"):
            Fe.backbone_features(frames, "resnet18")
    else:
        with pytest.raises(UserError, match=r"^no cached weights for backbone 'resnet18'"):
            Fe.backbone_features(frames, "resnet18")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"")
    assert Fe.find_cached_backbone_weights("resnet18").name == "resnet18-f37072fd.pth"
