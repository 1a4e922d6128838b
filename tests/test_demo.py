"""Smoke test of the network demo (``combprune demo``) with tiny settings."""

from __future__ import annotations

import json
import math

from combprune import demo
from combprune.cli import main as cli_main


def test_demo_tiny_run_table_plot_and_json(tmp_path, capsys):
    png, out = tmp_path / "acc.png", tmp_path / "rows.json"
    code = cli_main(
        [
            "demo", "--models", "mlp", "--methods", "magnitude,flop-magnitude,osscar", "--sparsities", "0.5",
            "--flop-budgets", "0.4", "--structured", "0.5", "--epochs", "1", "--n-samples", "32",
            "--plot", str(png), "--out", str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "test acc %" in text and "magnitude" in text and "osscar" in text
    rows = json.loads(out.read_text())
    by = {(r["method"], r["budget"]): r for r in rows}
    assert by[("dense", "-")]["sparsity"] == 0.0
    mag = by[("magnitude", "sparsity 0.5")]
    assert mag["sparsity"] >= 0.5 and 0 <= mag["accuracy"] <= 1
    assert all(not math.isnan(r["accuracy"]) for r in rows)
    if ("flop-magnitude", "FLOPs 0.4") in by:
        assert by[("flop-magnitude", "FLOPs 0.4")]["flops_kept"] <= 0.4 + 1e-9
    assert png.stat().st_size > 0


def test_format_table_handles_failed_rows():
    rows = [demo.DemoRow("mlp", "dense", "-", 0.9, 0.0, 1.0, 10, 0.0), demo.DemoRow("mlp", "chita", "sparsity 0.5", math.nan, math.nan, math.nan, 0, 0.0, note="failed")]
    text = demo.format_table(rows)
    assert "failed" in text and "90.00" in text
