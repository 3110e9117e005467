"""Raw sources -> the processed format: nuScenes v1.0 tables (read directly, no devkit), CARLA recordings in
MILE's layout, and the synthetic default. Entry point: ``prepare`` (`worldmodel prepare-dataset`)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy.ndimage import uniform_filter1d

from trainkit.errors import UserError

from .config import Config
from trainkit.runsafety import check_replaceable, swap_in

from .data import LazyFrames, Scene, prepare_output_dir, write_processed

# python-sdk/nuscenes/utils/splits.py: the official mini split
MINI_TRAIN = ["scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796", "scene-1077", "scene-1094",
              "scene-1100"]
MINI_VAL = ["scene-0103", "scene-0916"]
NUSCENES_TABLES = ("scene", "sample", "sample_data", "ego_pose", "calibrated_sensor", "sensor")
EGO_ACTION_NAMES = ["speed", "yaw_rate", "accel", "curvature"]
EGO_ACTION_UNITS = ["m/s", "rad/s", "m/s^2", "1/m"]
MIN_SPEED_FOR_CURVATURE = 1.0  # m/s; below it curvature = yaw_rate / speed is noise, so it is set to 0


def prepare(cfg: Config, *, data_root: str | None, out: str | None, overwrite: bool, allow_pickle: bool,
            log=print) -> Path:
    d = cfg.data
    out = Path(out) if out else Path("data/processed") / d.dataset
    if d.dataset != "synthetic" and data_root is None:
        raise UserError("--data-root is required", f"--dataset {d.dataset}", "the folder holding the raw data")
    if d.dataset == "synthetic":
        from .synthetic import generate

        return generate(out, num_scenes=d.synthetic_scenes, num_frames=d.synthetic_frames, image_size=d.image_size,
                        seed=d.synthetic_seed, val_fraction=d.val_fraction, overwrite=overwrite, log=log,
                        version=d.synthetic_version)
    if d.dataset == "nuscenes":
        scenes, extra = read_nuscenes(data_root, d.version, tuple(d.image_size), d.action_smoothing, d.use_can_bus,
                                      d.val_fraction, log=log)
        names, units, steer = EGO_ACTION_NAMES, EGO_ACTION_UNITS, 1
    else:
        scenes, extra = read_carla(data_root, tuple(d.image_size), d.carla_fps, d.val_fraction, allow_pickle, log=log)
        names, units, steer = CARLA_ACTION_NAMES, CARLA_ACTION_UNITS, 1
    # Frames are decoded while writing (LazyFrames), so an unreadable image can surface mid-write: write into
    # a sibling folder and swap it in only when complete, so a failure never leaves a half-written dataset
    # or loses the one that --overwrite would have replaced.
    if out.exists() and not out.is_dir():
        raise UserError("output path is a file", str(out), "a directory (new or empty)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError("output directory is not empty", str(out), "a new or empty directory, or --overwrite")
    check_replaceable(out, flag="--overwrite")   # refuses a folder this tool did not write, before any work
    partial = prepare_output_dir(out.with_name(f".{out.name}.partial"), overwrite=True)
    try:
        write_processed(partial, scenes, source=d.dataset, action_names=names, action_units=units,
                        steer_channel=steer, extra=extra)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    swap_in(partial, out)
    return out


# ------------------------------------------------------------------ images
def load_frame(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Read an image, center-crop it to the target aspect ratio (never squash), resize to ``size`` (W, H)."""
    if not path.is_file():
        raise UserError("image file is missing", str(path), "the file named by the table")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            tw, th = size
            target = tw / th
            if abs(w / h - target) > 1e-3:
                if w / h > target:
                    nw = round(h * target)
                    im = im.crop(((w - nw) // 2, 0, (w - nw) // 2 + nw, h))
                else:
                    nh = round(w / target)
                    im = im.crop((0, (h - nh) // 2, w, (h - nh) // 2 + nh))
            im = im.resize((tw, th), Image.BILINEAR, reducing_gap=3.0)
            return np.asarray(im, np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise UserError("unreadable image", str(path), f"a JPEG/PNG image ({err.__class__.__name__})") from None


# ------------------------------------------------------------------ ego actions
def quaternion_yaw(q) -> float:
    """Yaw (rad) of a [w, x, y, z] quaternion: the heading of the rotated x axis in the map plane."""
    w, x, y, z = q
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def wrap_angle(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def ego_actions_from_poses(timestamps_us: np.ndarray, xy: np.ndarray, yaw: np.ndarray, smoothing: int = 1,
                           where: str = "ego_pose") -> np.ndarray:
    """Per-frame [speed m/s, yaw_rate rad/s, accel m/s^2, curvature 1/m] by finite differences over real
    timestamps. Row t describes the motion from frame t to t+1 (the last frame repeats the last interval):

    - speed[t]     = displacement rotated into the heading at t (signed longitudinal) / dt
    - yaw_rate[t]  = wrap(yaw[t+1] - yaw[t]) / dt                      (+ = turning left)
    - accel[t]     = (speed[t+1] - speed[t]) / mean(dt[t], dt[t+1])
    - curvature[t] = yaw_rate[t] / speed[t] where |speed| >= 1 m/s, else 0
    Speed, yaw rate and accel are smoothed by a centred moving average of ``smoothing`` frames first.
    """
    n = len(timestamps_us)
    if n < 2:
        raise UserError("a scene needs at least 2 frames to derive actions", where, ">= 2 frames")
    dt = np.diff(timestamps_us.astype(np.float64)) / 1e6
    if (dt <= 0).any():
        raise UserError("timestamps do not increase", where, "strictly increasing sample_data timestamps")
    d = np.diff(xy, axis=0)
    lon = np.cos(yaw[:-1]) * d[:, 0] + np.sin(yaw[:-1]) * d[:, 1]
    speed = lon / dt
    yaw_rate = wrap_angle(np.diff(yaw)) / dt
    if n > 2:
        accel = np.diff(speed) / (0.5 * (dt[:-1] + dt[1:]))
        accel = np.append(accel, accel[-1])
    else:
        accel = np.zeros(1)
    per_frame = np.stack([np.append(x, x[-1]) for x in (speed, yaw_rate, accel)], 1)
    return _finish_actions(per_frame, smoothing)


def _finish_actions(sva: np.ndarray, smoothing: int) -> np.ndarray:
    s = sva.astype(np.float64)
    if smoothing > 1:
        s = uniform_filter1d(s, size=smoothing, axis=0, mode="nearest")
    speed, yaw_rate = s[:, 0], s[:, 1]
    curvature = np.where(np.abs(speed) >= MIN_SPEED_FOR_CURVATURE, yaw_rate / np.where(speed == 0, 1, speed), 0.0)
    return np.concatenate([s, curvature[:, None]], 1).astype(np.float32)


def can_bus_actions(can_dir: Path, scene_name: str, timestamps_us: np.ndarray, smoothing: int) -> np.ndarray | None:
    """[speed, yaw_rate, accel, curvature] from CAN ``pose`` messages (ego frame: vel[0] m/s,
    rotation_rate[2] rad/s, accel[0] m/s^2), with the same meaning of row t as ``ego_actions_from_poses``:
    the motion from frame t to t+1. Row t is the mean of the messages in [t_t, t_{t+1}) (CAN pose runs at
    ~50 Hz, so a 12 Hz camera interval holds ~4); an interval with no message takes the values linearly
    interpolated at its midpoint (the first / last message beyond the log's ends). The last frame repeats the
    last interval; a one-frame scene takes the values at its timestamp. None when the scene has no pose file.

    Why not "the last message at or before frame t": that is the state half a frame earlier than the
    ego_pose definition, and a dataset whose scenes mix both sources (some nuScenes scenes have no CAN data)
    would then mix two definitions under one normalisation.
    """
    path = can_dir / f"{scene_name}_pose.json"
    if not path.is_file():
        return None
    try:
        msgs = json.loads(path.read_text())
        utime = np.array([m["utime"] for m in msgs], np.int64)
        vals = np.array([[m["vel"][0], m["rotation_rate"][2], m["accel"][0]] for m in msgs], np.float64)
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
        raise UserError("malformed CAN bus pose file", str(path), f"messages with utime, vel, rotation_rate, accel ({err})")
    if len(utime) == 0:
        return None
    order = np.argsort(utime, kind="stable")
    utime, vals = utime[order], vals[order]
    t = np.asarray(timestamps_us, np.int64)

    def interpolated(at: np.ndarray) -> np.ndarray:
        return np.stack([np.interp(at, utime, vals[:, k]) for k in range(vals.shape[1])], 1)

    if len(t) < 2:
        return _finish_actions(interpolated(t.astype(np.float64)), smoothing)
    lo, hi = t[:-1], t[1:]
    first, last = np.searchsorted(utime, lo, side="left"), np.searchsorted(utime, hi, side="left")
    cumulative = np.vstack([np.zeros((1, vals.shape[1])), np.cumsum(vals, axis=0)])
    count = (last - first)[:, None]
    mean = (cumulative[last] - cumulative[first]) / np.maximum(count, 1)
    per_interval = np.where(count > 0, mean, interpolated((lo + hi) / 2.0))
    return _finish_actions(np.vstack([per_interval, per_interval[-1:]]), smoothing)


# ------------------------------------------------------------------ nuScenes
def _read_table(folder: Path, name: str) -> list[dict]:
    path = folder / f"{name}.json"
    if not path.is_file():
        raise UserError(f"missing nuScenes table {name}.json", str(path), f"the v1.0 tables ({', '.join(NUSCENES_TABLES)})")
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError("table is not valid JSON", str(path), str(err)) from None
    if not isinstance(rows, list):
        raise UserError("table is not a JSON list", str(path), "a list of records with a 'token' key")
    return rows


def cam_front_chains(tables: dict[str, list[dict]], channel: str = "CAM_FRONT") -> dict[str, list[dict]]:
    """scene token -> its ``channel`` sample_data rows in time order, keyframes and sweeps.

    Raw sample_data rows carry no channel: it comes from sample_data -> calibrated_sensor -> sensor. The chain
    starts at the scene's first keyframe, walks back through preceding sweeps of the same scene, then follows
    ``next`` while the frame's sample (for sweeps, the following keyframe) belongs to the scene.
    """
    sensor_channel = {s["token"]: s["channel"] for s in tables["sensor"]}
    cs_channel = {c["token"]: sensor_channel.get(c["sensor_token"]) for c in tables["calibrated_sensor"]}
    sample_scene = {s["token"]: s["scene_token"] for s in tables["sample"]}
    by_token = {sd["token"]: sd for sd in tables["sample_data"]}
    keyframe_of_sample = {}
    for sd in tables["sample_data"]:
        if sd.get("is_key_frame") and cs_channel.get(sd["calibrated_sensor_token"]) == channel:
            keyframe_of_sample[sd["sample_token"]] = sd
    chains = {}
    for scene in tables["scene"]:
        first = keyframe_of_sample.get(scene["first_sample_token"])
        if first is None:
            raise UserError(f"scene {scene['name']} has no {channel} frame", "sample_data.json",
                            f"a {channel} keyframe for the scene's first sample (via calibrated_sensor -> sensor)")

        def in_scene(sd):
            return sd is not None and sample_scene.get(sd["sample_token"]) == scene["token"]

        head = first
        while head.get("prev") and in_scene(by_token.get(head["prev"])):
            head = by_token[head["prev"]]
        chain = [head]
        while chain[-1].get("next") and in_scene(by_token.get(chain[-1]["next"])):
            chain.append(by_token[chain[-1]["next"]])
        chains[scene["token"]] = chain
    return chains


def read_nuscenes(root: str, version: str, size: tuple[int, int], smoothing: int, use_can_bus: bool,
                  val_fraction: float, log=print) -> tuple[list[Scene], dict]:
    root_p = Path(root)
    folder = root_p / version
    if not folder.is_dir():
        raise UserError(f"nuScenes table folder {version} not found", str(folder),
                        "the nuScenes root holding v1.0-*/ (e.g. --data-root data/nuscenes --version v1.0-mini)")
    tables = {name: _read_table(folder, name) for name in NUSCENES_TABLES}
    poses = {p["token"]: p for p in tables["ego_pose"]}
    chains = cam_front_chains(tables)
    can_dir = root_p / "can_bus"
    names = [s["name"] for s in tables["scene"]]
    if version == "v1.0-mini":
        val_names = set(MINI_VAL)
        split_rule = "official v1.0-mini split (mini_train 8 / mini_val 2)"
    else:
        order = np.random.default_rng(0).permutation(sorted(names))
        val_names = set(order[:max(1, round(len(names) * val_fraction))].tolist())
        split_rule = f"seeded scene-level split, val_fraction {val_fraction}"
    scenes = []
    for scene in tables["scene"]:
        chain = chains[scene["token"]]
        ts = np.array([sd["timestamp"] for sd in chain], np.int64)
        try:
            ego = [poses[sd["ego_pose_token"]] for sd in chain]
        except KeyError as err:
            raise UserError(f"ego_pose {err} of scene {scene['name']} is missing", str(folder / "ego_pose.json"),
                            "one ego_pose per sample_data row") from None
        xy = np.array([p["translation"][:2] for p in ego], np.float64)
        yaw = np.array([quaternion_yaw(p["rotation"]) for p in ego])
        actions, source = None, "ego_pose"
        if use_can_bus and can_dir.is_dir():
            actions = can_bus_actions(can_dir, scene["name"], ts, smoothing)
            source = "can_bus" if actions is not None else source
        if actions is None:
            actions = ego_actions_from_poses(ts, xy, yaw, smoothing, where=f"scene {scene['name']}")
        paths = [root_p / sd["filename"] for sd in chain]
        missing = next((q for q in paths if not q.is_file()), None)
        if missing is not None:  # fail before writing anything, not halfway through the memmap
            raise UserError("image file is missing", str(missing), "the file named by sample_data.json")
        frames = LazyFrames(paths, size, load_frame)  # decoded one by one while writing (bounded memory)
        scenes.append(Scene(scene["name"], frames, ts, actions, "val" if scene["name"] in val_names else "train",
                            {"action_source": source, "keyframes": int(sum(bool(sd.get("is_key_frame")) for sd in chain))}))
        log(f"{scene['name']}: {len(chain)} CAM_FRONT frames over {(ts[-1] - ts[0]) / 1e6:.1f} s, actions from {source}")
    extra = {"nuscenes": {"version": version, "split_rule": split_rule, "action_smoothing": smoothing,
                          "min_speed_for_curvature": MIN_SPEED_FOR_CURVATURE}}
    return scenes, extra


# ------------------------------------------------------------------ CARLA (MILE layout)
CARLA_ACTION_NAMES = ["throttle", "steer", "brake", "speed"]
CARLA_ACTION_UNITS = ["0..1", "-1..1 (+ = right)", "0..1", "m/s"]
CARLA_VAL_TOWNS = ("Town02", "Town05")  # MILE's validation towns


def _carla_table(run: Path, allow_pickle: bool) -> tuple[dict[str, list], Path]:
    csvs = sorted(run.glob("*.csv"))
    if csvs:
        path = csvs[0]
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        cols = {k: [r[k] for r in rows] for k in (rows[0].keys() if rows else [])}
        return cols, path
    pkl = run / "pd_dataframe.pkl"
    if pkl.is_file():
        if not allow_pickle:
            raise UserError("the action table is a pickle", str(pkl),
                            "a CSV table (e.g. pd_dataframe.csv), or --allow-pickle if you trust the file "
                            "(unpickling can run arbitrary code)")
        import pickle

        try:
            with pkl.open("rb") as fh:
                obj = pickle.load(fh)  # noqa: S301 - the user opted in with --allow-pickle
        except ModuleNotFoundError as err:
            raise UserError(f"the pickle needs {err.name}, which is not installed", str(pkl),
                            "export the table as CSV (df.to_csv('pd_dataframe.csv'))") from None
        if hasattr(obj, "to_dict"):
            obj = obj.to_dict(orient="list")
        if isinstance(obj, list):
            obj = {k: [r[k] for r in obj] for k in obj[0]} if obj else {}
        if not isinstance(obj, dict):
            raise UserError("unsupported pickled table", str(pkl), "a DataFrame, dict of lists or list of dicts")
        return obj, pkl
    raise UserError("no action table in the run", str(run), "a *.csv table (or pd_dataframe.pkl with --allow-pickle)")


def _split_action_column(table: dict, tpath: Path) -> dict:
    """MILE's own table (mile/data/dataset.py) has one ``action`` column of (throttle, steering, brake) per row;
    in a CSV export that cell is the string "(0.5, 0.1, 0.0)" or "[0.5, 0.1, 0.0]". Split it into the three
    columns (separate throttle/steer/brake columns are used as they are)."""
    if "action" not in table or all(c in table for c in ("throttle", "steer", "brake")):
        return table
    parts = []
    for row, cell in enumerate(table["action"]):
        if isinstance(cell, str):
            cell = [v for v in cell.strip().strip("()[]").replace(",", " ").split() if v]
        try:
            vals = [float(v) for v in cell]
        except (TypeError, ValueError):
            vals = []
        if len(vals) != 3:
            raise UserError(f"action cell {cell!r} in row {row} is not (throttle, steering, brake)", str(tpath),
                            "three numbers per row, as MILE records them")
        parts.append(vals)
    out = dict(table)
    for i, name in enumerate(("throttle", "steer", "brake")):
        out[name] = [p[i] for p in parts]
    return out


def read_carla(root: str, size: tuple[int, int], fps: float, val_fraction: float, allow_pickle: bool,
               log=print) -> tuple[list[Scene], dict]:
    root_p = Path(root)
    if not root_p.is_dir():
        raise UserError("CARLA data folder not found", str(root_p), "a folder of Town*/NNNN/image/*.png runs")
    runs = sorted(p.parent for p in root_p.rglob("image") if p.is_dir() and any(p.glob("*.png")))
    if not runs:
        raise UserError("no CARLA runs found", str(root_p), "Town*/NNNN/image/*.png with an action table per run")
    raw = []
    for run in runs:
        table, tpath = _carla_table(run, allow_pickle)
        table = _split_action_column(table, tpath)
        missing = [c for c in ("throttle", "steer", "brake", "speed") if c not in table]
        if missing:
            raise UserError(f"action table lacks {', '.join(missing)}", str(tpath), "columns throttle, steer, brake, speed")
        images = sorted((run / "image").glob("*.png"))
        if len(table["speed"]) != len(images):
            raise UserError(f"{len(table['speed'])} table rows for {len(images)} images", str(tpath),
                            "one row per image/*.png frame")
        try:
            actions = np.array([[float(v) for v in table[c]] for c in ("throttle", "steer", "brake", "speed")],
                               np.float64).T.astype(np.float32)
        except ValueError as err:
            raise UserError("non-numeric action value", str(tpath), str(err)) from None
        if not np.isfinite(actions).all():
            row = int(np.argwhere(~np.isfinite(actions))[0, 0])
            raise UserError(f"NaN/Inf action in row {row}", str(tpath), "finite throttle, steer, brake, speed")
        if "timestamp" in table:
            ts = (np.array([float(v) for v in table["timestamp"]]) * 1e6).round().astype(np.int64)
        else:
            ts = (np.arange(len(images)) * 1e6 / fps).round().astype(np.int64)
        town = next((p for p in run.relative_to(root_p).parts if p.lower().startswith("town")), "")
        raw.append((run, town, images, actions, ts))
    towns = {t for _, t, *_ in raw}
    by_town = any(t in CARLA_VAL_TOWNS for t in towns) and any(t not in CARLA_VAL_TOWNS for t in towns)
    names = [str(r.relative_to(root_p)) for r, *_ in raw]
    if by_town:
        val = {n for n, (_, t, *_) in zip(names, raw) if t in CARLA_VAL_TOWNS}
        rule = f"MILE's town split (val: {', '.join(CARLA_VAL_TOWNS)})"
    else:
        order = np.random.default_rng(0).permutation(sorted(names))
        val = set(order[:max(1, round(len(names) * val_fraction))].tolist()) if len(names) > 1 else set()
        rule = f"seeded run-level split, val_fraction {val_fraction}"
    scenes = []
    for name, (run, town, images, actions, ts) in zip(names, raw):
        frames = LazyFrames(images, size, load_frame)  # decoded one by one while writing (bounded memory)
        scenes.append(Scene(name, frames, ts, actions, "val" if name in val else "train", {"town": town}))
        log(f"{name}: {len(images)} frames")
    return scenes, {"carla": {"split_rule": rule, "fps_when_no_timestamp": fps}}
