"""The lora_recovery benchmark suite end to end on a tiny TinyGPT folder and a short text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparseforge.bench import list_suites, run_suite
from sparseforge.errors import ConfigError
from sparseforge.models import TinyGPT
from sparseforge.oneshot.io import save_model_folder

pytestmark = pytest.mark.slow

PROSE = ("It is a truth universally acknowledged, that a single man in possession of a good fortune must be in want "
         "of a wife. Emma Woodhouse, handsome, clever, and rich, seemed to unite some of the best blessings of "
         "existence. ")


@pytest.fixture
def setting(tmp_path: Path):
    text = tmp_path / "prose.txt"
    text.write_text("\n\n".join(f"{PROSE} Chapter {i} begins with a quiet walk." * 3 for i in range(12)))
    chars = sorted(set(text.read_text()))
    torch.manual_seed(0)
    kwargs = dict(vocab_size=len(chars) + 1, block_size=16, d_model=32, n_layer=2, n_head=2)
    folder = save_model_folder(TinyGPT(**kwargs), {"model_name": "tiny-gpt", "model": kwargs, "chars": chars},
                               tmp_path / "gpt")
    return text, folder


def test_lora_recovery_suite_tiny(setting, tmp_path):
    text, folder = setting
    assert "lora_recovery" in list_suites()
    run_suite("lora_recovery", ["--gpt", str(folder), "--corpus", f"text:{text}", "--nsamples", "4", "--steps", "40",
                                "--batch", "8", "--lr", "1e-2", "--rank", "4", "--group", "16", "--val-windows", "8",
                                "--threads", "1", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "lora_recovery.json").read_text())
    assert data["provenance"]["command"].startswith("sparseforge bench lora_recovery")
    for run in data["runs"]:
        stages = {s["stage"]: s for s in run["stages"]}
        assert list(stages) == ["one-shot pruned", "masked LoRA, merged", "plain LoRA, merged",
                                "masked LoRA, int8 per channel", "masked LoRA, int4 groups of 16"]
        for name, s in stages.items():
            if name == "plain LoRA, merged":  # the baseline fills the pruned positions
                assert s["pruned_still_zero"] < 0.01 and s["sparsity"] < 0.01
            else:
                assert s["pruned_still_zero"] == 1.0 and s["sparsity"] == pytest.approx(0.5)
                assert s.get("nm_violations", 0) == 0
        assert run["training"]["masked"]["loss_last"] < run["training"]["masked"]["loss_first"]
        assert stages["masked LoRA, merged"]["val_ppl"] < stages["one-shot pruned"]["val_ppl"]
    assert data["dense_lora"]["val_ppl"] < data["dense"]["val_ppl"]  # the recovery reference trains too
    md = (tmp_path / "lora_recovery.md").read_text()
    assert "## target 2:4" in md and "N:M violations" in md


def test_lora_recovery_bad_target(setting, tmp_path):
    text, folder = setting
    with pytest.raises(ConfigError, match="--targets"):
        run_suite("lora_recovery", ["--gpt", str(folder), "--corpus", f"text:{text}", "--targets", "half",
                                    "--out", str(tmp_path)])
