"""CroBIM training and evaluation script (Detectron2 project style).

    python projects/CroBIM/train_net.py --config-file projects/CroBIM/configs/rrsisd/crobim_swin_b.yaml \
        --num-gpus 8
    python projects/CroBIM/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/.../model_final.pth

On a machine without CUDA, ``--num-gpus N`` starts N CPU processes that train with DDP over ``gloo``.
"""
import logging
import os
import weakref

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.engine import DefaultTrainer, TrainerBase, default_argument_parser
from detectron2.evaluation import DatasetEvaluator, verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from crobim_d2 import add_crobim_config
from crobim_d2.checkpoint import CroBIMCheckpointer
from crobim_d2.data import RRSISDatasetMapper
from crobim_d2.data.check import check_datasets_at_start
from crobim_d2.data.samplers import repeat_factors_by_field
from crobim_d2.engine import (
    build_lr_scheduler,
    build_optimizer,
    build_step_trainer,
    check_config,
    create_ddp_model,
    default_setup,
    launch,
)
from crobim_d2.evaluation import RRSISEvaluator


class Trainer(DefaultTrainer):
    """DefaultTrainer with the RRSIS mapper and evaluator, CroBIM's optimizer and schedule, and DDP/AMP
    that also work on CPU (gloo processes; bfloat16 autocast)."""

    def __init__(self, cfg: CfgNode):
        # DefaultTrainer.__init__ with create_ddp_model/build_step_trainer that handle CPU models.
        TrainerBase.__init__(self)
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = CroBIMCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def train(self):
        """Train; return the evaluation at the end of training (DefaultTrainer returns it only with
        TEST.EXPECTED_RESULTS)."""
        super().train()
        return getattr(self, "_last_eval_results", None)

    # Detectron2 v0.6's DefaultTrainer does not checkpoint the optimizer (later versions do, the same way).
    def state_dict(self) -> dict:
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        mapper = RRSISDatasetMapper(cfg, is_train=True)
        if not cfg.DATALOADER.REPEAT_BY_FIELD:
            return build_detection_train_loader(cfg, mapper=mapper)
        dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
        factors = repeat_factors_by_field(dataset, cfg.DATALOADER.REPEAT_BY_FIELD, cfg.DATALOADER.REPEAT_THRESHOLD)
        sampler = RepeatFactorTrainingSampler(factors)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset, sampler=sampler)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name, mapper=RRSISDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return RRSISEvaluator(cfg, dataset_name, distributed=True, output_dir=output_folder)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        return build_lr_scheduler(cfg, optimizer)


def load_config(args) -> CfgNode:
    """Config from ``--config-file`` and ``opts`` (frozen)."""
    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def setup(args) -> CfgNode:
    """The checked config of this process, with logging and the output folder set up; its datasets checked
    (``DATASETS.CHECK_AT_START``)."""
    cfg = load_config(args)
    check_config(cfg, comm.get_world_size(), eval_only=args.eval_only)
    default_setup(cfg, args)
    check_datasets_at_start(cfg, eval_only=args.eval_only)
    return cfg


def main(args):
    """Train (returning the final evaluation) or, with ``--eval-only``, evaluate ``MODEL.WEIGHTS``."""
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = CroBIMCheckpointer(model, cfg.OUTPUT_DIR, strict=not cfg.MODEL.ALLOW_PARTIAL_WEIGHTS)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    parser = default_argument_parser(
        epilog="Without CUDA, --num-gpus N runs N CPU processes (DDP over gloo), e.g. to test distributed training."
    )
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    # Fail on config errors here, before any process starts.
    check_config(load_config(args), args.num_gpus * args.num_machines, eval_only=args.eval_only)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
