"""Start-up checks of a training/evaluation config, each error naming the key to fix."""
import os

from detectron2.data import DatasetCatalog


def check_config(cfg, world_size: int, eval_only: bool = False) -> None:
    """Raise ``ValueError`` / ``FileNotFoundError`` for an unregistered dataset, a missing ``MODEL.WEIGHTS``
    file, or ``SOLVER.IMS_PER_BATCH`` not divisible by the number of processes."""
    registered = set(DatasetCatalog.list())
    for key in ("TEST",) if eval_only else ("TRAIN", "TEST"):
        for name in cfg.DATASETS[key]:
            if name not in registered:
                raise ValueError(
                    f"DATASETS.{key} names {name!r}, which is not a registered dataset. Registered: "
                    f"{', '.join(sorted(registered))}. Register it (crobim_d2.data.register_rrsis_dataset) "
                    "or fix the name."
                )
    if not eval_only and not cfg.DATASETS.TRAIN:
        raise ValueError("DATASETS.TRAIN is empty; name at least one registered dataset to train on.")
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS={weights!r} does not exist. Convert a backbone checkpoint with "
            "projects/CroBIM/tools/convert_*.py, give a trained model, or set MODEL.WEIGHTS '' for random init."
        )
    if not eval_only and cfg.SOLVER.IMS_PER_BATCH % world_size != 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} is not divisible by the {world_size} processes "
            "(--num-gpus x --num-machines); choose a multiple of the process count."
        )
