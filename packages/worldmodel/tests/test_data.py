import csv
import json
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from trainkit.config import load_config
from trainkit.errors import UserError

from worldmodel.config import Config
from worldmodel.data import ProcessedDataset, WindowDataset
from worldmodel.sources import prepare, read_carla, read_nuscenes
from worldmodel.synthetic import generate, generate_episode

# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_actions_change_frames():
    f1, a1 = generate_episode(32, 18, 10, seed=5)
    f2, a2 = generate_episode(32, 18, 10, seed=5)
    assert np.array_equal(f1, f2) and np.array_equal(a1, a2)
    f3, _ = generate_episode(32, 18, 10, seed=6)
    assert not np.array_equal(f1, f3)
    # steering harder from frame 4 on: frames up to 4 are identical, later ones differ, and the action says so
    f4, a4 = generate_episode(32, 18, 10, seed=5, yaw_rate_offset=0.3, offset_from=4)
    assert np.array_equal(f1[:5], f4[:5])
    assert np.abs(f1[6:].astype(int) - f4[6:].astype(int)).mean() > 2.0
    assert np.allclose(a4[4:, 1] - a1[4:, 1], 0.3, atol=1e-5) or (a4[4:, 1] != a1[4:, 1]).all()


def test_synthetic_version_1_is_the_old_world_bit_exact():
    import hashlib

    # sha256 of generate_episode(32, 18, 10, seed=5) as the generator wrote it before versions existed (97ac85c)
    f, a = generate_episode(32, 18, 10, seed=5, version=1)
    assert hashlib.sha256(f.tobytes() + a.tobytes()).hexdigest() == (
        "1324698ae1cb65cb42031b1857f49376a6ec5016b6af076516df7125eac18119")


def _psnr(a, b):
    return float(10 * np.log10(1 / (((a.astype(float) - b.astype(float)) / 255) ** 2).mean()))


def test_synthetic_version_2_makes_speed_and_braking_visible():
    # halving the speed from frame 4 on: the frames 5 steps later differ more in v2 than in v1, and in v2 by a
    # lot (measured mean over 6 episodes at 48x27: v1 19.2 dB, v2 16.2 dB; a threshold with margin per set)
    drop = {}
    for version in (1, 2):
        vals = []
        for seed in range(3):
            fa, _ = generate_episode(48, 27, 10, seed, version=version)
            fb, ab = generate_episode(48, 27, 10, seed, version=version, speed_scale=0.5, scale_from=4)
            assert np.array_equal(fa[:5], fb[:5])
            vals.append(_psnr(fa[9], fb[9]))
        drop[version] = float(np.mean(vals))
    assert drop[2] < 18.0 and drop[2] < drop[1] - 1.0, drop
    # v2 drives over a wider speed range, with hard braking (v1: 3-16 m/s, |a| <= 2.5)
    acts = np.concatenate([generate_episode(32, 18, 60, s, version=2)[1] for s in range(6)])
    assert acts[:, 2].min() < -3.0 and acts[:, 0].max() - acts[:, 0].min() > 10.0


def test_synthetic_version_is_recorded_cached_apart_and_checked(tmp_path):
    from worldmodel.synthetic import ensure_synthetic

    root = generate(tmp_path / "v1", num_scenes=2, num_frames=6, image_size=(32, 18), version=1)
    assert json.loads((root / "index.json").read_text())["synthetic"]["version"] == 1
    assert ProcessedDataset(root).index["source"] == "synthetic"
    a = ensure_synthetic(2, 6, (32, 18), 0, 0.5, log=lambda *_: None, version=1)
    b = ensure_synthetic(2, 6, (32, 18), 0, 0.5, log=lambda *_: None, version=2)
    assert a != b and a.name == "s0_n2_t6_32x18_v0.5"      # v1 keeps the cache folder it always had
    assert not np.array_equal(np.load(a / "frames.npy"), np.load(b / "frames.npy"))
    with pytest.raises(UserError, match="synthetic_version"):
        load_config(Config, None, ["data.synthetic_version=3"])


