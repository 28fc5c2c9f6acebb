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


# The CIFAR-10 demo trains 16 steps (1,024 images in batches of 64): enough to learn.
LEARNING = ["--train-size", "1024", *TINY[2:]]


def chance_accuracy(images: int, classes: int = 10) -> float:
    """The most a model whose predictions carry no information about the labels scores on
    `images` validation images drawn without replacement from CIFAR-10's 50,000 training images
    (5,000 per class), with a margin of 5 standard errors: its expected accuracy is sum_c q_c p_c
    <= max_c p_c, p_c the classes' shares (hypergeometric: at most 1 / classes plus 5 of their sd),
    and its count of correct answers has the binomial sd of that rate."""
    p, population = 1 / classes, 50_000
    share = p + 5 * np.sqrt(p * (1 - p) / images * (population - images) / (population - 1))
    return share + 5 * np.sqrt(share * (1 - share) / images)


def check_outputs(out: Path, stdout: str, learns: bool = False) -> None:
    """The table, plot and results of a one-epoch demo; with `learns` (CIFAR-10), each optimiser's
    validation accuracy (the 5,000 images) above `chance_accuracy`: an optimiser that does not
    learn (a rate of 0) stays below it."""
    assert "| optimiser | final train loss | test loss | test accuracy |" in stdout
    assert "| sgdm |" in stdout
    assert "| orthogonal-sgdm |" in stdout
    assert (out / "demo.png").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"sgdm", "orthogonal-sgdm"}
    for name, (r,) in results.items():
        assert len(r["train_loss"]) == len(r["test_accuracy"]) == 1
        assert np.isfinite(r["train_loss"][0]) and 0 <= r["test_accuracy"][0] <= 1
        if learns:
            assert r["val_accuracy"][0] > chance_accuracy(5000), (name, r["val_accuracy"])
    # A `-` cell (the target not reached) comes with the line that explains it.
    assert ("| - |" in stdout) == ("- : 50% validation accuracy not reached in 1 epoch" in stdout)


def test_demo_without_data_says_how_to_find_it(tmp_path, capsys):
    assert demo.main(["--data", str(tmp_path / "missing.npz"), *TINY]) == 2
    message = capsys.readouterr().err
    assert "--data" in message and "ORTHAX_CIFAR10" in message and "--synthetic" in message


def test_demo_on_local_cifar10(tmp_path, capsys):
    path = Path(os.environ.get("ORTHAX_CIFAR10", cifar10.DEFAULT_PATH))
    if not path.is_file():
        pytest.skip(f"no local CIFAR-10 copy at {path}")
    assert demo.main(["--data", str(path), *LEARNING, "--workdir", str(tmp_path)]) == 0
    check_outputs(tmp_path, capsys.readouterr().out, learns=True)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No --data, no $ORTHAX_CIFAR10, no tensorflow-datasets, no local copy, no network."""
    import sys

    from examples.lib import download
    monkeypatch.delenv("ORTHAX_CIFAR10", raising=False)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    monkeypatch.setattr(cifar10, "DEFAULT_PATH", tmp_path / "absent" / "cifar10_jpeg.npz")
    monkeypatch.setenv("ORTHAX_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(download.REMOTES, "cifar10", download.Remote(
        "CIFAR-10", "http://127.0.0.1:9/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
        "md5:" + "0" * 32))


def advised_commands(message: str) -> list[str]:
    """The indented lines of the advice: the flags or variables it tells the reader to use."""
    advice = message.split("Point the example at a copy with")[1]
    return [line.split("  (")[0].strip() for line in advice.splitlines()
            if line.startswith("    ")]


def test_every_command_the_offline_demo_advises_works(offline, tmp_path, capsys, monkeypatch):
    """Without the data and the network, each flag the demo prints is one it accepts, the
    variable is the one it reads, and the advised `--synthetic` run trains end to end."""
    assert demo.main(TINY) == 2
    message = capsys.readouterr().err
    advised = advised_commands(message)
    assert "--synthetic" in advised and any(a.startswith("--data") for a in advised)
    assert "--download" not in message  # tensorflow-datasets is absent: it could not act
    for command in advised:
        if command.startswith("--"):
            demo.parse_args(command.split() + TINY)  # a usage error exits
        else:
            name, path = command.split("=")
            monkeypatch.setenv(name, str(tmp_path / "named.npz"))
            assert demo.main(TINY) == 2  # it looked at the named file
            assert f"No CIFAR-10 data found at {tmp_path / 'named.npz'}" in capsys.readouterr().err
            monkeypatch.delenv(name)
    out = tmp_path / "advised"
    assert demo.main(["--synthetic", *TINY, "--workdir", str(out)]) == 0
    # Not checked to learn: the synthetic classes are patterns half drowned in noise, which the
    # demo's random crops and flips move about; a few steps do not reliably beat chance on them.
    check_outputs(out, capsys.readouterr().out)


def test_help_shows_each_default_once(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "where the runs go (default: runs/demo)" in help_text
    assert "runs/compare" not in help_text
    assert "cifar10_jpeg.npz" in help_text and "cifar-10-python.tar.gz" in help_text


def readme_commands() -> list[tuple[str, list[str]]]:
    """(example, arguments) of every `python -m examples.<name>.main ...` command in the examples'
    READMEs, continuation lines joined and comments dropped."""
    import re
    import shlex

    commands = []
    for readme in sorted((Path(__file__).resolve().parents[1] / "examples").glob("**/README.md")):
        text = readme.read_text().replace("\\\n", " ")
        for match in re.finditer(r"python -m examples\.(\w+)\.main([^\n`]*)", text):
            argv = shlex.split(match.group(2), comments=True)
            if not {"NAME", "..."} & set(argv):  # templates, not commands
                commands.append((match.group(1), argv))
    return commands


def test_every_readme_command_parses():
    """The commands the READMEs print name an example's main.py and only flags it has (the
    presets are replaced by ones that read no files)."""
    from examples.barlow_twins import configs as barlow
    from examples.cifar10 import configs as cifar
    from examples.imagenet import configs as imagenet
    from examples.lib import config as config_lib
    from examples.shakespeare_char import configs as lm
    from examples.shakespeare_char import main as lm_main

    examples = {"cifar10": (cifar, None), "imagenet": (imagenet, None),
                "barlow_twins": (barlow, None), "shakespeare_char": (lm, lm_main.add_flags)}
    commands = readme_commands()
    assert {name for name, _ in commands} == set(examples)
    for name, argv in commands:
        module, extra = examples[name]
        presets = {preset: lambda flags, args, m=module: config_lib.lay([m.Config()], flags)
                   for preset in module.CONFIGS}
        config_lib.command_line(module.Config, presets, argv, None, extra_flags=extra)
