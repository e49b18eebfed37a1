"""Which ids a label set is scored on (:func:`wsss_lightning.label_runner.scored_ids`)."""

from __future__ import annotations

from pathlib import Path

from wsss_lightning.label_runner import scored_ids


def test_scored_ids_are_the_training_ids_of_the_eval_split_when_there_is_one(tmp_path: Path) -> None:
    assert scored_ids(["a", "b", "c"], {"b", "x"}, tmp_path) == {"b"}  # "x" is not a training id


def test_scored_ids_fall_back_to_the_ids_with_a_ground_truth_mask(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "c.png").write_bytes(b"")
    (tmp_path / "z.png").write_bytes(b"")  # not a training id
    assert scored_ids(["a", "b", "c"], None, tmp_path) == {"a", "c"}


def test_no_ground_truth_means_nothing_to_score() -> None:
    assert scored_ids(["a", "b"], None, None) is None
