"""The main job on the embedded default (`make demo`): generate synrrsis if needed, fine-tune CroBIM on the
pretrained MobileNetV2 and MiniLM on the CPU, evaluate on synrrsis_test, score the same model with the test
expressions shuffled between images (a language-blind control), and write into ``--output-dir`` the trained
``model_final.pth``, the ``config.yaml`` it was trained with, ``metrics.json`` and ``predictions.png``.
"""
import argparse
import json
import logging
import os
import sys
import time

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_net

from crobim_d2.data import load_gt_mask, read_image_rgb
from crobim_d2.data.synrrsis import ensure_synrrsis
from crobim_d2.evaluation import RRSISEvaluator
from crobim_d2.precision import autocast_dtype, describe_cpu
from crobim_d2.visualization import overlay_mask

DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "configs", "synrrsis", "crobim_mobilenet_v2.yaml"
)
# Detectron2's JSONWriter logs the training curve to OUTPUT_DIR/metrics.json; the job's summary takes that
# name, so the curve is kept beside it under this one.
TRAINING_CURVE = "training_metrics.json"


def shuffled_expressions(records: list[dict], seed: int = 0) -> list[dict]:
    """The records with every expression moved to a record of another image (masks stay with their image).

    Images are put in a random order with each image's records side by side; rotating the expressions by the
    largest number of records of one image then moves every expression to another image.
    """
    by_image: dict[str, list[dict]] = {}
    for r in records:
        by_image.setdefault(r["file_name"], []).append(r)
    groups = list(by_image.values())
    largest = max(len(g) for g in groups)
    if len(records) < 2 * largest:
        raise ValueError("Shuffling expressions between images needs more than one image's worth of records.")
    order = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    flat = [r for g in order for r in g]
    return [
        {**r, "sentence": flat[(k + largest) % len(flat)]["sentence"]} for k, r in enumerate(flat)
    ]


def register_control(test_name: str) -> str:
    """Registers ``<test_name>_shuffled``, the language-blind control of a test set, and returns its name."""
    control = f"{test_name}_shuffled"
    if control in DatasetCatalog.list():
        DatasetCatalog.remove(control)
        MetadataCatalog.remove(control)
    DatasetCatalog.register(control, lambda: shuffled_expressions(DatasetCatalog.get(test_name)))
    MetadataCatalog.get(control).set(evaluator_type="rrsis")
    return control


