"""oIoU, mIoU and Pr@X for referring segmentation, gathering only per-expression scalars across processes."""
import csv
import itertools
import json
import logging
import math
import os
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..data.masks import load_gt_mask

__all__ = ["RRSISEvaluator", "rrsis_metrics"]

PR_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def rrsis_metrics(
    samples: list[dict[str, Any]], group_by: Sequence[str] = ("category",)
) -> "OrderedDict[str, float]":
    """Metrics in percent from per-expression ``{"I", "U", "IoU", <group_by fields>}``.

    oIoU = sum I / sum U; mIoU = mean IoU; Pr@X = share of expressions with IoU >= X. An expression whose
    union is empty (empty ground truth and empty prediction) has IoU 0, as in LAVT and RMSIN.
    Sums use ``math.fsum`` so the result does not depend on the order samples arrive in.
    Per value ``v`` of each record field in ``group_by`` (records without it are left out of that group):
    ``mIoU-<v>`` for ``category``; ``mIoU-<field>:<v>``, ``Pr@0.5-<field>:<v>`` and ``n-<field>:<v>`` for others.
    """
    n = len(samples)
    ious = [s["IoU"] for s in samples]
    total_u = sum(s["U"] for s in samples)
    res = OrderedDict()
    res["oIoU"] = 100.0 * sum(s["I"] for s in samples) / total_u if total_u > 0 else 0.0
    res["mIoU"] = 100.0 * math.fsum(ious) / n
    for t in PR_THRESHOLDS:
        res[f"Pr@{t}"] = 100.0 * sum(iou >= t for iou in ious) / n
    for field in group_by:
        groups = defaultdict(list)
        for s in samples:
            if s.get(field) is not None:
                groups[s[field]].append(s["IoU"])
        for value in sorted(groups, key=str):
            group = groups[value]
            if field == "category":
                res[f"mIoU-{value}"] = 100.0 * math.fsum(group) / len(group)
                continue
            res[f"mIoU-{field}:{value}"] = 100.0 * math.fsum(group) / len(group)
            res[f"Pr@0.5-{field}:{value}"] = 100.0 * sum(iou >= 0.5 for iou in group) / len(group)
            res[f"n-{field}:{value}"] = float(len(group))
    return res


class RRSISEvaluator(DatasetEvaluator):
    """Scores ``outputs[i]["ref_seg"]`` (foreground probability, height x width) thresholded at 0.5
    against ``load_gt_mask(inputs[i])``.

    ``eval_size`` = 0 scores at each image's full resolution; e.g. 480 scores at 480x480 like LAVT/RMSIN
    (probability resized bilinearly, ground truth with nearest neighbour). ``group_by``: record fields to
    report metrics per value of (``TEST.RRSIS_GROUP_BY``). Only the scalars I, U, IoU, the group fields and
    the expression id leave each process.
    """

    @configurable
    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: str | None = None,
        *,
        eval_size: int = 0,
        group_by: Sequence[str] = ("category",),
    ):
        self.dataset_name = dataset_name
        self.group_by = tuple(group_by)
        self.distributed = distributed
        self.output_dir = output_dir
        self.eval_size = eval_size
        self._logger = logging.getLogger(__name__)
        self._samples: list[dict[str, Any]] = []

    @classmethod
    def from_config(cls, cfg, dataset_name: str, distributed: bool = True, output_dir: str | None = None):
        return {
            "dataset_name": dataset_name,
            "distributed": distributed,
            "output_dir": output_dir,
            "eval_size": cfg.TEST.RRSIS_EVAL_SIZE,
            "group_by": cfg.TEST.RRSIS_GROUP_BY,
        }

    def reset(self) -> None:
        self._samples = []

    def _resize(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        size = (self.eval_size, self.eval_size)
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        return F.interpolate(x[None, None].float(), size=size, mode=mode, **kwargs)[0, 0]

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for inp, out in zip(inputs, outputs):
            prob = out["ref_seg"].detach().to("cpu", torch.float32)
            gt = torch.from_numpy(load_gt_mask(inp))
            if self.eval_size > 0:
                prob, gt = self._resize(prob, "bilinear"), self._resize(gt, "nearest") > 0.5
            elif prob.shape != gt.shape:
                raise ValueError(
                    f"Prediction for {inp.get('file_name')} is {tuple(prob.shape)} but its mask is "
                    f"{tuple(gt.shape)}; the model must return ref_seg at the record's height x width."
                )
            pred = prob > 0.5
            inter = int((pred & gt).sum())
            union = int((pred | gt).sum())
            sample = {
                "id": inp.get("sent_id", inp.get("file_name")),
                "file_name": inp.get("file_name"),
                "sentence": inp.get("sentence"),
                "category": inp.get("category"),
                "I": inter,
                "U": union,
                "IoU": inter / union if union > 0 else 0.0,
            }
            sample.update({field: inp.get(field) for field in self.group_by if field not in sample})
            self._samples.append(sample)

    def evaluate(self) -> dict[str, dict[str, float]] | None:
        samples = self._samples
        if self.distributed and comm.get_world_size() > 1:
            gathered = comm.gather(samples, dst=0)
            if not comm.is_main_process():
                return {}
            samples = list(itertools.chain(*gathered))
        if not samples:
            self._logger.warning(f"RRSISEvaluator on {self.dataset_name} received no predictions.")
            return {}
        results = rrsis_metrics(samples, self.group_by)
        if self.output_dir:
            self._write(samples)
        return {"rrsis": dict(results)}

    def _write(self, samples: list[dict[str, Any]]) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        stem = os.path.join(self.output_dir, f"rrsis_{self.dataset_name}")
        with open(stem + ".json", "w") as f:
            json.dump(samples, f, default=_json_default)
        with open(stem + ".csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(samples[0]))
            writer.writeheader()
            writer.writerows(samples)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return str(x)
