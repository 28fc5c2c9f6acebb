"""SGD with momentum against orthogonal SGD with momentum on CIFAR-10, side by side.

A short version of the BasicCNN experiment of Tuddenham et al. (arXiv:2202.07052): both optimisers
train the same model from the same initialisation on the same batches in the same order, with the
paper's protocol (batch 1024, learning rate 1e-2, momentum 0.9, weight decay 5e-4, random crop with
4 pixels of padding and horizontal flips). Only the budget is shorter by default.

    python -m examples.demo                                   # 3 epochs on 10,000 images
    python -m examples.demo --epochs 20 --train-size 50000    # closer to the paper
    python -m examples.demo --synthetic                       # no data set needed

The data is a local CIFAR-10 copy stored as concatenated JPEGs (see `load_cifar10`).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import orthax

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/cifar10/cifar10_jpeg.npz"
NO_DATA_MESSAGE = """\
No CIFAR-10 data found at {path}.
Point the demo at a local copy of cifar10_jpeg.npz, either with
    python -m examples.demo --data /path/to/cifar10_jpeg.npz
or with the environment variable
    ORTHAX_CIFAR10=/path/to/cifar10_jpeg.npz python -m examples.demo
or run on synthetic data (no download, no meaningful accuracy) with
    python -m examples.demo --synthetic"""


class Dataset(NamedTuple):
    train_images: np.ndarray  # uint8 (n, 32, 32, 3)
    train_labels: np.ndarray  # int32 (n,)
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: tuple[float, float, float]  # per channel, of the training images scaled to [0, 1]
    std: tuple[float, float, float]


def decode_jpegs(jpeg: np.ndarray, offsets: np.ndarray, n: int) -> np.ndarray:
    """Decodes the first n of concatenated 32x32 RGB JPEG files into uint8 (n, 32, 32, 3)."""
    from PIL import Image

    data, offsets = jpeg.tobytes(), offsets.tolist()
    images = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        with Image.open(io.BytesIO(data[offsets[i] : offsets[i + 1]])) as image:
            images[i] = np.asarray(image.convert("RGB"))
    return images


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pixels = images.reshape(-1, 3) / 255.0
    return tuple(pixels.mean(0).tolist()), tuple(pixels.std(0).tolist())


def load_cifar10(path: Path, train_size: int, test_size: int) -> Dataset:
    """Loads the first train_size training and test_size test images of a cifar10_jpeg.npz file.

    The file holds each image as a JPEG, concatenated (`train_jpeg`, `train_offsets`,
    `train_labels`, and the same for `test`); images are stored in a random order, so any prefix is
    a class-balanced subset. Normalisation statistics come from the training images used.
    """
    with np.load(path, allow_pickle=False) as npz:
        train = decode_jpegs(npz["train_jpeg"], npz["train_offsets"], train_size)
        test = decode_jpegs(npz["test_jpeg"], npz["test_offsets"], test_size)
        train_labels = npz["train_labels"][:train_size].astype(np.int32)
        test_labels = npz["test_labels"][:test_size].astype(np.int32)
    return Dataset(train, train_labels, test, test_labels, *channel_stats(train))


def synthetic_data(train_size: int, test_size: int, seed: int) -> Dataset:
    """Random images around one fixed random pattern per class: learnable, needs no files."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(0, 255, (10, 32, 32, 3))

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, n).astype(np.int32)
        noise = rng.uniform(0, 255, (n, 32, 32, 3))
        return (0.5 * patterns[labels] + 0.5 * noise).astype(np.uint8), labels

    (train, train_labels), (test, test_labels) = sample(train_size), sample(test_size)
    return Dataset(train, train_labels, test, test_labels, *channel_stats(train))


