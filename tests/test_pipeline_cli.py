"""``combprune pipeline CONFIG.toml``: the sparse-training pipeline from a configuration file."""

from __future__ import annotations

import json
import re

import pytest

from combprune.cli import main

TINY = """
[data]
dataset = "digits"
seed = 1

[model]
hidden = [32]

[pipeline]
density = 0.2
pre_epochs = 2
post_epochs = 2
"""


def test_pipeline_command_runs_a_config_and_reaches_the_density(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    assert main(["pipeline", str(cfg), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["density"] <= 0.2 + 1e-9 and out["density"] > 0.15
    assert out["test_samples"] == round(0.3 * 1797) and out["train_samples"] == 1797 - out["test_samples"]
    assert out["test_accuracy"] > 0.3  # 10 classes: far above chance after 4 epochs
    assert {row["stage"] for row in out["history"]} >= {"pre-training", "post-training"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (TINY + "\n[extra]\nx = 1\n", r"unknown table \[extra\]"),
        (TINY.replace('"digits"', '"cifar"'), r"\[data\] dataset must be one of"),
        (TINY.replace("density = 0.2\n", ""), r"\[pipeline\] density is required"),
        (TINY.replace("pre_epochs = 2", "pre_epochs = 2\nno_such_option = 1"), r"\[pipeline\].*no_such_option"),
        (TINY.replace("hidden = [32]", "hidden = [0]"), r"\[model\] hidden must be"),
        (TINY.replace("seed = 1", "seed = -1"), r"\[data\] seed"),
        ("[data\n", "invalid TOML"),
    ],
)
def test_bad_configs_name_the_file_table_and_field(tmp_path, capsys, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    assert main(["pipeline", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("combprune: error: ") and str(cfg) in err
    assert re.search(message, err), err
