r"""A trained model anyone can rebuild offline: class-conditional diffusion on 8×8 digits.

Data: scikit-learn's bundled ``load_digits`` (1,797 images of 8×8 pixels with values 0..16,
10 classes; no download), scaled to ``x = pixels / 8 − 1 ∈ [−1, 1]^64``. A fixed split
(``test_fraction``, seeded) keeps images out of training for the classifier's accuracy.

* **Score network** (:class:`ScoreNet`, Flax linen): an MLP with residual blocks on the
  64 pixels, a sinusoidal embedding of ``t`` and a learned embedding of the class, trained
  to predict the noise ``ε`` of the VP SDE (denoising score matching, Ho et al. 2020) with
  **condition dropout** (the class is replaced by the null token ``10`` with probability
  ``cond_dropout``), so one network gives both ``s(x, t | c)`` and ``s(x, t)`` for
  classifier-free guidance (Ho & Salimans 2022). Adam with a cosine learning-rate schedule
  and an exponential moving average (EMA) of the weights, which is what is used.
* **Classifier** (:class:`Classifier`): an MLP on clean images (trained with mild pixel
  noise for robustness to generated samples), the verifier / reward / accuracy metric.

:func:`load_or_train` returns both, training them on first use and caching the weights
under ``$SMCSCALE_CACHE`` (default ``~/.cache/smcscale``) in files named by a hash of the
config; the default config trains in a couple of minutes on two CPU cores. Tests use a tiny
config (seconds). From the command line: ``python -m smcscale.diffusion.digits`` (options
``--tiny``, ``--dir``, ``--retrain``). Metrics for the demos: :func:`accuracy` (share of samples the classifier
assigns to the intended class) and :func:`diversity` (mean pairwise L2 distance).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .scores import from_eps
from .sde import VPSDE

__all__ = [
    "DigitsConfig",
    "TINY",
    "ScoreNet",
    "Classifier",
    "DigitsScore",
    "DigitsModels",
    "load_data",
    "cache_dir",
    "train_score_net",
    "train_classifier",
    "load_or_train",
    "accuracy",
    "diversity",
    "class_log_prob",
    "NUM_CLASSES",
    "NULL_CLASS",
    "main",
]

NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES  # the "no class" token of condition dropout
DIM = 64


@dataclasses.dataclass(frozen=True)
class DigitsConfig:
    """Sizes and training settings (the cache key is a hash of all fields)."""

    width: int = 256
    depth: int = 3
    time_features: int = 32
    train_steps: int = 6000
    batch_size: int = 256
    learning_rate: float = 2e-3
    ema_decay: float = 0.999
    cond_dropout: float = 0.15
    classifier_width: int = 256
    classifier_steps: int = 3000
    classifier_noise: float = 0.2
    test_fraction: float = 0.2
    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def sde(self) -> VPSDE:
        return VPSDE(self.beta_min, self.beta_max, 1.0, self.t_min)


#: a few-second config for tests and the small notebook run
TINY = DigitsConfig(width=64, depth=1, time_features=16, train_steps=300, batch_size=128, classifier_width=64, classifier_steps=300)


# ---------------------------------------------------------------------------------------
# networks


def _time_embedding(t, n_features: int):
    half = n_features // 2
    freqs = jnp.exp(jnp.linspace(0.0, math.log(1000.0), half))
    a = t[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(a), jnp.cos(a)], -1)


def _nn():
    import flax.linen as nn

    return nn


class _Nets:
    """Lazily built Flax modules (flax imported on first use)."""

    _cache: dict = {}

    @classmethod
    def score_net(cls, width, depth, time_features):
        k = ("score", width, depth, time_features)
        if k not in cls._cache:
            nn = _nn()

            class ScoreNetModule(nn.Module):
                width: int
                depth: int
                time_features: int

                @nn.compact
                def __call__(self, x, t, c):
                    emb = _time_embedding(t, self.time_features)
                    emb = nn.Dense(self.width)(emb)
                    emb = nn.Dense(self.width)(nn.silu(emb))
                    emb = emb + nn.Embed(NUM_CLASSES + 1, self.width)(c)
                    h = nn.Dense(self.width)(x)
                    for _ in range(self.depth):
                        z = nn.LayerNorm()(h)
                        z = nn.Dense(self.width)(nn.silu(z + emb))
                        z = nn.Dense(self.width)(nn.silu(z))
                        h = h + z
                    return nn.Dense(DIM)(nn.silu(nn.LayerNorm()(h)))

            cls._cache[k] = ScoreNetModule(width, depth, time_features)
        return cls._cache[k]

    @classmethod
    def classifier(cls, width):
        k = ("clf", width)
        if k not in cls._cache:
            nn = _nn()

            class ClassifierModule(nn.Module):
                width: int

                @nn.compact
                def __call__(self, x):
                    h = nn.silu(nn.Dense(self.width)(x))
                    h = nn.silu(nn.Dense(self.width)(h))
                    return nn.Dense(NUM_CLASSES)(h)

            cls._cache[k] = ClassifierModule(width)
        return cls._cache[k]


def ScoreNet(config: DigitsConfig):  # noqa: N802 (a module factory)
    """The ε-prediction network ``(x [N, 64], t [N], class [N] int) -> ε̂ [N, 64]`` (Flax linen)."""
    return _Nets.score_net(config.width, config.depth, config.time_features)


def Classifier(config: DigitsConfig):  # noqa: N802
    """The digit classifier ``x [N, 64] -> logits [N, 10]`` (Flax linen)."""
    return _Nets.classifier(config.classifier_width)


class DigitsScore:
    """Score model of the trained network: ``(x [N, 64], t, condition) -> [N, 64]``.

    ``condition``: an int class, an int array ``(N,)``, or ``None`` (= :data:`NULL_CLASS`,
    unconditional). Has ``null_condition`` so CFG evaluates both scores in one call.
    """

    null_condition = NULL_CLASS
    dim = DIM

    def __init__(self, params, config: DigitsConfig):
        self.params = params
        self.config = config
        self.sde = config.sde()
        net = ScoreNet(config)

        def eps(x, t, c):
            n = x.shape[0]
            c = jnp.broadcast_to(jnp.asarray(NULL_CLASS if c is None else c, jnp.int32), (n,))
            tt = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (n,))
            return net.apply(self.params, x, tt, c)

        self.eps = eps
        self._score = from_eps(eps, self.sde, null_condition=NULL_CLASS)

    def __call__(self, x, t, condition=None):
        return self._score(x, t, condition)

    def __repr__(self):
        return f"DigitsScore(width={self.config.width}, depth={self.config.depth})"


class DigitsModels(NamedTuple):
    """What :func:`load_or_train` returns."""

    score: DigitsScore  # the score model (condition = class or None)
    classifier: Any  # x [N, 64] -> logits [N, 10]
    sde: VPSDE
    config: DigitsConfig
    info: dict  # training losses, times, classifier test accuracy, whether loaded from cache


# ---------------------------------------------------------------------------------------
# data, training, cache


def load_data(config: DigitsConfig = DigitsConfig()):
    """``(x_train, y_train, x_test, y_test)``: scikit-learn's digits in ``[−1, 1]^64``, fixed split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover
        raise ImportError("the digits data come with scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    x = (d.data.astype(np.float32) / 8.0 - 1.0).reshape(-1, DIM)
    y = d.target.astype(np.int32)
    perm = np.random.default_rng(config.seed).permutation(len(x))
    n_test = int(round(config.test_fraction * len(x)))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def cache_dir() -> Path:
    """``$SMCSCALE_CACHE`` if set, else ``~/.cache/smcscale``."""
    env = os.environ.get("SMCSCALE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "smcscale"


def _schedule(config, steps):
    import optax

    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, min(200, steps // 10 + 1), steps, config.learning_rate * 0.02)


def train_score_net(config: DigitsConfig, x_train, y_train, key=None):
    """Denoising score matching with condition dropout; returns ``(ema_params, losses)``."""
    import optax

    sde = config.sde()
    net = ScoreNet(config)
    key = jax.random.key(config.seed) if key is None else key
    key, k_init = jax.random.split(key)
    params = net.init(k_init, jnp.zeros((1, DIM)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
    opt = optax.adam(_schedule(config, config.train_steps))
    opt_state = opt.init(params)
    xs, ys = jnp.asarray(x_train), jnp.asarray(y_train)

    def loss_fn(p, k):
        k1, k2, k3, k4 = jax.random.split(k, 4)
        idx = jax.random.randint(k1, (config.batch_size,), 0, xs.shape[0])
        x0, c = xs[idx], ys[idx]
        c = jnp.where(jax.random.uniform(k2, c.shape) < config.cond_dropout, NULL_CLASS, c)
        t = jax.random.uniform(k3, (config.batch_size,), minval=config.t_min, maxval=1.0)
        eps = jax.random.normal(k4, x0.shape)
        xt = sde.alpha(t)[:, None] * x0 + sde.sigma(t)[:, None] * eps
        return jnp.mean(jnp.sum((net.apply(p, xt, t, c) - eps) ** 2, -1))

    @jax.jit
    def step(carry, k):
        p, s, ema = carry
        loss, g = jax.value_and_grad(loss_fn)(p, k)
        upd, s = opt.update(g, s, p)
        p = optax.apply_updates(p, upd)
        ema = jax.tree_util.tree_map(lambda e, q: config.ema_decay * e + (1 - config.ema_decay) * q, ema, p)
        return (p, s, ema), loss

    @jax.jit
    def many(carry, keys):
        return jax.lax.scan(lambda c, k: step(c, k), carry, keys)

    carry = (params, opt_state, params)
    losses = []
    chunk = 250
    done = 0
    while done < config.train_steps:
        m = min(chunk, config.train_steps - done)
        key, sub = jax.random.split(key)
        carry, ls = many(carry, jax.random.split(sub, m))
        losses.append(np.asarray(ls))
        done += m
    # EMA warm start bias: for short runs (tests) the raw weights are better
    ema = carry[2] if config.train_steps >= 2000 else carry[0]
    return ema, np.concatenate(losses)


def train_classifier(config: DigitsConfig, x_train, y_train, key=None):
    """Cross-entropy with pixel-noise augmentation; returns ``(params, losses)``."""
    import optax

    net = Classifier(config)
    key = jax.random.key(config.seed + 1) if key is None else key
    key, k_init = jax.random.split(key)
    params = net.init(k_init, jnp.zeros((1, DIM)))
    opt = optax.adamw(_schedule(config, config.classifier_steps), weight_decay=1e-4)
    opt_state = opt.init(params)
    xs, ys = jnp.asarray(x_train), jnp.asarray(y_train)

    def loss_fn(p, k):
        k1, k2 = jax.random.split(k)
        idx = jax.random.randint(k1, (config.batch_size,), 0, xs.shape[0])
        x = xs[idx] + config.classifier_noise * jax.random.normal(k2, (config.batch_size, DIM))
        logits = net.apply(p, x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, ys[idx]))

    @jax.jit
    def many(carry, keys):
        def one(c, k):
            p, s = c
            loss, g = jax.value_and_grad(loss_fn)(p, k)
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), loss

        return jax.lax.scan(one, carry, keys)

    (params, _), losses = many((params, opt_state), jax.random.split(key, config.classifier_steps))
    return params, np.asarray(losses)


def _classifier_fn(params, config):
    net = Classifier(config)
    return lambda x: net.apply(params, x)


def class_log_prob(classifier, label: int):
    """Reward ``x [N, 64] -> log p(label | x) [N]`` from a classifier's logits."""

    def reward(x):
        return jax.nn.log_softmax(classifier(x), -1)[:, label]

    return reward


def accuracy(classifier, x, label, log_weights=None) -> float:
    """Share of the samples ``x [N, 64]`` that the classifier assigns to ``label`` (int or
    ``(N,)``), weighted by the normalised ``exp(log_weights)`` if given."""
    pred = np.asarray(jnp.argmax(classifier(jnp.asarray(x)), -1))
    hit = (pred == np.asarray(label)).astype(np.float64)
    if log_weights is None:
        return float(np.mean(hit))
    w = np.asarray(jax.nn.softmax(jnp.asarray(log_weights)), np.float64)
    return float(np.sum(w * hit))


def diversity(x, log_weights=None, max_points: int = 2000) -> float:
    """Mean pairwise L2 distance among samples (weighted by ``W_i W_j`` over ``i ≠ j`` if weights given)."""
    x = np.asarray(x, np.float64)[:max_points]
    w = np.full(len(x), 1.0 / len(x)) if log_weights is None else np.asarray(jax.nn.softmax(jnp.asarray(log_weights)[:max_points]), np.float64)
    d = np.sqrt(np.maximum(np.sum(x**2, 1)[:, None] + np.sum(x**2, 1)[None] - 2 * x @ x.T, 0.0))
    ww = np.outer(w, w)
    np.fill_diagonal(ww, 0.0)
    return float(np.sum(ww * d) / np.sum(ww))


def _save(path: Path, params, meta: dict):
    from flax import serialization

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(serialization.to_bytes(params))
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1, sort_keys=True))


def _load(path: Path, template):
    from flax import serialization

    params = serialization.from_bytes(template, path.read_bytes())
    meta = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else {}
    return params, meta


def load_or_train(config: DigitsConfig = DigitsConfig(), *, cache: bool = True, directory=None, verbose: bool = False) -> DigitsModels:
    """The trained score network and classifier for ``config``: loaded from the cache if
    present, else trained (and cached when ``cache=True``). ``directory`` overrides
    :func:`cache_dir`. ``info["cached"]`` says whether both came from the cache."""
    x_tr, y_tr, x_te, y_te = load_data(config)
    root = Path(directory) if directory is not None else cache_dir()
    tag = config.key()
    p_score, p_clf = root / f"digits-score-{tag}.msgpack", root / f"digits-classifier-{tag}.msgpack"
    net, clf = ScoreNet(config), Classifier(config)
    k = jax.random.key(0)
    tmpl_s = net.init(k, jnp.zeros((1, DIM)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
    tmpl_c = clf.init(k, jnp.zeros((1, DIM)))
    info: dict = {"config": dataclasses.asdict(config), "cache_key": tag}
    cached = True
    if cache and p_score.exists():
        ps, meta = _load(p_score, tmpl_s)
        info["score"] = meta
    else:
        cached = False
        t0 = time.time()
        ps, losses = train_score_net(config, x_tr, y_tr)
        meta = {"train_seconds": time.time() - t0, "final_loss": float(np.mean(losses[-100:])), "steps": config.train_steps}
        info["score"] = meta
        if verbose:
            print(f"trained the digits score network in {meta['train_seconds']:.0f} s (loss {meta['final_loss']:.3f})")
        if cache:
            _save(p_score, ps, meta)
    if cache and p_clf.exists():
        pc, meta = _load(p_clf, tmpl_c)
        info["classifier"] = meta
    else:
        cached = False
        t0 = time.time()
        pc, losses = train_classifier(config, x_tr, y_tr)
        acc = accuracy(_classifier_fn(pc, config), x_te, y_te)
        meta = {"train_seconds": time.time() - t0, "final_loss": float(np.mean(losses[-100:])), "test_accuracy": acc}
        info["classifier"] = meta
        if verbose:
            print(f"trained the digits classifier in {meta['train_seconds']:.0f} s (test accuracy {acc:.3f})")
        if cache:
            _save(p_clf, pc, meta)
    info["cached"] = cached
    return DigitsModels(DigitsScore(ps, config), _classifier_fn(pc, config), config.sde(), config, info)


def main(argv=None) -> int:
    """``python -m smcscale.diffusion.digits [--tiny] [--dir DIR] [--retrain]``: train (or load)
    and cache the digits score network and classifier, and print what was done."""
    import argparse

    ap = argparse.ArgumentParser(description="Train and cache the digits score network and classifier.")
    ap.add_argument("--tiny", action="store_true", help="the few-second test config instead of the default")
    ap.add_argument("--dir", type=Path, default=None, help=f"cache directory (default: $SMCSCALE_CACHE or {cache_dir()})")
    ap.add_argument("--retrain", action="store_true", help="train even if a cached checkpoint exists (and overwrite it)")
    args = ap.parse_args(argv)
    config = TINY if args.tiny else DigitsConfig()
    root = args.dir if args.dir is not None else cache_dir()
    if args.retrain:
        for kind in ("score", "classifier"):
            for suffix in (".msgpack", ".json"):
                (root / f"digits-{kind}-{config.key()}{suffix}").unlink(missing_ok=True)
    models = load_or_train(config, directory=root, verbose=True)
    print(json.dumps({k: models.info[k] for k in ("cache_key", "cached", "score", "classifier")}, indent=1))
    print(f"checkpoints in {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