def test_processed_format_and_windows_never_cross_scenes(tiny_data):
    data = ProcessedDataset(tiny_data)
    index = json.loads((tiny_data / "index.json").read_text())
    assert data.frames.dtype == np.uint8 and data.frames.shape == (48, 18, 32, 3)
    assert isinstance(data.frames, np.memmap)
    assert index["image_size"] == [32, 18] and index["action_names"] == ["speed", "yaw_rate", "accel", "curvature"]
    assert sorted(index["splits"]["train"] + index["splits"]["val"]) == [s["name"] for s in index["scenes"]]
    assert len(index["splits"]["val"]) == 1
    stamps = np.load(tiny_data / "timestamps.npy")
    assert (np.diff(stamps[:12]) == 100_000).all()
    ids = np.load(tiny_data / "scene_ids.npy")
    for skip in (1, 2):
        w = WindowDataset(data, "train", 4, skip, 1)
        per_scene = 12 - (4 - 1) * skip
        assert len(w) == 3 * per_scene
        for i in range(len(w)):
            assert len(set(ids[w.frame_indices(i)])) == 1
        item = w[len(w) - 1]
        assert item["frames"].shape == (4, 3, 18, 32) and 0 <= item["frames"].min() and item["frames"].max() <= 1
    # with frame_skip 2 the action of a step is the mean of the two per-frame actions it spans
    w2 = WindowDataset(data, "train", 4, 2, 1)
    norm = data.normalise(data.actions)
    s0 = w2.starts[0]
    assert np.allclose(w2.actions_of(0)[1], norm[s0 + 2:s0 + 4].mean(0), atol=1e-6)


def test_sequence_longer_than_every_scene_is_a_user_error(tiny_data):
    with pytest.raises(UserError, match="longer than every"):
        WindowDataset(ProcessedDataset(tiny_data), "train", 13, 1, 1)


def test_nan_actions_are_refused(tiny_data, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_data, bad)
    a = np.load(bad / "actions.npy")
    a[20, 2] = np.nan
    np.save(bad / "actions.npy", a)
    with pytest.raises(UserError, match="NaN/Inf in actions at frame 20 \\(scene synthetic-0001\\)"):
        ProcessedDataset(bad)


def test_output_folder_is_refused_then_replaced_whole(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(UserError, match="not empty"):
        generate(out, num_scenes=2, num_frames=4, image_size=(16, 9))
    # a folder this tool did not write is never deleted, even with --overwrite (audit H1)
    with pytest.raises(UserError, match="did not write"):
        generate(out, num_scenes=2, num_frames=4, image_size=(16, 9), overwrite=True)
    assert (out / "stale.txt").read_text() == "old"
    generate(tmp_path / "mine", num_scenes=2, num_frames=4, image_size=(16, 9))
    (tmp_path / "mine" / "stale.txt").write_text("old")
    generate(tmp_path / "mine", num_scenes=2, num_frames=4, image_size=(16, 9), overwrite=True)
    assert not (tmp_path / "mine" / "stale.txt").exists() and (tmp_path / "mine" / "index.json").is_file()


def test_rollout_overwrite_refuses_cwd_and_foreign_folders(tmp_path, monkeypatch):
    from worldmodel.data import prepare_output_dir

    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("keep")
    monkeypatch.chdir(work)
    for target in (".", "..", str(tmp_path)):
        with pytest.raises(UserError, match="refusing to replace"):
            prepare_output_dir(target, overwrite=True)
    assert (work / "notes.txt").read_text() == "keep"



def test_rollout_output_is_staged_and_swapped_so_a_failed_rollout_keeps_the_old_one(tmp_path, monkeypatch):
    # audit A9: rollout --overwrite deleted the old output before the new one was computed
    from worldmodel.data import finish_output_dir, stage_output_dir

    out = tmp_path / "roll"
    tmp = stage_output_dir(out, overwrite=False)
    (tmp / "a.png").write_text("1")
    assert finish_output_dir(tmp, out, [tmp / "a.png"]) == [out / "a.png"]
    assert (out / ".trainkit_output").is_file() and not tmp.exists()
    tmp = stage_output_dir(out, overwrite=True)
    assert (out / "a.png").read_text() == "1"  # nothing deleted while the new output is being written
    (tmp / "b.png").write_text("2")
    finish_output_dir(tmp, out, [tmp / "b.png"])
    assert sorted(p.name for p in out.iterdir()) == [".trainkit_output", "b.png"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".roll")]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for target in (".", "..", str(tmp_path)):
        with pytest.raises(UserError, match="refusing to replace"):
            stage_output_dir(target, overwrite=True)