def _highlight(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Dim everything outside the mask and outline it: visible whatever the object's color."""
    return overlay_mask(image, mask, tint_alpha=0.0, dim_outside=0.35, outline_width=2)


def _text(tile: np.ndarray, lines: list[str]) -> np.ndarray:
    band = np.full((18 * len(lines) + 6, tile.shape[1], 3), 255, np.uint8)
    for k, line in enumerate(lines):
        cv2.putText(band, line, (4, 16 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([tile, band], axis=0)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]


def picture_grid(model, mapper, records: list[dict], path: str, num: int = 8) -> None:
    """Rows of (image + expression, ground truth, prediction + IoU) for ``num`` test expressions."""
    picked, seen = [], set()
    for r in records:
        if r["file_name"] not in seen:
            seen.add(r["file_name"])
            picked.append(r)
        if len(picked) == num:
            break
    rows = []
    model.eval()
    for r in picked:
        with torch.no_grad():
            prob = model([mapper(r)])[0]["ref_seg"].float().numpy()
        image, gt = read_image_rgb(r["file_name"]), load_gt_mask(r)
        pred = prob > 0.5
        union = (pred | gt).sum()
        iou = (pred & gt).sum() / union if union else 0.0
        text = _wrap(f'"{r["sentence"]}"', 34)[:3]
        text += [""] * (3 - len(text))
        tiles = [
            _text(image, text),
            _text(_highlight(image, gt), ["ground truth", "", ""]),
            _text(_highlight(image, pred), [f"prediction  IoU {100 * iou:.1f}", "", ""]),
        ]
        gap = np.full((tiles[0].shape[0], 6, 3), 255, np.uint8)
        rows.append(np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1))
    rows = [np.concatenate([row, np.full((6, row.shape[1], 3), 255, np.uint8)]) for row in rows]
    grid = np.concatenate(rows, axis=0)
    cv2.imwrite(path, grid[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])


def _precision_name(dtype) -> str:
    return str(dtype).replace("torch.", "") if dtype else "float32"


class _DropModelPrint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Model:")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="output/demo")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)

    train_args = train_net.argument_parser().parse_args(
        ["--config-file", args.config_file, *args.opts, "OUTPUT_DIR", args.output_dir]
    )
    t0 = time.perf_counter()
    if any(name.startswith("synrrsis_") for name in train_net.load_config(train_args).DATASETS.TRAIN):
        root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
        print(f"synrrsis (generated once) under {os.path.abspath(ensure_synrrsis(root))}", flush=True)
    data_s = time.perf_counter() - t0
    cfg = train_net.setup(train_args)
    logging.getLogger("d2.engine.defaults").addFilter(_DropModelPrint())
    t1 = time.perf_counter()
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()  # ends with the evaluation on cfg.DATASETS.TEST
    train_eval_s = time.perf_counter() - t1

    test_name = cfg.DATASETS.TEST[0]
    curve = os.path.join(args.output_dir, "metrics.json")
    if os.path.exists(curve):
        os.replace(curve, os.path.join(args.output_dir, TRAINING_CURVE))
    control_name = register_control(test_name)
    model = trainer.model
    t2 = time.perf_counter()
    control = inference_on_dataset(
        model,
        train_net.Trainer.build_test_loader(cfg, control_name),
        RRSISEvaluator(cfg, control_name, output_dir=os.path.join(args.output_dir, "control")),
    )
    control_s = time.perf_counter() - t2
    picture_grid(
        model,
        train_net.RRSISDatasetMapper(cfg, is_train=False),
        DatasetCatalog.get(test_name),
        os.path.join(args.output_dir, "predictions.png"),
    )
    test = results[test_name]["rrsis"] if test_name in results else results["rrsis"]
    metrics = {
        "config": os.path.relpath(args.config_file),
        "opts": args.opts,
        "test_dataset": test_name,
        "num_train_expressions": len(DatasetCatalog.get(cfg.DATASETS.TRAIN[0])),
        "num_test_expressions": len(DatasetCatalog.get(test_name)),
        "iterations": cfg.SOLVER.MAX_ITER,
        "batch_size": cfg.SOLVER.IMS_PER_BATCH,
        "test": test,
        "language_blind_control": control["rrsis"],
        "wall_time_s": {
            "data": round(data_s, 1),
            "train_and_eval": round(train_eval_s, 1),
            "control": round(control_s, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
        "torch_threads": torch.get_num_threads(),
        "cpu": describe_cpu(),
        "training_precision": _precision_name(cfg.SOLVER.AMP.ENABLED and autocast_dtype(
            cfg.MODEL.DEVICE, cfg.SOLVER.AMP.DTYPE, purpose="training", key="SOLVER.AMP.DTYPE")),
        "inference_precision": _precision_name(autocast_dtype(cfg.MODEL.DEVICE, cfg.MODEL.CROBIM.INFERENCE_DTYPE)),
    }
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    kinds = {k.split(":", 1)[1]: v for k, v in test.items() if k.startswith("mIoU-template:")}
    if kinds:
        print("mIoU by expression kind: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(kinds.items())))
    print(
        f"\n{test_name}: mIoU {test['mIoU']:.1f}  oIoU {test['oIoU']:.1f}  |  language-blind control: "
        f"mIoU {control['rrsis']['mIoU']:.1f}  oIoU {control['rrsis']['oIoU']:.1f}  |  training + evaluation "
        f"{train_eval_s / 60:.1f} min\nWrote {args.output_dir}/metrics.json (the training curve: "
        f"{TRAINING_CURVE}) and {args.output_dir}/predictions.png",
        flush=True,
    )
    return metrics


if __name__ == "__main__":
    main()
