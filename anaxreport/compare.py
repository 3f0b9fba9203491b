"""``anaxreport compare``: the paper's Table 3 on your data, AnaXNet against its baselines.

One command trains the four models of the comparison on one dataset by the training code of
:mod:`.train` (:func:`~.train.train_heads`): the detector and its region features once, then
Faster R-CNN + FC, CheXGCN and AnaXNet on those same features, as the paper did, and the
image-level GlobalView on the same images. Each is an ordinary checkpoint, scored on the test
split with Table 3's protocol, and printed beside the paper's numbers (Chest ImaGenome).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .evaluate import Evaluation
from .model.config import HEAD_NAMES
from .train import TrainSettings, train_heads
from .vocab import FINDING_NAMES

__all__ = ["METHODS", "PAPER_TABLE_3", "Comparison", "compare"]

#: Table 3's rows, in the paper's order: head kind → the paper's name for it.
METHODS = {
    "fc": "Faster R-CNN + FC",
    "globalview": "GlobalView",
    "chexgcn": "CheXGCN",
    "anaxnet": "AnaXNet",
}
#: The paper's Table 3 (AUC on Chest ImaGenome): the 9 findings in vocabulary order, then AVG.
PAPER_TABLE_3 = {
    "fc": (0.84, 0.89, 0.77, 0.85, 0.87, 0.77, 0.75, 0.81, 0.71, 0.80),
    "globalview": (0.91, 0.94, 0.86, 0.92, 0.92, 0.93, 0.86, 0.87, 0.84, 0.89),
    "chexgcn": (0.86, 0.90, 0.91, 0.94, 0.95, 0.75, 0.89, 0.98, 0.88, 0.90),
    "anaxnet": (0.88, 0.96, 0.92, 0.99, 0.95, 0.80, 0.89, 0.98, 0.97, 0.93),
}


@dataclass(frozen=True)
class Comparison:
    """Each method's test evaluation and checkpoint, for the data named by ``data``."""

    data: str
    evaluations: Mapping[str, Evaluation]
    checkpoints: Mapping[str, Path]

    def table(self) -> str:
        """Table 3's layout: a row per method, ours and then the paper's beneath it."""
        width = max(len(name) for name in METHODS.values()) + 2
        head = " ".join(f"{f'L{i + 1}':>5}" for i in range(len(FINDING_NAMES)))
        lines = [f"Table 3 (AUC, test split of {self.data}; the paper's on Chest ImaGenome)",
                 f"{'method':{width}} {head}   AVG"]  # fmt: skip
        for kind, name in METHODS.items():
            evaluation = self.evaluations[kind]
            ours = (*evaluation.finding_auc, evaluation.mean_auc)
            mark = "" if evaluation.localising else "*"
            lines.append(f"{name + mark:{width}} {_cells(ours)}")
            lines.append(f"{'  paper':{width}} {_cells(PAPER_TABLE_3[kind])}")
        lines.append("* image-level: GlobalView classifies whole images and does not localise")
        lines.append(", ".join(f"L{i + 1} {name}" for i, name in enumerate(FINDING_NAMES)))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        def named(values: tuple[float, ...]) -> dict[str, float | None]:
            return {
                name: None if math.isnan(v) else round(float(v), 4)
                for name, v in zip((*FINDING_NAMES, "AVG"), values, strict=True)
            }

        return {
            "data": self.data,
            "methods": {
                kind: {
                    "name": name,
                    "checkpoint": str(self.checkpoints[kind]),
                    "localising": self.evaluations[kind].localising,
                    "auc": named(
                        (*self.evaluations[kind].finding_auc, self.evaluations[kind].mean_auc)
                    ),
                    "paper_auc": named(PAPER_TABLE_3[kind]),
                    "test": self.evaluations[kind].to_dict(),
                }
                for kind, name in METHODS.items()
            },
        }


def _cells(values: tuple[float, ...]) -> str:
    return " ".join("  n/a" if math.isnan(v) else f"{v:5.2f}" for v in values)


def compare(settings: TrainSettings, out_dir: Path) -> Comparison:
    """Train and score the four methods on ``settings.data``; checkpoints go to ``out_dir``
    (``<name>.json``), the shared detector's stage files to ``settings.work_dir``."""
    outs = {kind: out_dir / f"{HEAD_NAMES[kind]}.json" for kind in METHODS}
    results = train_heads(replace(settings, out=outs["anaxnet"]), outs)
    return Comparison(
        data=str(settings.data),
        evaluations={kind: evaluation for kind, (_, evaluation) in zip(outs, results, strict=True)},
        checkpoints=outs,
    )