# ---------------------------------------------------------------- nuScenes (exact v1.0 schema, hand-made)
YAWS = [0.3, 0.35, 0.45, 0.5]
STEPS = [1.0, 1.2, 0.9]                       # metres driven along the current heading between frames
T0 = 1_533_151_603_512_404
OFFSETS = [0, 83_000, 170_000, 250_000]       # irregular camera intervals (dropped frames happen)


def _quat(yaw):
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def make_nuscenes(root, cam_front_in_second_scene=True, can_bus=False):
    """Two scenes; each: 2 keyframe samples and CAM_FRONT frames kf - sweep - sweep - kf chained by prev/next
    (the first scene's last frame links on into the second scene), plus a LIDAR_TOP keyframe per sample."""
    v = root / "v1.0-mini"
    v.mkdir(parents=True)
    tables = {k: [] for k in ("scene", "sample", "sample_data", "ego_pose", "calibrated_sensor", "sensor", "log")}
    tables["sensor"] = [{"token": "sen_cf", "channel": "CAM_FRONT", "modality": "camera"},
                        {"token": "sen_lid", "channel": "LIDAR_TOP", "modality": "lidar"}]
    tables["calibrated_sensor"] = [
        {"token": "cs_cf", "sensor_token": "sen_cf", "translation": [1.7, 0, 1.5], "rotation": [1, 0, 0, 0],
         "camera_intrinsic": [[1266, 0, 816], [0, 1266, 491], [0, 0, 1]]},
        {"token": "cs_lid", "sensor_token": "sen_lid", "translation": [0.9, 0, 1.8], "rotation": [1, 0, 0, 0],
         "camera_intrinsic": []}]
    tables["log"] = [{"token": "log0", "logfile": "n015-2018-07-24-11-22-45+0800", "vehicle": "n015",
                      "date_captured": "2018-07-24", "location": "singapore-onenorth"}]
    prev_last = ""
    for si, name in enumerate(["scene-0061", "scene-0103"]):
        st, base = f"scene{si}", T0 + si * 10_000_000
        samples = [f"s{si}_0", f"s{si}_1"]
        tables["scene"].append({"token": st, "log_token": "log0", "nbr_samples": 2, "first_sample_token": samples[0],
                                "last_sample_token": samples[1], "name": name, "description": "test"})
        for k, tok in enumerate(samples):
            tables["sample"].append({"token": tok, "timestamp": base + OFFSETS[3 * k], "scene_token": st,
                                     "prev": samples[k - 1] if k else "", "next": samples[k + 1] if k == 0 else ""})
            tables["sample_data"].append({
                "token": f"lid{si}_{k}", "sample_token": tok, "ego_pose_token": f"ep_lid{si}_{k}",
                "calibrated_sensor_token": "cs_lid", "timestamp": base + OFFSETS[3 * k], "fileformat": "pcd",
                "is_key_frame": True, "height": 0, "width": 0,
                "filename": f"samples/LIDAR_TOP/x{si}{k}.pcd.bin", "prev": "", "next": ""})
            tables["ego_pose"].append({"token": f"ep_lid{si}_{k}", "timestamp": base + OFFSETS[3 * k],
                                       "rotation": _quat(0.0), "translation": [0.0, 0.0, 0.0]})
        if si == 1 and not cam_front_in_second_scene:
            continue
        x, y = 100.0 * si, 50.0
        toks = [f"cf{si}_{i}" for i in range(4)]
        for i in range(4):
            key = i in (0, 3)
            folder = "samples" if key else "sweeps"
            fname = f"{folder}/CAM_FRONT/n015__CAM_FRONT__{base + OFFSETS[i]}.jpg"
            (root / folder / "CAM_FRONT").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((36, 64, 3), 40 * i + 20 * si, np.uint8)).save(root / fname, quality=95)
            tables["sample_data"].append({
                "token": toks[i], "sample_token": samples[0] if i == 0 else samples[1],
                "ego_pose_token": f"ep{si}_{i}", "calibrated_sensor_token": "cs_cf", "timestamp": base + OFFSETS[i],
                "fileformat": "jpg", "is_key_frame": key, "height": 36, "width": 64, "filename": fname,
                "prev": toks[i - 1] if i else prev_last, "next": toks[i + 1] if i < 3 else ""})
            tables["ego_pose"].append({"token": f"ep{si}_{i}", "timestamp": base + OFFSETS[i],
                                       "rotation": _quat(YAWS[i]), "translation": [x, y, 0.0]})
            if i < 3:
                x += STEPS[i] * math.cos(YAWS[i])
                y += STEPS[i] * math.sin(YAWS[i])
        if prev_last:  # link the previous scene's last frame into this scene, as one continuous log would
            next(r for r in tables["sample_data"] if r["token"] == prev_last)["next"] = toks[0]
        prev_last = toks[3]
    for name, rows in tables.items():
        (v / f"{name}.json").write_text(json.dumps(rows))
    if can_bus:
        (root / "can_bus").mkdir()
        msgs = [{"utime": T0 - 10_000 + 20_000 * k, "vel": [5.0 + k, 0.1, 0], "rotation_rate": [0, 0, 0.01 * k],
                 "accel": [0.5, 0, 9.8], "pos": [0, 0, 0], "orientation": [1, 0, 0, 0]} for k in range(20)]
        (root / "can_bus" / "scene-0061_pose.json").write_text(json.dumps(msgs))
    return root


