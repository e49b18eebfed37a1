"""The notebooks run end to end (so they cannot rot) and are stored without outputs.

``01_pipeline_walkthrough`` trains a tiny run on the tiny demo data and draws image -> CAM -> refined CAM ->
pseudo-labels -> prediction and the saliency update; ``02_results_report`` reads that run's ``wsss test`` JSON and
label sets and plots per-class IoU and per-stage pseudo-label quality. Both save their figures to a temporary folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
WALKTHROUGH = NOTEBOOKS / "01_pipeline_walkthrough.ipynb"
REPORT = NOTEBOOKS / "02_results_report.ipynb"


def _execute(path: Path, cwd: Path) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


def _stdout(notebook: nbformat.NotebookNode) -> str:
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    )


def _images(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


@pytest.mark.parametrize("path", [WALKTHROUGH, REPORT], ids=lambda p: p.stem)
def test_notebooks_are_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "a notebook without code"
    assert all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_notebooks_run_on_the_tiny_demo(tmp_path, monkeypatch):
    work, figures = tmp_path / "work", tmp_path / "figures"
    monkeypatch.setenv("WSSS_NB_WORK", str(work))
    monkeypatch.setenv("WSSS_NB_FIGURES", str(figures))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in ("WSSS_NB_CONFIG", "WSSS_NB_CHECKPOINT", "WSSS_NB_RUN_DIR", "WSSS_NB_RESULTS", "MPLBACKEND"):
        monkeypatch.delenv(name, raising=False)

    walkthrough = _execute(WALKTHROUGH, tmp_path)
    printed = _stdout(walkthrough)
    assert "stage0: initial" in printed and "stage1: refined" in printed
    assert _images(walkthrough) == 3  # pipeline, saliency, README strip
    results = work / "run" / "test_results.json"
    assert json.loads(results.read_text())["segmentation"]["val"]["ss"]["mIoU"] >= 0.0
    for name in ("pipeline.png", "saliency_update.png", "readme_strip.png"):
        with Image.open(figures / name) as picture:
            assert picture.mode == "RGB" and picture.width > 300
    # The pipeline figure: 3 rows of 7 panels; the README strip: 3 rows of 4.
    pipeline = np.asarray(Image.open(figures / "pipeline.png"))
    assert pipeline.shape[0] == 3 * (128 + 16) + 2 * 4

    monkeypatch.setenv("WSSS_NB_RUN_DIR", str(work / "run"))
    monkeypatch.setenv("WSSS_NB_RESULTS", str(results))
    report = _execute(REPORT, tmp_path)
    printed = _stdout(report)
    assert "Segmentation — split 'val'" in printed
    assert "stage 0 (initial): pseudo_mIoU" in printed and "stage 1 (refined): pseudo_mIoU" in printed
    assert _images(report) == 3  # per-class IoU, saliency metrics, pseudo-label quality
    for name in ("per_class_iou.png", "pseudo_quality.png"):
        assert (figures / name).stat().st_size > 5000
