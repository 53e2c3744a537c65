"""The demo config (projects/CroBIM/configs/synrrsis/crobim_tiny.yaml) shrunk to seconds per run, shared by
the train_net, predictor and demo tests: 64 px, a 1-layer random BERT, a thin ConvNeXt, fp32."""
import os

from detectron2.config import get_cfg

from crobim_d2 import add_crobim_config

CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "projects", "CroBIM", "configs", "synrrsis", "crobim_tiny.yaml"
)
TINY_OPTS = [
    "INPUT.IMAGE_SIZE", "64",
    "MODEL.TEXT_ENCODER.WEIGHTS", "", "MODEL.TEXT_ENCODER.NUM_LAYERS", "1", "MODEL.TEXT_ENCODER.HIDDEN_SIZE", "32",
    "MODEL.TEXT_ENCODER.NUM_HEADS", "2", "MODEL.TEXT_ENCODER.INTERMEDIATE_SIZE", "64",
    "MODEL.CONVNEXT.DIMS", "[8, 16, 32, 64]", "MODEL.CONVNEXT.DEPTHS", "[1, 1, 1, 1]",
    "MODEL.CROBIM.HIDDEN_DIM", "32", "MODEL.CROBIM.MID_FFN_DIM", "32", "MODEL.CROBIM.ADC_TOPK", "4",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "2",
    "SOLVER.AMP.ENABLED", "False", "DATALOADER.NUM_WORKERS", "0",
]


def tiny_cfg(*opts: str):
    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list([*TINY_OPTS, *opts])
    return cfg
