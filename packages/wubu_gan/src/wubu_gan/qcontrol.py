"""Q-learning training controllers (the original's "HAKMEM" controllers), as the notes document them.

Three instances: G (lr scale, momentum scale), D (the same) and lambda_KL (a multiplicative scale).
Tabular, epsilon-greedy, factored actions (one Q-vector per action kind and state, same reward), alpha 0.01,
gamma 0.9, epsilon 0.5 -> 0.05 (reached half-way through the run: exploration_decay), reward clip +-2, Q clip +-30, at most 20,000 states
(pruned by least use), loss histories of 5. Everything round-trips through ``state_dict()`` as plain lists,
so ``torch.load(weights_only=True)`` reads it.
"""
from __future__ import annotations

import math
import random
import statistics
from collections import deque

LR_SCALES = [0.8, 0.9, 1.0, 1.1, 1.2]
MOMENTUM_SCALES = [0.95, 0.98, 1.0, 1.01, 1.02]
LKL_SCALES = [0.94, 0.97, 1.0, 1.03, 1.06]


EXPLORE_FRACTION = 0.5  # epsilon reaches its floor after this fraction of a run's controller choices


def exploration_decay(choices: int, eps_start: float = 0.5, eps_min: float = 0.05, slowest: float = 0.9995) -> float:
    """Per-choice epsilon factor so that epsilon falls from eps_start to eps_min within EXPLORE_FRACTION of
    ``choices`` (never slower than the original's x0.9995). The original's fixed x0.9995 left epsilon at ~0.3
    at the end of a 1,000-step recipe: the controllers acted at random 30-50 % of the time."""
    if choices <= 0:
        return slowest
    return min(slowest, (eps_min / eps_start) ** (1.0 / max(1.0, EXPLORE_FRACTION * choices)))


def trend_bin(history, value) -> int:
    """0..4 from the relative difference of ``value`` to the median of the history (value included, as the original)."""
    vals = list(history) + [value]
    med = statistics.median(vals)
    rel = (value - med) / (abs(med) + 1e-9)
    if rel < -0.15:
        return 0
    if rel < -0.02:
        return 1
    if rel <= 0.02:
        return 2
    if rel <= 0.15:
        return 3
    return 4


def value_bin(value: float, edges) -> int:
    return sum(value >= e for e in edges)


def improvement(history, value) -> float:
    """median(history) - value: positive when a loss went down."""
    return (statistics.median(history) - value) if history else 0.0


