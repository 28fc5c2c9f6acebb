"""End-to-end tests of examples/demo.py on a tiny budget."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from examples import demo
from examples.lib import cifar10

pytestmark = pytest.mark.examples

TINY = ["--train-size", "256", "--test-size", "128", "--batch-size", "64", "--epochs", "1"]


def check_outputs(out: Path, stdout: str) -> None:
    assert "| optimiser | final train loss | test loss | test accuracy |" in stdout
    assert "| sgdm |" in stdout
    assert "| orthogonal_sgdm |" in stdout
    assert (out / "demo.png").stat().st_size > 0
    results = json.loads((out / "metrics.json").read_text())["results"]
    assert set(results) == {"sgdm", "orthogonal_sgdm"}
    for r in results.values():
        assert len(r["train_loss"]) == len(r["test_accuracy"]) == 1
        assert np.isfinite(r["train_loss"][0]) and 0 <= r["test_accuracy"][0] <= 1


def test_demo_on_synthetic_data(tmp_path, capsys):
    assert demo.main(["--synthetic", *TINY, "--workdir", str(tmp_path)]) == 0
    check_outputs(tmp_path, capsys.readouterr().out)


def test_demo_without_data_says_how_to_find_it(tmp_path, capsys):
    assert demo.main(["--data", str(tmp_path / "missing.npz"), *TINY]) == 2
    message = capsys.readouterr().err
    assert "--data" in message and "ORTHAX_CIFAR10" in message and "--synthetic" in message


def test_demo_on_local_cifar10(tmp_path, capsys):
    path = Path(os.environ.get("ORTHAX_CIFAR10", cifar10.DEFAULT_PATH))
    if not path.is_file():
        pytest.skip(f"no local CIFAR-10 copy at {path}")
    assert demo.main(["--data", str(path), *TINY, "--workdir", str(tmp_path)]) == 0
    check_outputs(tmp_path, capsys.readouterr().out)
