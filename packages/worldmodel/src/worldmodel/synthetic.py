"""The embedded default: procedurally rendered first-person driving whose next frame depends on the actions.

Each episode drives a car along a winding two-lane road (Frenet kinematics: arc length s, lateral offset
e_y, heading error psi, speed v). A lane-keeping controller with random lane changes, steering perturbations
and throttle/brake segments chooses yaw rate and acceleration; the camera (1.4 m high, 90 degree FOV) sees:

- sky with clouds and distant hills placed by azimuth, so any heading change shifts them sideways;
- the road in perspective (asphalt, dashed centre line, edge lines, red/white curbs, mowed grass stripes),
  curving with the road ahead and with psi; markings flow toward the camera at the car's speed;
- roadside trees/posts and other vehicles (own lanes and speeds), drawn far to near.

Recorded actions use the same channels and units as the nuScenes path: longitudinal speed (m/s), yaw rate
(rad/s, + = left), acceleration (m/s^2), curvature (1/m). Frames are rendered at 2x and box-filtered down.
Deterministic given the seed and the generator version. Written through ``data.write_processed`` like every real
source.

Generator versions (``data.synthetic_version``; the version is written into ``index.json``):

- **1** (session <= 18): speed 5-12 m/s, gentle throttle/brake (|a| <= 2.5 m/s^2), low-contrast ground texture.
  At 48x27 the speed barely shows, and a model trained on it ignores the speed and acceleration channels
  (audit: <= 0.10 dB when only those are swapped). Kept bit-exact so old datasets and runs reproduce.
- **2** (default): speed 1-20 m/s with hard braking (-6 .. -2 m/s^2), throttle and coasting segments, and ground
  texture that shows forward motion at low resolution: high-contrast grass bands (3 m period), transverse
  asphalt patches, wide centre dashes (4 m period) and roadside posts every 5 m. The flow of road and scenery
  toward the camera is then proportional to the speed, so "what if I brake" changes the predicted frames.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .data import Scene, prepare_output_dir, write_processed

DT = 0.1                  # seconds per frame (10 Hz)
CAM_HEIGHT = 1.4
LANE = 3.5                # lane width (m); the road has two lanes, centre line at u = 0
ROAD_HALF = LANE
CURB = 0.45
ACTION_NAMES = ["speed", "yaw_rate", "accel", "curvature"]
ACTION_UNITS = ["m/s", "rad/s", "m/s^2", "1/m"]
STEER_CHANNEL = 1
MAX_DIST = 80.0
SYNTHETIC_VERSIONS = (1, 2)
LATEST_VERSION = 2


class Road:
    """Curvature as a smooth random function of arc length; heading and lateral offset by integration."""

    def __init__(self, rng: np.random.Generator, length: float):
        self.ds = 0.25
        self.s = np.arange(0, length + MAX_DIST + 10, self.ds)
        k = np.zeros_like(self.s)
        for _ in range(3):
            amp, period, phase = rng.uniform(0.0, 0.012), rng.uniform(60, 180), rng.uniform(0, 2 * np.pi)
            k += amp * np.sin(2 * np.pi * self.s / period + phase)
        self.kappa = k
        self.theta = np.concatenate([[0.0], np.cumsum(k[:-1] * self.ds)])  # road heading (rad)

    def curvature(self, s):
        return np.interp(s, self.s, self.kappa)

    def heading(self, s):
        return np.interp(s, self.s, self.theta)

    def ahead(self, s0: float, d: np.ndarray) -> np.ndarray:
        """Lateral offset (left +) of the centreline d metres ahead of s0, in the road frame at s0."""
        grid = np.arange(0.0, MAX_DIST + 1.0, 0.5)
        th = self.heading(s0 + grid) - self.heading(s0)
        lat = np.concatenate([[0.0], np.cumsum(np.sin(th[:-1]) * 0.5)])
        return np.interp(d, grid, lat)


def _hash01(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer cell (a, b)."""
    h = (a.astype(np.int64) * 73856093) ^ (b.astype(np.int64) * 19349663) ^ (seed * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


class Renderer:
    def __init__(self, width: int, height: int, episode_seed: int, rng: np.random.Generator, length: float,
                 version: int = 1):
        self.version = version
        self.w, self.h = width * 2, height * 2      # supersampled
        self.out_w, self.out_h = width, height
        self.f = self.w / 2.0                         # 90 degree horizontal FOV
        self.cx = self.w / 2.0
        self.horizon = 0.42 * self.h
        self.seed = episode_seed
        self.road = Road(rng, length)
        self.sky_top = rng.uniform([0.25, 0.45, 0.75], [0.4, 0.6, 0.9])
        self.grass = rng.uniform([0.2, 0.45, 0.15], [0.3, 0.6, 0.25])
        self.asphalt = rng.uniform(0.28, 0.42)
        n_obj = int(length / 10) + 20
        self.obj_s = np.arange(n_obj) * 10.0 + rng.uniform(0, 8, n_obj)
        self.obj_side = rng.choice([-1.0, 1.0], n_obj)
        self.obj_off = rng.uniform(5.0, 9.0, n_obj)
        self.obj_kind = rng.integers(0, 3, n_obj)    # 0 tree, 1 post, 2 bush
        self.hill_phase = rng.uniform(0, 2 * np.pi, 3)
        self.cloud_phase = rng.uniform(0, 2 * np.pi, 4)
        n_cars = int(rng.integers(1, 4))
        self.cars = [(rng.uniform(10, 60), rng.choice([-1.75, 1.75]), rng.uniform(5, 12),
                      rng.uniform(0.1, 0.9, 3)) for _ in range(n_cars)]
        if version >= 2:   # drawn after every v1 draw, so the rest of the scene matches v1 for the same seed
            n_posts = int(length / 5) + 40
            self.post_s = np.arange(n_posts) * 5.0 + rng.uniform(0, 1.0)
            self.post_side = np.where(np.arange(n_posts) % 2 == 0, -1.0, 1.0)
        ys, xs = np.mgrid[0:self.h, 0:self.w].astype(np.float32) + 0.5
        self.ys, self.xs = ys, xs

    def render(self, s: float, e_y: float, psi: float, t: float) -> np.ndarray:
        h, w, f = self.h, self.w, self.f
        img = np.empty((h, w, 3), np.float32)
        ys, xs = self.ys, self.xs
        yaw = self.road.heading(s) + psi                        # absolute camera heading
        azimuth = np.arctan((xs[0] - self.cx) / f) - yaw        # per column; right of centre = positive
        # sky: vertical gradient plus clouds by azimuth
        sky = ys < self.horizon
        grad = (ys / self.horizon)[..., None]
        sky_col = self.sky_top * (1 - grad) + np.array([0.85, 0.88, 0.92]) * grad
        cloud = sum(np.sin(az * k + p) for az, k, p in zip([azimuth] * 4, (3, 7, 13, 23), self.cloud_phase))
        cloud_mask = cloud > 1.0 + 4.0 * np.abs(ys / self.horizon - 0.3)  # lens-shaped banks
        sky_col = np.where(cloud_mask[..., None], 0.95, sky_col)
        # distant hills: silhouette height by azimuth
        hill_h = 0.12 * self.horizon * (1.5 + sum(np.sin(azimuth * k + p) for k, p in zip((2, 5, 11), self.hill_phase)))
        hill = (ys > self.horizon - hill_h[None, :]) & sky
        img[:] = sky_col
        img[hill] = np.array([0.25, 0.38, 0.3])
        # ground
        ground = ~sky
        yg = ys[ground] - self.horizon
        z = CAM_HEIGHT * f / np.maximum(yg, 1e-3)               # forward distance in the camera frame
        xc = -(xs[ground] - self.cx) * z / f                    # lateral, left +
        c, sn = np.cos(psi), np.sin(psi)
        d_along = z * c - xc * sn
        lat = e_y + xc * c + z * sn
        u = lat - self.road.ahead(s, np.clip(d_along, 0, MAX_DIST))   # offset from the centreline
        S = s + d_along
        au = np.abs(u)
        col = np.empty((len(z), 3), np.float32)
        noise = _hash01(np.floor(S * 2), np.floor(u * 2), self.seed)
        road = au < ROAD_HALF
        if self.version >= 2:
            # motion cues that survive a 48x27 frame: bands and patches a few metres long, high contrast
            grass_col = self.grass * (0.65 + 0.6 * (np.floor(S / 1.5) % 2))[:, None] + 0.05 * noise[:, None]
            col[:] = grass_col
            patch = _hash01(np.floor(S / 2.0), np.zeros_like(S), self.seed + 1) < 0.4
            col[road] = (self.asphalt + 0.06 * noise[road] - 0.14 * patch[road])[:, None]
            centre = (au < 0.2) & ((S % 4.0) < 2.0)
        else:
            grass_col = self.grass * (0.85 + 0.2 * (np.floor(S / 4) % 2))[:, None] + 0.05 * noise[:, None]
            col[:] = grass_col
            col[road] = (self.asphalt + 0.06 * noise[road])[:, None]
            centre = (au < 0.08) & ((S % 6.0) < 3.0)
        edge = (au > ROAD_HALF - 0.3) & (au < ROAD_HALF - 0.15)
        col[edge] = 0.92
        col[centre] = 0.95
        curb = (au >= ROAD_HALF) & (au < ROAD_HALF + CURB)
        red = (np.floor(S / 1.0) % 2) == 0
        col[curb & red] = np.array([0.8, 0.15, 0.15])
        col[curb & ~red] = 0.9
        fog = np.clip(z / MAX_DIST, 0, 1)[:, None] ** 1.5       # distance haze toward the horizon colour
        col = col * (1 - fog) + np.array([0.75, 0.8, 0.85]) * fog
        img[ground] = col
        # objects: roadside things and other cars, far to near
        items = []
        for so, side, off, kind in zip(self.obj_s, self.obj_side, self.obj_off, self.obj_kind):
            d = so - s
            if 1.5 < d < 60:
                items.append((d, "obj", side * (ROAD_HALF + off * 0.5 + 1.0), kind))
        if self.version >= 2:   # white posts just beyond the curb, every 5 m, alternating sides
            for so, side in zip(self.post_s, self.post_side):
                d = so - s
                if 1.5 < d < 40:
                    items.append((d, "obj", side * (ROAD_HALF + CURB + 0.4), 1))
        for s0, lane, v, colr in self.cars:
            d = s0 + v * t - s
            if 3.0 < d < 60:
                items.append((d, "car", lane, colr))
        for d, kind, lat_o, extra in sorted(items, key=lambda it: -it[0]):
            lat_road = self.road.ahead(s, np.array([d]))[0] + lat_o
            rel = lat_road - e_y
            xcam = rel * c - d * sn
            zcam = d * c + rel * sn
            if zcam < 1.0:
                continue
            x_screen = self.cx - f * xcam / zcam
            y_ground = self.horizon + f * CAM_HEIGHT / zcam
            if kind == "car":
                width, height = 1.8, 1.5
                col = np.asarray(extra) * 0.8
            else:
                width, height = ((1.2, 5.0), (0.25, 1.2), (2.0, 1.2))[extra]
                col = (np.array([0.1, 0.35, 0.1]), np.array([0.9, 0.9, 0.85]), np.array([0.2, 0.45, 0.15]))[extra]
            half = 0.5 * f * width / zcam
            top = y_ground - f * height / zcam
            x0, x1 = int(max(0, x_screen - half)), int(min(w, x_screen + half + 1))
            y0, y1 = int(max(0, top)), int(min(h, y_ground + 1))
            if x1 <= x0 or y1 <= y0:
                continue
            shade = 1 - 0.6 * min(1.0, zcam / MAX_DIST)
            img[y0:y1, x0:x1] = col * shade + (1 - shade) * np.array([0.75, 0.8, 0.85])
            if kind == "car":   # rear window band and lights make motion visible
                wy0, wy1 = int(top + 0.15 * (y_ground - top)), int(top + 0.45 * (y_ground - top))
                img[max(0, wy0):max(0, min(h, wy1)), x0:x1] = np.array([0.15, 0.2, 0.25])
            elif extra == 0:     # tree trunk
                tx0, tx1 = int(max(0, x_screen - half * 0.2)), int(min(w, x_screen + half * 0.2 + 1))
                ty0 = int(max(0, y_ground - f * 1.5 / zcam))
                img[ty0:y1, tx0:tx1] = np.array([0.35, 0.22, 0.1])
        img = np.clip(img, 0, 1)
        small = img.reshape(self.out_h, 2, self.out_w, 2, 3).mean(axis=(1, 3))
        return (small * 255 + 0.5).astype(np.uint8)


def check_version(version: int, where: str = "data.synthetic_version") -> int:
    if version not in SYNTHETIC_VERSIONS:
        from trainkit.errors import UserError

        raise UserError(f"synthetic_version={version}", where, f"one of {list(SYNTHETIC_VERSIONS)}")
    return int(version)


def generate_episode(width: int, height: int, num_frames: int, seed: int, yaw_rate_offset: float = 0.0,
                     offset_from: int = 0, version: int = LATEST_VERSION, speed_scale: float = 1.0,
                     scale_from: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [T, H, W, 3] and actions [T, 4] of one episode. ``yaw_rate_offset`` (rad/s) is added to the
    controller's yaw rate from frame ``offset_from`` on, and the speed is multiplied by ``speed_scale`` from
    frame ``scale_from`` on (to check that actions change what the camera sees). ``version``: see the module
    docstring (1 is the original world, bit-exact)."""
    check_version(version, "version")
    rng = np.random.default_rng(seed)
    v = rng.uniform(5.0, 12.0)
    v2 = version >= 2
    length = ((20.0 * max(1.0, speed_scale) + 8) if v2 else (v + 8)) * num_frames * DT + 20
    renderer = Renderer(width, height, seed % (2**31), rng, length, version=version)
    if v2:   # drawn after the renderer's draws so the road and scenery match v1 for the same seed
        v = rng.uniform(1.0, 20.0)
    v_lo, v_hi = (0.5, 20.0) if v2 else (3.0, 16.0)
    road = renderer.road
    s, e_y, psi = 0.0, rng.uniform(-1.75, 1.75), rng.uniform(-0.05, 0.05)
    target = rng.choice([-1.75, 1.75])
    accel_cmd, steer_noise = 0.0, 0.0
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    actions = np.empty((num_frames, 4), np.float32)
    for t in range(num_frames):
        frames[t] = renderer.render(s, e_y, psi, t * DT)
        # new control segments: lane changes, steering perturbations, throttle/brake
        if rng.random() < 0.04:
            target = -target
        if rng.random() < 0.12:
            steer_noise = rng.uniform(-0.25, 0.25) if rng.random() < 0.6 else 0.0
        if rng.random() < 0.15:
            if v2:   # hard braking, throttle or coasting
                kind = rng.random()
                accel_cmd = rng.uniform(-6.0, -2.0) if kind < 0.4 else rng.uniform(1.0, 3.5) if kind < 0.8 else 0.0
            else:
                accel_cmd = rng.uniform(-2.5, 2.5)
        kappa = float(road.curvature(s))
        yaw_rate = v * kappa - 1.2 * psi - 0.25 * (e_y - target) + steer_noise
        yaw_rate = float(np.clip(yaw_rate, -0.5, 0.5)) + (yaw_rate_offset if t >= offset_from else 0.0)
        accel = accel_cmd if v_lo < v + accel_cmd * DT < v_hi else 0.0
        if speed_scale != 1.0 and t == scale_from:
            v = v * speed_scale
        v_next = v + accel * DT
        v_mid = 0.5 * (v + v_next)
        ds = v_mid * np.cos(psi) * DT
        e_y += v_mid * np.sin(psi) * DT
        psi += yaw_rate * DT - kappa * ds
        s += ds
        # keep the car near the road so every episode stays a driving scene
        e_y = float(np.clip(e_y, -3.0, 3.0))
        actions[t] = [v_mid, yaw_rate, accel, yaw_rate / max(v_mid, 1.0)]
        v = v_next
    return frames, actions


def generate(out: str | Path, *, num_scenes: int = 40, num_frames: int = 60, image_size=(64, 36), seed: int = 0,
             val_fraction: float = 0.2, overwrite: bool = False, log=None, version: int = LATEST_VERSION) -> Path:
    """Render ``num_scenes`` episodes into a processed dataset at ``out``; scene-level train/val split."""
    check_version(version)
    width, height = int(image_size[0]), int(image_size[1])
    final = Path(out)
    if not overwrite or (final.exists() and not final.is_dir()):
        prepare_output_dir(final, False)   # refuses a file, or an occupied folder without overwrite (deletes nothing)
    from trainkit.runsafety import check_replaceable, swap_in

    check_replaceable(final, flag="--overwrite")   # only a folder this tool wrote; checked before rendering
    # render into a sibling folder and swap it in at the end: an interrupted render never costs the old data
    out = prepare_output_dir(final.with_name(final.name + ".partial"), True)
    num_val = max(1, int(round(num_scenes * val_fraction))) if num_scenes > 1 else 0
    val = set(np.random.default_rng(seed + 7).permutation(num_scenes)[:num_val].tolist())
    scenes = []
    for i in range(num_scenes):
        ep_seed = int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:4], "little")
        frames, actions = generate_episode(width, height, num_frames, ep_seed, version=version)
        stamps = (1_600_000_000_000_000 + i * 10**9 + np.arange(num_frames) * int(DT * 1e6)).astype(np.int64)
        scenes.append(Scene(f"synthetic-{i:04d}", frames, stamps, actions, "val" if i in val else "train",
                            {"action_source": "simulator"}))
        if log and (i + 1) % 10 == 0:
            log(f"rendered {i + 1}/{num_scenes} synthetic scenes")
    write_processed(out, scenes, source="synthetic", action_names=ACTION_NAMES, action_units=ACTION_UNITS,
                    steer_channel=STEER_CHANNEL,
                    extra={"synthetic": {"seed": seed, "num_scenes": num_scenes, "num_frames": num_frames,
                                         "fps": 1 / DT, "version": version}})
    swap_in(out, final)
    return final


def default_cache_dir() -> Path:
    import os

    base = os.environ.get("WORLDMODEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "worldmodel")
    return Path(base)


def ensure_synthetic(num_scenes: int, num_frames: int, image_size, seed: int, val_fraction: float, log=print,
                     version: int = LATEST_VERSION) -> Path:
    """The default dataset for these settings, generated into the cache on first use (a folder per setting;
    version 1 keeps its old folder name, so caches made before versions existed are reused)."""
    check_version(version)
    key = f"s{seed}_n{num_scenes}_t{num_frames}_{image_size[0]}x{image_size[1]}_v{val_fraction}"
    key += "" if version == 1 else f"_g{version}"
    root = default_cache_dir() / "synthetic" / key
    if (root / "index.json").is_file():
        return root
    tmp = root.with_name(root.name + ".tmp")
    log(f"generating the synthetic driving dataset into {root} (first use)")
    generate(tmp, num_scenes=num_scenes, num_frames=num_frames, image_size=image_size, seed=seed,
             val_fraction=val_fraction, overwrite=True, log=log, version=version)
    if root.exists():  # a concurrent process finished first; keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        return root
    tmp.rename(root)
    return root


__all__ = ["generate", "generate_episode", "ensure_synthetic", "ACTION_NAMES", "ACTION_UNITS", "LATEST_VERSION",
           "SYNTHETIC_VERSIONS"]
