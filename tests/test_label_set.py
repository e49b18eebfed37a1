"""The label-set type (pseudo/label_set.py): layout, manifest, resume by checksum, copies; and the writer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from wsss_lightning.pseudo.label_set import LabelLayout, LabelSet, config_hash, relative_path
from wsss_lightning.pseudo.writer import PseudoLabelWriter


def _write_label(job: tuple[Path, str, bytes]) -> dict:
    out_dir, name, data = job
    (out_dir / "seg").mkdir(exist_ok=True)
    (out_dir / relative_path("seg", name)).write_bytes(data)
    return {"name": name, "files": {f"seg/{name}.png": hashlib.sha256(data).hexdigest()}, "stats": [{"empty": 0}]}


def _write_set(label_set: LabelSet, config: dict, names: list[str]) -> None:
    with PseudoLabelWriter(label_set, config) as writer:
        for name in names:
            writer.submit(_write_label, (label_set.root, name, f"label {name}".encode()))


def test_damaged_or_stale_label_files_are_detected_by_checksum(tmp_path: Path) -> None:
    label_set = LabelSet(tmp_path)
    names = ["a", "b", "c", "d"]
    config = {"stage": 1, "kind": "refined", "model_step": 12}
    _write_set(label_set, config, names)
    manifest = label_set.finalize(config, names, LabelLayout())
    assert manifest["config_hash"] == config_hash(config) and manifest["stats"]["a"] == [{"empty": 0}]
    assert label_set.pending(config, names, verify=True) == []
    (tmp_path / "seg" / "b.png").write_bytes(b"label b"[:3])  # truncated
    (tmp_path / "seg" / "c.png").write_bytes(b"label X")  # edited, same size
    (tmp_path / "seg" / "d.png").unlink()  # missing
    assert label_set.pending(config, names, verify=True) == [1, 2, 3]
    assert label_set.pending(config, names, verify=False) == [3], "without verify only existence is checked"
    assert label_set.pending({**config, "model_step": 13}, names, verify=True) == [0, 1, 2, 3], "stale config"
    with PseudoLabelWriter(label_set, config) as writer:  # rewrite only the pending ids
        for index in label_set.pending(config, names, verify=True):
            writer.submit(_write_label, (tmp_path, names[index], f"label {names[index]}".encode()))
        assert writer.written == 3
    label_set.finalize(config, names, LabelLayout())
    assert label_set.pending(config, names, verify=True) == []
    assert (tmp_path / "seg" / "c.png").read_bytes() == b"label c"
    assert not list(tmp_path.glob("manifest.rank*.jsonl")), "the shards are merged into manifest.json"


def test_a_crash_cut_manifest_line_is_ignored(tmp_path: Path) -> None:
    label_set = LabelSet(tmp_path)
    config = {"stage": 0}
    _write_set(label_set, config, ["a"])
    with open(label_set.shard_path(0), "a") as shard:
        shard.write('{"name": "b", "files": {"seg/b.png"')  # the process died mid-line
    assert label_set.pending(config, ["a", "b"], verify=True) == [1]


def test_finalize_refuses_a_set_with_missing_entries(tmp_path: Path) -> None:
    label_set = LabelSet(tmp_path)
    _write_set(label_set, {"stage": 0}, ["a"])
    try:
        label_set.finalize({"stage": 0}, ["a", "b"], LabelLayout())
    except RuntimeError as error:
        assert "1 pseudo-labels missing" in str(error) and "'b'" in str(error)
    else:
        raise AssertionError("finalize accepted a set without 'b'")


def test_layout_comes_from_the_manifest_not_from_the_folders(tmp_path: Path) -> None:
    label_set = LabelSet(tmp_path / "set")
    _write_set(label_set, {"stage": 2}, ["a"])
    (label_set.root / "images").mkdir()  # a stray folder does not make it a set of copies
    label_set.finalize({"stage": 2}, ["a"], LabelLayout(kinds=("seg", "sal")))
    assert label_set.layout() == LabelLayout(kinds=("seg", "sal"), copies=False)
    assert label_set.has("sal") and not label_set.has("images")
    assert label_set.folder_if("sal") == label_set.root / "sal" and label_set.folder_if("gt") is None
    manifest = json.loads(label_set.manifest_path.read_text())
    assert manifest["layout"] == {"kinds": ["seg", "sal"], "copies": False}


def test_files_of_plain_sets_and_sets_of_copies(tmp_path: Path) -> None:
    plain = LabelSet(tmp_path / "plain")
    for kind in ("seg", "sal"):
        (plain.folder(kind)).mkdir(parents=True)
        plain.path(kind, "a").write_bytes(b"x")
    assert plain.files_of("a") == {"seg": plain.root / "seg/a.png", "sal": plain.root / "sal/a.png"}
    assert plain.files_of("b") is None
    copies = LabelSet(tmp_path / "copies")
    for kind in ("seg", "images", "gt"):
        copies.folder(kind).mkdir(parents=True)
        copies.path(kind, "a_0").write_bytes(b"x")
    assert copies.layout().copies  # no manifest yet: the images/ folder tells
    assert copies.files_of("a") == {
        "seg": copies.root / "seg/a_0.png", "images": copies.root / "images/a_0.png", "gt": copies.root / "gt/a_0.png",
    }  # fmt: skip


def test_copies_of_lists_the_scored_copies_from_the_manifest(tmp_path: Path) -> None:
    label_set = LabelSet(tmp_path)
    digest = "0" * 64
    files = {
        "a": {"seg/a_0.png": digest, "gt/a_0.png": digest, "seg/a_1.png": digest, "gt/a_1.png": digest},
        "b": {"seg/b_0.png": digest},  # not scored: no warped ground truth
    }
    label_set.manifest_path.parent.mkdir(parents=True, exist_ok=True)
    label_set.manifest_path.write_text(json.dumps({"config_hash": "x", "files": files}))
    assert label_set.copies_of(["a", "b"]) == ["a_0", "a_1"]
    assert label_set == LabelSet(tmp_path / ".") and len({label_set, LabelSet(tmp_path)}) == 1
