import json

import h5py
import numpy as np
import pytest

from dsn import data as D
from trainkit.errors import UserError


def test_eccv16_fixture_loads(eccv16_root):
    videos = D.load_videos(eccv16_root)
    assert list(videos) == ["video_1", "video_2", "video_3", "video_4"]
    v = videos["video_2"]
    assert v.features.dtype == np.float32 and v.features.shape == (v.n_steps, 16)
    assert v.picks.dtype == np.int64 and v.picks[1] == 15
    assert isinstance(v.n_frames, int) and v.user_summary.shape == (3, v.n_frames)
    assert set(np.unique(v.user_summary)) <= {0, 1}
    assert v.gtscore.shape == (v.n_steps,)
    assert v.frames is None and v.fps is None and v.video_name == "clip 2"
    assert v.change_points.shape[1] == 2 and v.n_frame_per_seg.sum() == v.n_frames
    splits = D.load_splits(eccv16_root)
    assert splits[0] == {"train_keys": ["video_1", "video_2", "video_3"], "test_keys": ["video_4"]}
    # the h5 file itself is also accepted as the dataset root
    assert list(D.load_videos(D.find_h5(eccv16_root), keys=["video_3"])) == ["video_3"]
    assert len(D.load_splits(D.find_h5(eccv16_root))) == 2


def test_dsnet_style_split_keys_are_normalised(eccv16_root):
    keys = [f"../datasets/eccv16_dataset_toy_google_pool5.h5/video_{i}" for i in range(1, 5)]
    (eccv16_root / "splits.json").write_text(json.dumps([{"train_keys": keys[:2], "test_keys": keys[2:]}]))
    assert D.load_splits(eccv16_root) == [{"train_keys": ["video_1", "video_2"], "test_keys": ["video_3", "video_4"]}]


def _mutate(root, key, fn):
    with h5py.File(D.find_h5(root), "a") as f:
        fn(f[key])


def _replace(name, value):
    def fn(g):
        del g[name]
        g[name] = value

    return fn