class BasicCNN(nn.Module):
    """The paper's BasicCNN: three 3x3 stride-2 convolutions (32 filters) with batch norm and ReLU,
    then a linear classifier. 24,714 parameters for 32x32x3 inputs.

    Takes uint8 images and normalises them per channel with `mean` and `std` (of [0, 1] pixels).
    """

    num_classes: int = 10
    features: int = 32
    mean: tuple[float, ...] = (0.4913, 0.4821, 0.4465)
    std: tuple[float, ...] = (0.2452, 0.2428, 0.2606)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        x = (images.astype(jnp.float32) / 255.0 - jnp.array(self.mean)) / jnp.array(self.std)
        for _ in range(3):
            x = nn.Conv(self.features, (3, 3), strides=2, padding=1)(x)
            # momentum 0.9 here is PyTorch's BatchNorm2d default (momentum=0.1 there).
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
            x = nn.relu(x)
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def make_model(data: Dataset) -> BasicCNN:
    return BasicCNN(mean=data.mean, std=data.std)


@functools.partial(jax.jit, static_argnames="model")
def init_variables(model: BasicCNN, key: jax.Array) -> dict:
    """Parameters and batch statistics of a fresh model (jitted: faster than eager on CPU)."""
    return model.init(key, jnp.zeros((1, 32, 32, 3), jnp.uint8), train=False)


def augment(images: jax.Array, key: jax.Array) -> jax.Array:
    """Random 32x32 crop of each image padded by 4 black pixels, then a random horizontal flip."""
    n, height, width, channels = images.shape
    crop_key, flip_key = jax.random.split(key)
    padded = jnp.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    corners = jax.random.randint(crop_key, (n, 2), 0, 9)

    def crop(image: jax.Array, corner: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (corner[0], corner[1], 0), (height, width, channels))

    images = jax.vmap(crop)(padded, corners)
    flip = jax.random.bernoulli(flip_key, 0.5, (n,))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


@functools.partial(jax.jit, static_argnames=("model", "tx"))
def train_step(params, batch_stats, opt_state, batch, key, *, model, tx):
    """One step on an augmented batch; returns the new (params, batch_stats, opt_state, loss)."""
    images, labels = batch
    images = augment(images, key)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": batch_stats}
        logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss


@functools.partial(jax.jit, static_argnames=("model", "batch_size"))
def evaluate(params, batch_stats, images, labels, *, model, batch_size):
    """Mean cross-entropy and accuracy over a whole data set, batch_size images at a time."""
    n = images.shape[0]
    pad = -n % batch_size
    images = jnp.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0)))
    labels = jnp.pad(labels, (0, pad))
    weights = (jnp.arange(n + pad) < n).astype(jnp.float32)

    def batch_sums(batch):
        x, y, w = batch
        logits = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(w * loss), jnp.sum(w * (jnp.argmax(logits, -1) == y))

    batches = jax.tree.map(
        lambda a: a.reshape(-1, batch_size, *a.shape[1:]), (images, labels, weights)
    )
    loss_sums, correct = jax.lax.map(batch_sums, batches)
    return loss_sums.sum() / n, correct.sum() / n


def run(
    name: str, tx: optax.GradientTransformation, data: Dataset, args: argparse.Namespace
) -> dict:
    """Trains a fresh BasicCNN with tx; every optimiser sees the same init, batches and crops."""
    model = make_model(data)
    variables = init_variables(model, jax.random.key(args.seed))
    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    order = np.random.default_rng(args.seed)
    key = jax.random.key(args.seed + 1)
    steps_per_epoch = len(data.train_images) // args.batch_size  # the last partial batch is dropped
    history = {"train_loss": [], "test_loss": [], "test_accuracy": []}
    step_seconds = []

    start = time.perf_counter()
    for epoch in range(args.epochs):
        permutation = order.permutation(len(data.train_images))
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"{name} epoch {epoch + 1}/{args.epochs}")
        for step in bar:
            idx = permutation[step * args.batch_size : (step + 1) * args.batch_size]
            batch = (data.train_images[idx], data.train_labels[idx])
            key, step_key = jax.random.split(key)
            tick = time.perf_counter()
            params, batch_stats, opt_state, loss = train_step(
                params, batch_stats, opt_state, batch, step_key, model=model, tx=tx
            )
            losses.append(float(loss))  # waits for the step to finish
            step_seconds.append(time.perf_counter() - tick)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        test_loss, test_accuracy = evaluate(
            params,
            batch_stats,
            data.test_images,
            data.test_labels,
            model=model,
            batch_size=args.batch_size,
        )
        history["train_loss"].append(float(np.mean(losses)))
        history["test_loss"].append(float(test_loss))
        history["test_accuracy"].append(float(test_accuracy))
    wall_seconds = time.perf_counter() - start

    return {
        **history,
        "first_step_s": step_seconds[0],  # mostly compilation
        "mean_step_ms": 1e3 * float(np.mean(step_seconds[1:])) if len(step_seconds) > 1 else None,
        "wall_s": wall_seconds,
    }