def test_nuscenes_reader_chain_split_and_hand_computed_actions(tmp_path):
    root = make_nuscenes(tmp_path / "nuscenes")
    scenes, extra = read_nuscenes(str(root), "v1.0-mini", (32, 18), smoothing=1, use_can_bus=True,
                                  val_fraction=0.2, log=lambda *a: None)
    assert [s.name for s in scenes] == ["scene-0061", "scene-0103"]
    assert [s.split for s in scenes] == ["train", "val"]          # the official mini split
    a = scenes[0]
    # the chain goes kf -> sweep -> sweep -> kf and stops at the scene boundary (no LIDAR rows, no next scene)
    assert len(a.frames) == 4 and a.frames.shape[1:] == (18, 32, 3)
    assert list(a.timestamps_us - T0) == OFFSETS
    assert [int(f.mean()) for f in a.frames] == pytest.approx([0, 40, 80, 120], abs=2)
    # by hand: dt = 0.083, 0.087, 0.080 s
    dt = [0.083, 0.087, 0.080]
    speed = [1.0 / 0.083, 1.2 / 0.087, 0.9 / 0.080]
    yaw_rate = [0.05 / 0.083, 0.10 / 0.087, 0.05 / 0.080]
    accel = [(speed[1] - speed[0]) / ((dt[0] + dt[1]) / 2), (speed[2] - speed[1]) / ((dt[1] + dt[2]) / 2)]
    expect = np.array([
        [speed[0], yaw_rate[0], accel[0], yaw_rate[0] / speed[0]],
        [speed[1], yaw_rate[1], accel[1], yaw_rate[1] / speed[1]],
        [speed[2], yaw_rate[2], accel[1], yaw_rate[2] / speed[2]],
        [speed[2], yaw_rate[2], accel[1], yaw_rate[2] / speed[2]],   # the last frame repeats the last interval
    ])
    assert np.allclose(a.actions, expect, rtol=1e-4, atol=1e-4)
    assert a.meta["action_source"] == "ego_pose" and extra["nuscenes"]["split_rule"].startswith("official")


