import h5py
import numpy as np

from dsn import data as D
from dsn.features import FEATURE_DIM, frame_features
from dsn.synthetic import STRIDE, make_dataset, make_video


def test_make_video_is_deterministic_by_seed():
    a, bounds_a, imp_a = make_video("v", np.random.default_rng([7, 0]), n_shots_range=(4, 6))
    b, bounds_b, imp_b = make_video("v", np.random.default_rng([7, 0]), n_shots_range=(4, 6))
    c, _, _ = make_video("v", np.random.default_rng([8, 0]), n_shots_range=(4, 6))
    for field in ("features", "picks", "change_points", "user_summary", "gtscore", "frames"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_array_equal(bounds_a, bounds_b)
    assert a.n_steps != c.n_steps or not np.array_equal(a.frames, c.frames)


def test_dataset_format_and_same_extractor(tiny_synthetic_root):
    videos = D.load_videos(tiny_synthetic_root)
    assert list(videos) == ["video_1", "video_2", "video_3", "video_4"]
    splits = D.load_splits(tiny_synthetic_root)
    assert len(splits) == 2
    for v in videos.values():
        assert v.features.shape == (v.n_steps, FEATURE_DIM)
        assert v.frames.dtype == np.uint8 and v.frames.shape == (v.n_steps, 64, 64, 3)
        assert v.n_frames == v.n_steps * STRIDE and v.fps == 30.0
        np.testing.assert_array_equal(v.picks, np.arange(v.n_steps) * STRIDE)
        # features are exactly what the real-video extractor gives for these thumbnails
        np.testing.assert_allclose(v.features[:20], frame_features(v.frames[:20]), atol=1e-6)
        np.testing.assert_allclose(v.gtscore, v.user_summary[:, v.picks].mean(0), atol=1e-6)
        # KTS shots tile the video
        assert v.change_points[0, 0] == 0 and v.change_points[-1, 1] == v.n_frames - 1
        np.testing.assert_array_equal(v.change_points[1:, 0], v.change_points[:-1, 1] + 1)


def test_held_frames_are_exact_duplicates(tiny_synthetic_root):
    videos = D.load_videos(tiny_synthetic_root)
    same = [np.all(v.frames[1:] == v.frames[:-1], axis=(1, 2, 3)) for v in videos.values()]
    held = np.concatenate(same).mean()
    assert held > 0.3, held  # drawings held on twos/threes
    assert np.concatenate(same).mean() < 0.95  # but things do move
    for v in videos.values():
        dup = np.all(v.frames[1:] == v.frames[:-1], axis=(1, 2, 3))
        np.testing.assert_array_equal(v.features[1:][dup], v.features[:-1][dup])


def test_important_shots_are_what_users_select(tiny_synthetic_root):
    sel_imp, sel_other = [], []
    with h5py.File(D.find_h5(tiny_synthetic_root), "r") as f:
        for key in f:
            users = f[key]["user_summary"][()]
            for (s, e), imp in zip(f[key]["shot_bounds"][()], f[key]["shot_importance"][()]):
                (sel_imp if imp > 0.5 else sel_other).append(users[:, s : e + 1].mean())
            rate = users.mean(1)
            assert ((rate > 0.05) & (rate < 0.2)).all(), rate  # each user keeps ~10-17 %
    assert sel_imp and sel_other
    assert np.mean(sel_imp) > 3 * np.mean(sel_other), (np.mean(sel_imp), np.mean(sel_other))


def test_make_dataset_same_seed_same_file(tmp_path):
    a = D.load_videos(make_dataset(tmp_path / "a", num_videos=2, seed=5, n_shots_range=(2, 3), n_users=2))
    b = D.load_videos(make_dataset(tmp_path / "b", num_videos=2, seed=5, n_shots_range=(2, 3), n_users=2))
    for key in a:
        np.testing.assert_array_equal(a[key].features, b[key].features)
        np.testing.assert_array_equal(a[key].user_summary, b[key].user_summary)
    assert D.load_splits(tmp_path / "a") == D.load_splits(tmp_path / "b")