def results_table(results: dict[str, dict]) -> str:
    lines = [
        "| optimiser | final train loss | test loss | test accuracy | mean step time (ms) "
        "| wall time (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        step_ms = "n/a" if r["mean_step_ms"] is None else f"{r['mean_step_ms']:.1f}"
        lines.append(
            f"| {name} | {r['train_loss'][-1]:.4f} | {r['test_loss'][-1]:.4f} "
            f"| {100 * r['test_accuracy'][-1]:.2f}% | {step_ms} | {r['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, dict], path: Path) -> None:
    """Test accuracy and train loss per epoch, one line per optimiser."""
    from matplotlib.figure import Figure  # Figure.savefig draws with Agg: no pyplot, no display
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4), layout="constrained")
    accuracy_ax, loss_ax = fig.subplots(1, 2)
    for name, r in results.items():
        epochs = range(1, len(r["train_loss"]) + 1)
        accuracy_ax.plot(epochs, [100 * a for a in r["test_accuracy"]], marker="o", label=name)
        loss_ax.plot(epochs, r["train_loss"], marker="o", label=name)
    accuracy_ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    loss_ax.set(xlabel="epoch", ylabel="train loss", title="Train loss")
    for ax in (accuracy_ax, loss_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=120)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        help=f"cifar10_jpeg.npz (default: $ORTHAX_CIFAR10, else {DEFAULT_DATA})",
    )
    parser.add_argument("--synthetic", action="store_true", help="use synthetic data instead")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=10_000, help="first N training images")
    parser.add_argument("--test-size", type=int, default=10_000, help="first N test images")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if not args.batch_size <= args.train_size <= 50_000:
        parser.error(
            f"--train-size must be in [--batch-size={args.batch_size}, 50000], "
            f"got {args.train_size}"
        )
    if not 1 <= args.test_size <= 10_000:
        parser.error(f"--test-size must be in [1, 10000], got {args.test_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.synthetic:
        data, source = synthetic_data(args.train_size, args.test_size, args.seed), "synthetic"
    else:
        path = args.data or Path(os.environ.get("ORTHAX_CIFAR10", DEFAULT_DATA))
        if not path.is_file():
            print(NO_DATA_MESSAGE.format(path=path), file=sys.stderr)
            return 2
        tick = time.perf_counter()
        data, source = load_cifar10(path, args.train_size, args.test_size), "CIFAR-10"
        print(
            f"decoded {args.train_size + args.test_size} images from {path} "
            f"in {time.perf_counter() - tick:.1f} s",
            file=sys.stderr,
        )

    optimisers = {
        "sgdm": optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(1e-2, momentum=0.9)),
        "orthogonal_sgdm": orthax.orthogonal_sgd(1e-2, momentum=0.9, weight_decay=5e-4),
    }
    results = {name: run(name, tx, data, args) for name, tx in optimisers.items()}

    device = jax.devices()[0]
    setting = (
        f"BasicCNN on the first {args.train_size} {source} training images, epochs: "
        f"{args.epochs} x {args.train_size // args.batch_size} steps of {args.batch_size}, "
        f"test images: {args.test_size}; device: {device.device_kind}, "
        f"jax {jax.__version__}, {datetime.date.today().isoformat()}"
    )
    print(results_table(results))
    print(setting)

    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "demo.png")
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    metrics = {"config": config, "setting": setting, "results": results}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"plot: {args.out / 'demo.png'}")
    print(f"metrics: {args.out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