def test_nuscenes_can_bus_actions_average_each_frame_interval(tmp_path):
    root = make_nuscenes(tmp_path / "nuscenes", can_bus=True)
    scenes, _ = read_nuscenes(str(root), "v1.0-mini", (32, 18), 1, True, 0.2, log=lambda *a: None)
    a = scenes[0]
    assert a.meta["action_source"] == "can_bus" and scenes[1].meta["action_source"] == "ego_pose"
    # messages at T0-10ms + 20ms*k; frame offsets 0, 83, 170, 250 ms: the intervals [0, 83), [83, 170),
    # [170, 250) hold k = 1-4, 5-8, 9-12 (row t = the motion from frame t to t+1, as from ego_pose); the last
    # frame repeats the last interval
    ks = [2.5, 6.5, 10.5, 10.5]
    assert np.allclose(a.actions[:, 0], [5.0 + k for k in ks])
    assert np.allclose(a.actions[:, 1], [0.01 * k for k in ks])
    assert np.allclose(a.actions[:, 2], 0.5)


def test_can_bus_interval_without_a_message_interpolates_its_midpoint(tmp_path):
    from worldmodel.sources import can_bus_actions

    msgs = [{"utime": u, "vel": [v, 0, 0], "rotation_rate": [0, 0, 0.0], "accel": [0.0, 0, 0]}
            for u, v in ((0, 1.0), (1000, 3.0))]
    (tmp_path / "scene-1_pose.json").write_text(json.dumps(msgs))
    # frames at 200 and 600 us: no message inside [200, 600) -> value at 400 us = 1.8; a lone frame at 2000 us
    # (past the log) takes the last message
    out = can_bus_actions(tmp_path, "scene-1", np.array([200, 600]), smoothing=1)
    assert np.allclose(out[:, 0], [1.8, 1.8])
    assert np.allclose(can_bus_actions(tmp_path, "scene-1", np.array([2000]), smoothing=1)[:, 0], [3.0])
    assert can_bus_actions(tmp_path, "scene-2", np.array([0, 1]), smoothing=1) is None


def test_nuscenes_missing_channel_table_and_image_errors(tmp_path):
    root = make_nuscenes(tmp_path / "a", cam_front_in_second_scene=False)
    with pytest.raises(UserError, match="scene scene-0103 has no CAM_FRONT"):
        read_nuscenes(str(root), "v1.0-mini", (32, 18), 1, False, 0.2, log=lambda *a: None)
    root = make_nuscenes(tmp_path / "b")
    (root / "v1.0-mini" / "ego_pose.json").unlink()
    with pytest.raises(UserError, match="missing nuScenes table ego_pose.json"):
        read_nuscenes(str(root), "v1.0-mini", (32, 18), 1, False, 0.2, log=lambda *a: None)
    root = make_nuscenes(tmp_path / "c")
    img = next((root / "sweeps" / "CAM_FRONT").glob("*.jpg"))
    img.unlink()
    with pytest.raises(UserError, match="image file is missing") as e:  # found before anything is decoded
        read_nuscenes(str(root), "v1.0-mini", (32, 18), 1, False, 0.2, log=lambda *a: None)
    assert img.name in str(e.value)