BAD_FILES = {
    "missing key": (lambda g: g.__delitem__("picks"), "video 'video_2': missing dataset 'picks'"),
    "shape mismatch": (_replace("picks", np.arange(3) * 15), "video 'video_2': picks has 3 entries but features have"),
    "empty video": (_replace("features", np.zeros((0, 16), np.float32)), "video 'video_2': empty video (features shape (0, 16))"),
    "nan features": (
        lambda g: g["features"].__setitem__((5, 2), np.nan),
        "video 'video_2': features contain NaN/inf at 1 step(s), first step 5",
    ),
    "user_summary width": (_replace("user_summary", np.zeros((3, 7), np.float32)), "video 'video_2': user_summary has shape (3, 7)"),
    "gtscore length": (_replace("gtscore", np.zeros(2, np.float32)), "video 'video_2': gtscore has 2 entries"),
    # Each of these raised a traceback inside numpy/h5py before (issue 13 item 8).
    "string n_frames": (_replace("n_frames", "six hundred"), "video 'video_2': 'n_frames' has non-numeric dtype"),
    "string user_summary": (lambda g: _replace("user_summary", np.full(g["user_summary"].shape, b"1"))(g),
                            "video 'video_2': 'user_summary' has non-numeric dtype"),
    "string gtscore": (lambda g: _replace("gtscore", np.full(g["gtscore"].shape, b"0.5"))(g),
                       "video 'video_2': 'gtscore' has non-numeric dtype"),
    "features group": (lambda g: (g.__delitem__("features"), g.create_group("features")),
                       "video 'video_2': 'features' is a group, not a dataset"),
    "negative n_frame_per_seg": (lambda g: g["n_frame_per_seg"].__setitem__(1, -5),
                                 "video 'video_2': n_frame_per_seg[1] is -5"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_video_is_a_user_error_naming_key_and_file(eccv16_root, case):
    fn, message = BAD_FILES[case]
    _mutate(eccv16_root, "video_2", fn)
    with pytest.raises(UserError) as err:
        D.load_videos(eccv16_root)
    text = str(err.value)
    assert text.startswith(message), text
    assert "eccv16_dataset_toy_google_pool5.h5" in text
    assert "\n" not in text


def test_exact_error_text_for_missing_key(eccv16_root):
    _mutate(eccv16_root, "video_3", lambda g: g.__delitem__("change_points"))
    with pytest.raises(UserError) as err:
        D.load_videos(eccv16_root)
    h5 = D.find_h5(eccv16_root)
    assert str(err.value) == (
        f"video 'video_3': missing dataset 'change_points' ({h5}): "
        "every video group has features, picks, n_frames, change_points, n_frame_per_seg"
    )


def test_missing_and_ambiguous_files(tmp_path, eccv16_root, eccv16_writer):
    with pytest.raises(UserError, match=r"^dataset not found \("):
        D.load_videos(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"^no \.h5 file in dataset folder"):
        D.find_h5(tmp_path / "empty")
    eccv16_writer(eccv16_root / "second.h5")
    with pytest.raises(UserError, match=r"^2 \.h5 files in dataset folder"):
        D.find_h5(eccv16_root)
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(UserError, match=r"^cannot read HDF5 file"):
        D.load_videos(tmp_path / "junk.h5")
    with pytest.raises(UserError, match=r"^video 'video_9' not in dataset"):
        D.load_videos(eccv16_root / "second.h5", keys=["video_9"])


BAD_SPLITS = {
    "not json": ("{oops", "splits file is not valid JSON"),
    "not a list": ('{"train_keys": []}', "splits file does not hold a non-empty list"),
    "missing test_keys": ('[{"train_keys": ["video_1"]}]', "split 0 lacks train_keys/test_keys"),
    "unknown video": (
        '[{"train_keys": ["video_1"], "test_keys": ["video_2"]}, {"train_keys": ["video_1"], "test_keys": ["video_77"]}]',
        "split 1: video 'video_77' in test_keys is not in eccv16_dataset_toy_google_pool5.h5",
    ),
    "empty train": ('[{"train_keys": [], "test_keys": ["video_1"]}]', "split 0 has an empty train list"),
    "train/test overlap": ('[{"train_keys": ["video_1", "video_2"], "test_keys": ["video_3"]}, '
                           '{"train_keys": ["video_1", "video_2"], "test_keys": ["video_2"]}]',
                           "split 1: video 'video_2' is in both train_keys and test_keys"),
    "unknown key": ('[{"train_keys": ["video_1"], "test_keys": ["video_2"], "trian_keys": ["video_3"]}]',
                    "split 0: unknown key 'trian_keys'"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPLITS))
def test_bad_splits_json(eccv16_root, case):
    content, message = BAD_SPLITS[case]
    (eccv16_root / "splits.json").write_text(content)
    with pytest.raises(UserError) as err:
        D.load_splits(eccv16_root)
    assert str(err.value).startswith(message)
    assert "splits.json" in str(err.value) and "\n" not in str(err.value)


def test_split_without_test_videos_is_allowed(eccv16_root):
    (eccv16_root / "splits.json").write_text('[{"train_keys": ["video_1", "video_2"], "test_keys": []}]')
    assert D.load_splits(eccv16_root) == [{"train_keys": ["video_1", "video_2"], "test_keys": []}]


def test_missing_splits_json(eccv16_root):
    (eccv16_root / "splits.json").unlink()
    with pytest.raises(UserError, match=r"^splits file not found"):
        D.load_splits(eccv16_root)


def test_write_dataset_round_trip(tmp_path, eccv16_root):
    videos = D.load_videos(eccv16_root)
    v = videos["video_1"]
    v.frames = np.random.default_rng(0).integers(0, 256, (v.n_steps, 8, 8, 3), dtype=np.uint8)
    v.fps = 29.97
    splits = D.make_splits(list(videos), num_splits=2, test_fraction=0.5, seed=1)
    root = D.write_dataset(tmp_path / "out", list(videos.values()), splits)
    back = D.load_videos(root)
    assert list(back) == list(videos)
    for key, a in videos.items():
        b = back[key]
        for field in ("features", "picks", "change_points", "n_frame_per_seg", "user_summary", "gtscore"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert a.n_frames == b.n_frames
    np.testing.assert_array_equal(back["video_1"].frames, v.frames)
    assert back["video_1"].fps == pytest.approx(29.97) and back["video_2"].frames is None
    assert D.load_splits(root) == splits


def test_make_splits_k_fold_covers_every_video_once():
    keys = [f"video_{i}" for i in range(1, 23)]
    splits = D.make_splits(keys, seed=0)
    assert len(splits) == 5
    tests = [k for s in splits for k in s["test_keys"]]
    assert sorted(tests) == sorted(keys)
    for s in splits:
        assert set(s["train_keys"]) | set(s["test_keys"]) == set(keys)
        assert not set(s["train_keys"]) & set(s["test_keys"])
        assert 4 <= len(s["test_keys"]) <= 5
    assert D.make_splits(keys, seed=0) == splits != D.make_splits(keys, seed=1)
    assert len(D.make_splits(["a", "b"], seed=0)) == 2  # leave-one-out when fewer videos than folds


def test_default_dataset_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DSN_CACHE", str(tmp_path / "c"))
    assert D.default_dataset_root() == tmp_path / "c" / "default"
    monkeypatch.delenv("DSN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert D.default_dataset_root() == tmp_path / "x" / "dsn" / "default"


def test_ensure_default_dataset_builds_once(monkeypatch, tmp_path):
    import dsn.synthetic

    calls = []
    real = dsn.synthetic.make_dataset

    def small(out_dir):
        calls.append(out_dir)
        return real(out_dir, num_videos=2, n_shots_range=(2, 3), n_users=2)

    monkeypatch.setenv("DSN_CACHE", str(tmp_path))
    monkeypatch.setattr(dsn.synthetic, "make_dataset", small)
    root = D.ensure_default_dataset()
    assert root == tmp_path / "default" and len(calls) == 1
    assert len(D.load_videos(root)) == 2 and len(D.load_splits(root)) == 2
    assert D.ensure_default_dataset() == root and len(calls) == 1  # reused, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == ["default"]  # no temporary folders left