class QController:
    """One tabular controller. ``kind`` is "gen", "disc" or "lkl"."""

    def __init__(self, kind: str, *, alpha=0.01, gamma=0.9, eps_start=0.5, eps_min=0.05, eps_decay=0.9995,
                 max_states=20000, history=5, seed=0):
        self.kind = kind
        self.actions = {"lrscale": LR_SCALES, "momentumscale": MOMENTUM_SCALES} if kind != "lkl" else {"lklscale": LKL_SCALES}
        self.alpha, self.gamma = alpha, gamma
        self.epsilon, self.eps_min, self.eps_decay = eps_start, eps_min, eps_decay
        self.max_states = max_states
        self.hist_len = history
        self.q: dict[tuple, dict[str, list[float]]] = {}
        self.visits: dict[tuple, int] = {}
        self.histories: dict[str, deque] = {}
        self.rewards: deque = deque(maxlen=5)
        self.prev_state: tuple | None = None
        self.prev_action: dict[str, int] | None = None
        self.last_action = {k: v.index(1.0) for k, v in self.actions.items()}
        self.last_reward = 0.0
        self.rng = random.Random(seed)

    # -- state
    def _hist(self, name):
        return self.histories.setdefault(name, deque(maxlen=self.hist_len))

    def _eps_bin(self) -> int:
        return value_bin(self.epsilon, [0.1, 0.3])

    def state(self, m: dict) -> tuple:
        """Discrete state from the macro-step's mean losses (and lr, momentum, lambda_KL, val metric)."""
        h = self._hist
        if self.kind == "gen":
            kl_problem = 2 if (m["kl"] > 100 and m["lambda_kl"] >= 5e-4 and m["recon"] > 0.1) else (1 if m["kl"] > 100 else 0)
            return (trend_bin(h("g_total"), m["g_total"]), trend_bin(h("d_total"), m["d_total"]),
                    trend_bin(h("recon"), m["recon"]), kl_problem, value_bin(m["g_adv"], [0.3, 0.6, 1.0]),
                    value_bin(m["lr"], [1e-5, 5e-5, 2e-4]), value_bin(m["momentum"], [0.85, 0.95]), self._eps_bin())
        if self.kind == "disc":
            ratio = m["d_fake"] / (m["d_real"] + 1e-9)
            return (trend_bin(h("d_total"), m["d_total"]), trend_bin(h("g_total"), m["g_total"]),
                    value_bin(m["d_total"], [0.35, 0.65, 0.85]), value_bin(ratio, [0.8, 1.2, 2.0]),
                    value_bin(m["g_adv"], [0.2, 0.5]), value_bin(m["lr"], [1e-5, 5e-5, 2e-4]),
                    value_bin(m["momentum"], [0.85, 0.95]), self._eps_bin())
        return (trend_bin(h("recon"), m["recon"]), trend_bin(h("kl"), m["kl"]), trend_bin(h("val"), m["val"]),
                value_bin(m["lambda_kl"], [5e-4, 5e-3, 5e-2]), value_bin(m["d_total"], [0.35, 0.65, 0.85]),
                self._eps_bin())

    # -- reward
    def reward(self, m: dict) -> float:
        h = self._hist
        r = 0.0
        if self.kind == "gen":
            med = statistics.median(h("recon")) if h("recon") else m["recon"]
            r += 2.5 * math.tanh(improvement(h("recon"), m["recon"]) / (abs(med) + 0.01)
                                 * (1 + math.log1p(20 * max(0.0, m["recon"] - 0.02))))
            adv_med = statistics.median(h("g_adv")) if h("g_adv") else m["g_adv"]
            r += 1.2 * math.tanh(improvement(h("g_adv"), m["g_adv"]) / (abs(adv_med) + 1e-9))
            if m["kl"] > 100 and m["lambda_kl"] >= 5e-4 and m["recon"] > 0.1:
                r -= 0.3 * min(1.0, (m["kl"] - 100) / 200)
            if 0.4 < m["d_total"] < 0.75:
                r += 0.3
            elif m["d_total"] <= 0.3:
                r -= 0.45
            r += 0.1 * math.tanh(improvement(h("g_total"), m["g_total"]))
            watched = ("recon", "g_adv", "g_total")
        elif self.kind == "disc":
            d = m["d_total"]
            r += 1.5 if 0.4 < d < 0.65 else (-0.75 if d < 0.3 else (-1.125 if d > 0.8 else 0.0))
            if m["d_real"] < 0.3:
                r += 0.7 * (0.3 - m["d_real"]) / 0.3
            if m["d_fake"] < 0.3 and m["g_adv"] > 0.4:
                r += 0.7 * (0.3 - m["d_fake"]) / 0.3
            if m["g_adv"] < 0.25:
                r -= 0.3
            r += 0.1 * math.tanh(improvement(h("d_total"), d))
            watched = ("d_total", "g_total")
        else:
            # validation metric: higher is better (the trainer passes -mse / -lpips for lower-is-better metrics)
            r += 2 * math.tanh(5 * -improvement(h("val"), m["val"])) if h("val") else 0.0
            med = statistics.median(h("recon")) if h("recon") else m["recon"]
            r += 1.5 * math.tanh(10 * improvement(h("recon"), m["recon"]) / (abs(med) + 0.01))
            if m["kl"] > 100:
                r += math.tanh(improvement(h("kl"), m["kl"]) / 50)
            elif m["kl"] < 20 and m["recon"] > 0.05:
                r -= 0.5
            if h("d_total"):
                dd = m["d_total"] - statistics.median(h("d_total"))
                if abs(dd) > 0.2:
                    r -= 0.5 * abs(dd) / 0.2
            if m["lambda_kl"] > 0.5 and m["recon"] > 0.15:
                r -= 0.5
            watched = ("recon", "kl")
        for name in watched:
            if abs(m[name]) > 500:
                r -= 0.75 * abs(m[name]) / 500
        signs = [math.copysign(1, x) for x in self.rewards if abs(x) >= 0.05]
        flips = sum(a != b for a, b in zip(signs, signs[1:]))
        if len(self.rewards) == 5 and flips >= 2:
            r -= 0.25 * flips / 5
        return max(-2.0, min(2.0, r))

    # -- act
    def _qrow(self, state) -> dict[str, list[float]]:
        if state not in self.q:
            if len(self.q) >= self.max_states:
                self._prune()
            self.q[state] = {k: [0.0] * len(v) for k, v in self.actions.items()}
        self.visits[state] = self.visits.get(state, 0) + 1
        return self.q[state]

    def _prune(self) -> None:
        drop = sorted(self.q, key=lambda s: self.visits.get(s, 0))[: max(1, self.max_states // 10)]
        for s in drop:
            self.q.pop(s, None)
            self.visits.pop(s, None)

    def step(self, metrics: dict) -> dict[str, float]:
        """Reward the previous action, update Q, choose and return the next scales. Call once per macro-step."""
        state = self.state(metrics)
        if self.prev_state is not None:
            r = self.reward(metrics)
            self.last_reward = r
            self.rewards.append(r)
            row_prev, row_now = self._qrow(self.prev_state), self._qrow(state)
            for k, a in self.prev_action.items():
                target = r + self.gamma * max(row_now[k])
                q = row_prev[k][a] + self.alpha * (target - row_prev[k][a])
                row_prev[k][a] = max(-30.0, min(30.0, q))
        row = self._qrow(state)
        action = {}
        for k, options in self.actions.items():
            if self.rng.random() < self.epsilon:
                action[k] = self.rng.randrange(len(options))
            else:
                best = max(row[k])
                action[k] = self.rng.choice([i for i, q in enumerate(row[k]) if q == best])
        self.epsilon = max(self.eps_min, self.epsilon * self.eps_decay)
        for name, value in metrics.items():
            if name in ("g_total", "d_total", "recon", "g_adv", "kl", "val"):
                self._hist(name).append(float(value))
        self.prev_state, self.prev_action, self.last_action = state, action, action
        return self.scales()

    def scales(self) -> dict[str, float]:
        return {k: self.actions[k][a] for k, a in self.last_action.items()}

    def log_values(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}/{k}": v for k, v in self.scales().items()}
        out[f"{prefix}/epsilon"] = self.epsilon
        out[f"{prefix}/reward"] = self.last_reward
        out[f"{prefix}/num_states"] = float(len(self.q))
        return out

    # -- persistence (weights_only-safe: lists, ints, floats, strings)
    def state_dict(self) -> dict:
        rng = self.rng.getstate()
        return {
            "kind": self.kind, "epsilon": self.epsilon,
            "q": [[list(s), {k: list(v) for k, v in row.items()}, self.visits.get(s, 0)] for s, row in self.q.items()],
            "histories": {k: list(v) for k, v in self.histories.items()},
            "rewards": list(self.rewards),
            "prev_state": list(self.prev_state) if self.prev_state is not None else None,
            "prev_action": dict(self.prev_action) if self.prev_action is not None else None,
            "last_action": dict(self.last_action), "last_reward": self.last_reward,
            "rng": [rng[0], list(rng[1]), rng[2]],
        }

    def load_state_dict(self, d: dict) -> None:
        if d.get("kind") != self.kind:
            raise ValueError(f"Q-controller state is for {d.get('kind')!r}, not {self.kind!r}")
        self.epsilon = float(d["epsilon"])
        self.q, self.visits = {}, {}
        for s, row, visits in d["q"]:
            self.q[tuple(s)] = {k: [float(x) for x in v] for k, v in row.items()}
            self.visits[tuple(s)] = int(visits)
        self.histories = {k: deque([float(x) for x in v], maxlen=self.hist_len) for k, v in d["histories"].items()}
        self.rewards = deque([float(x) for x in d["rewards"]], maxlen=5)
        self.prev_state = tuple(d["prev_state"]) if d["prev_state"] is not None else None
        self.prev_action = {k: int(v) for k, v in d["prev_action"].items()} if d["prev_action"] is not None else None
        self.last_action = {k: int(v) for k, v in d["last_action"].items()}
        self.last_reward = float(d["last_reward"])
        r = d["rng"]
        self.rng.setstate((r[0], tuple(r[1]), r[2]))