def test_prepare_streams_frames_and_an_unreadable_image_loses_nothing(tmp_path):
    # Frames are decoded one at a time while writing (no whole-dataset stack in RAM). An unreadable image
    # found mid-write must leave neither a half-written dataset nor lose the one --overwrite would replace.
    from worldmodel.data import LazyFrames

    root = make_nuscenes(tmp_path / "nuscenes")
    cfg = load_config(Config, None, ["data.dataset=nuscenes", "data.image_size=[32,18]"])
    scenes, _ = read_nuscenes(str(root), "v1.0-mini", (32, 18), 1, False, 0.2, log=lambda *a: None)
    assert all(isinstance(s.frames, LazyFrames) for s in scenes)
    out = prepare(cfg, data_root=str(root), out=str(tmp_path / "proc"), overwrite=False, allow_pickle=False,
                  log=lambda *a: None)
    before = np.load(out / "frames.npy").copy()
    img = sorted((root / "sweeps" / "CAM_FRONT").glob("*.jpg"))[-1]
    img.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="unreadable image") as e:
        prepare(cfg, data_root=str(root), out=str(out), overwrite=True, allow_pickle=False, log=lambda *a: None)
    assert img.name in str(e.value)
    assert np.array_equal(np.load(out / "frames.npy"), before)  # the old dataset is still whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nuscenes", "proc"]  # no partial folder left


def test_prepare_nuscenes_keeps_16_9(tmp_path):
    root = make_nuscenes(tmp_path / "nuscenes")
    cfg = load_config(Config, None, ["data.dataset=nuscenes", "data.image_size=[32,18]"])
    out = prepare(cfg, data_root=str(root), out=str(tmp_path / "proc"), overwrite=False, allow_pickle=False,
                  log=lambda *a: None)
    d = ProcessedDataset(out)
    assert d.image_size == (32, 18) and d.index["source"] == "nuscenes" and d.index["action_units"][0] == "m/s"
    desc = d.describe()
    assert desc["scenes"][0]["frames"] == 4 and desc["scenes"][0]["duration_s"] == pytest.approx(0.25)


# ---------------------------------------------------------------- CARLA (MILE layout)
def make_carla(root, n=5, pickle_only_run=False):
    for town, run in (("Town01", "0000"), ("Town02", "0000")):
        d = root / town / run / "image"
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((60, 96, 3), 10 * i, np.uint8)).save(d / f"image_{i:09d}.png")
        rows = [{"throttle": 0.5, "steer": -0.1 * i, "brake": 0.0, "speed": 3.0 + i} for i in range(n)]
        if pickle_only_run and town == "Town02":
            with (d.parent / "pd_dataframe.pkl").open("wb") as fh:
                pickle.dump({k: [r[k] for r in rows] for k in rows[0]}, fh)
            continue
        with (d.parent / "pd_dataframe.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return root


def test_carla_reader_csv_town_split_and_pickle_flag(tmp_path):
    root = make_carla(tmp_path / "carla")
    scenes, extra = read_carla(str(root), (32, 18), 25.0, 0.2, False, log=lambda *a: None)
    assert [(s.name, s.split) for s in scenes] == [("Town01/0000", "train"), ("Town02/0000", "val")]
    assert np.allclose(scenes[0].actions[:, 1], [-0.1 * i for i in range(5)])
    assert np.allclose(scenes[0].actions[:, 3], [3.0 + i for i in range(5)])
    assert list(scenes[0].timestamps_us) == [0, 40_000, 80_000, 120_000, 160_000]
    assert scenes[0].frames.shape == (5, 18, 32, 3)     # 96x60 center-cropped to 16:9, not squashed
    root2 = make_carla(tmp_path / "carla2", pickle_only_run=True)
    with pytest.raises(UserError, match="is a pickle"):
        read_carla(str(root2), (32, 18), 25.0, 0.2, False, log=lambda *a: None)
    scenes, _ = read_carla(str(root2), (32, 18), 25.0, 0.2, True, log=lambda *a: None)
    assert np.allclose(scenes[1].actions[:, 3], [3.0 + i for i in range(5)])


def test_carla_row_count_mismatch_names_the_table(tmp_path):
    root = make_carla(tmp_path / "carla")
    next((root / "Town01" / "0000" / "image").glob("*.png")).unlink()
    with pytest.raises(UserError, match="4 images") as e:
        read_carla(str(root), (32, 18), 25.0, 0.2, False, log=lambda *a: None)
    assert "pd_dataframe.csv" in str(e.value)


def test_carla_reader_takes_miles_action_column(tmp_path):
    """MILE's table has one `action` column of (throttle, steering, brake); pickled as tuples, in CSV as text."""
    root = make_carla(tmp_path / "carla", pickle_only_run=True)
    for town in ("Town01", "Town02"):
        run = root / town / "0000"
        for f in run.glob("pd_dataframe.*"):
            f.unlink()
        rows = {"action": [(0.5, -0.1 * i, 0.0) for i in range(5)], "speed": [3.0 + i for i in range(5)],
                "reward": [1.0] * 5}
        if town == "Town01":
            with (run / "pd_dataframe.csv").open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["action", "speed", "reward"])
                w.writerows([[str(a), s, r] for a, s, r in zip(rows["action"], rows["speed"], rows["reward"])])
        else:
            with (run / "pd_dataframe.pkl").open("wb") as fh:
                pickle.dump(rows, fh)
    scenes, _ = read_carla(str(root), (32, 18), 25.0, 0.2, True, log=lambda *a: None)
    for s in scenes:
        assert np.allclose(s.actions[:, :3], [[0.5, -0.1 * i, 0.0] for i in range(5)])
    csv_path = root / "Town01" / "0000" / "pd_dataframe.csv"
    csv_path.write_text(csv_path.read_text().replace("(0.5, -0.1, 0.0)", "(0.5, oops)"))
    with pytest.raises(UserError, match="row 1") as e:
        read_carla(str(root), (32, 18), 25.0, 0.2, True, log=lambda *a: None)
    assert "pd_dataframe.csv" in str(e.value)


