"""Which part of an AuxSegNet(+) prediction carries the test mIoU: ``L``, ``A·L`` or ``R``.

Scores the val split single-scale from three outputs of one trained network: the segmentation logits ``L``, their
pairwise-only refinement ``A·L`` (the affinity rows that also propagate the CAMs) and the full refinement ``R``
(AuxSegNet: ``A·L``; AuxSegNet+: ``A·L + 1·(uᵀL)``, what ``wsss test`` scores). Used in docs/results.md to tell a
worse refinement from worse logits.

    python scripts/refinement_ablation.py --ckpt runs/demo_auxseg/checkpoints/last.ckpt -- \\
        --config configs/demo_auxseg.yaml --data.root demo_data/VOCdevkit/VOC2012 [overrides of that run]

The arguments after ``--`` are the run's ``wsss fit`` arguments (the network must be built as it was trained).
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from wsss_lightning.cli import build
from wsss_lightning.metrics.segmentation import SegmentationIoU


def main(argv: list[str]) -> None:
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="the run's checkpoint (e.g. checkpoints/last.ckpt)")
    args = parser.parse_args(argv[:split])
    model, data = build(argv[split + 1 :])
    state = torch.load(args.ckpt, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict(state)
    model.eval()
    data.setup("validate")
    loader = data.val_dataloader()[0]  # the segmentation split comes first
    metrics = {name: SegmentationIoU(model.num_classes) for name in ("L", "A·L", "R")}
    with torch.no_grad():
        for batch in loader:
            out = model.network(model.prepare_images(batch["image"]))
            size = tuple(batch["image"].shape[-2:])
            logits = out.seg_logits.float()
            outputs = {"L": logits, "A·L": out.affinity.propagate(logits), "R": out.seg_refined.float()}
            for name, values in outputs.items():
                prediction = F.interpolate(values, size, mode="bilinear", align_corners=False).argmax(1)
                for index, (h, w) in enumerate(batch["ori_size"].tolist()):
                    metrics[name].update(prediction[index, :h, :w], batch["seg"][index, :h, :w].long())
    for name, metric in metrics.items():
        print(f"{name:4s} val mIoU {100 * float(metric.compute()['mIoU']):.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