def test_driving_augmentation_one_draw_per_window_same_for_all_its_frames():
    from worldmodel.data import DrivingAugmentation

    torch.manual_seed(0)
    frame = torch.rand(1, 1, 3, 18, 32)
    frames = torch.cat([frame.expand(2, 3, 3, 18, 32), torch.rand(1, 3, 3, 18, 32)])   # 2 static windows + 1
    aug = DrivingAugmentation(0.3, 0.3, (0.5, 0.9))
    a = aug(frames, torch.Generator().manual_seed(1))
    assert a.shape == frames.shape and 0 <= a.min() and a.max() <= 1
    assert torch.allclose(a[0, 0], a[0, 2]) and torch.allclose(a[1, 0], a[1, 1])   # frames of a window alike
    assert not torch.allclose(a[0], a[1], atol=1e-3)                                # windows draw their own
    assert torch.equal(a, aug(frames, torch.Generator().manual_seed(1)))            # reproducible
    assert not torch.allclose(a[0, 0], frame[0, 0], atol=1e-2)                      # it does change the frame
    ident = DrivingAugmentation(0.0, 0.0, (1.0, 1.0))(frames, torch.Generator().manual_seed(1))
    assert torch.allclose(ident, frames, atol=1e-6)


def test_training_applies_augmentation_only_when_enabled(tiny_cfg, monkeypatch, tmp_path):
    from worldmodel import data as wd
    from worldmodel.train import train

    calls = []
    real = wd.DrivingAugmentation.__call__
    monkeypatch.setattr(wd.DrivingAugmentation, "__call__", lambda self, f, g: calls.append(f.shape) or real(self, f, g))
    train(tiny_cfg("training.max_steps=2"), log=lambda *a: None)
    assert calls == []
    cfg = tiny_cfg("training.max_steps=2", "data.augmentation.enabled=true", f"training.save_dir={tmp_path / 'aug'}")
    train(cfg, log=lambda *a: None)
    assert len(calls) == 2 and calls[0][0] == cfg.training.batch_size
