"""train_net on a tiny config and a tiny synrrsis: training, --resume, --eval-only, 2 CPU processes (gloo),
start-up config errors, and the optimizer / learning-rate schedule it builds."""
import os
import shutil
import sys

import pytest
import torch

from crobim_d2.data import register_rrsis_dataset
from crobim_d2.data.samplers import repeat_factors_by_field
from crobim_d2.data.synrrsis import SynRRSISParams, generate_synrrsis
from crobim_d2.engine import build_lr_scheduler, check_config, get_param_groups, launch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "projects", "CroBIM"))
import train_net
from _tiny_train_config import CONFIG, TINY_OPTS

DATASETS = ("d_tiny_train", "d_tiny_test")
TINY = ["DATASETS.TRAIN", f"('{DATASETS[0]}',)", "DATASETS.TEST", f"('{DATASETS[1]}',)", *TINY_OPTS]


def register_tiny(root: str) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name, split in zip(DATASETS, ("train", "test")):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_rrsis_dataset(name, os.path.join(root, "synrrsis", f"{split}.jsonl"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets"))
    generate_synrrsis(root, SynRRSISParams(image_size=64, num_train=4, num_val=1, num_test=2))
    register_tiny(root)
    return root


def parse(*argv: str, output_dir: str, opts=()):
    args = ["--config-file", CONFIG, *argv, *TINY, "OUTPUT_DIR", str(output_dir), *opts]
    return train_net.argument_parser().parse_args(args)


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """4 iterations with a checkpoint after iteration 2 (model_0000001.pth) and at the end."""
    out = tmp_path_factory.mktemp("train")
    results = train_net.main(parse(output_dir=out))
    return out, results


@pytest.mark.slow
def test_train_writes_checkpoints_and_evaluates(trained):
    out, results = trained
    assert set(results["rrsis"]) >= {"oIoU", "mIoU", "Pr@0.5"}
    assert 0.0 <= results["rrsis"]["mIoU"] <= 100.0
    final = torch.load(out / "model_final.pth", weights_only=False)
    assert final["iteration"] == 3
    assert (out / "model_0000001.pth").is_file() and (out / "inference" / f"rrsis_{DATASETS[1]}.json").is_file()


@pytest.mark.slow
def test_eval_only_reproduces_end_of_training_numbers(trained, tmp_path):
    out, results = trained
    args = parse("--eval-only", output_dir=tmp_path, opts=["MODEL.WEIGHTS", str(out / "model_final.pth")])
    assert train_net.main(args) == results


@pytest.mark.slow
def test_resume_continues_with_optimizer_and_scheduler_state(trained, tmp_path):
    out, _ = trained
    shutil.copy(out / "model_0000001.pth", tmp_path / "model_0000001.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    saved = torch.load(tmp_path / "model_0000001.pth", weights_only=False)
    cfg = train_net.setup(parse("--resume", output_dir=tmp_path))
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == saved["iteration"] + 1 == 2
    state = trainer.optimizer.state_dict()["state"]
    saved_state = saved["trainer"]["_trainer"]["optimizer"]["state"]
    assert len(state) == len(saved_state) > 0
    for k in saved_state:
        assert state[k]["step"] == saved_state[k]["step"] == 2
        assert torch.equal(state[k]["exp_avg"], saved_state[k]["exp_avg"])
    assert trainer.scheduler.last_epoch == 2
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs == pytest.approx([g["initial_lr"] * (1 - 2 / 4) ** 0.9 for g in trainer.optimizer.param_groups])
    trainer.train()
    assert torch.load(tmp_path / "model_final.pth", weights_only=False)["iteration"] == 3


def _ddp_worker(root: str, out: str) -> None:
    from detectron2.utils import comm

    register_tiny(root)
    # Every rank starts from a different seed: DDP must broadcast rank 0's weights.
    cfg = train_net.setup(parse(output_dir=out, opts=["SEED", str(comm.get_rank())]))
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    torch.save({"model": model.state_dict(), "results": results}, os.path.join(out, f"rank{comm.get_rank()}.pth"))


@pytest.mark.slow
def test_two_cpu_processes_stay_in_sync_and_evaluate_like_one(data_root, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("launch uses NCCL on GPU machines; this test is the CPU/gloo path")
    launch(_ddp_worker, 2, dist_url="auto", args=(data_root, str(tmp_path)))
    rank0 = torch.load(tmp_path / "rank0.pth", weights_only=False)
    rank1 = torch.load(tmp_path / "rank1.pth", weights_only=False)
    assert rank0["model"].keys() == rank1["model"].keys()
    for k in rank0["model"]:
        assert torch.equal(rank0["model"][k], rank1["model"][k]), k
    assert rank0["results"]["rrsis"]["mIoU"] >= 0 and rank1["results"] == {}  # evaluator gathers to rank 0
    single = train_net.main(
        parse("--eval-only", output_dir=tmp_path / "eval", opts=["MODEL.WEIGHTS", str(tmp_path / "model_final.pth")])
    )
    assert single == rank0["results"]


def test_config_errors_name_the_key(data_root, tmp_path):
    with pytest.raises(ValueError, match=r"DATASETS.TRAIN names 'no_such_set'"):
        train_net.main(parse(output_dir=tmp_path, opts=["DATASETS.TRAIN", "('no_such_set',)"]))
    with pytest.raises(ValueError, match=r"DATASETS.TEST names 'nope'"):
        train_net.main(parse("--eval-only", output_dir=tmp_path, opts=["DATASETS.TEST", "('nope',)"]))
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS="):
        train_net.main(parse(output_dir=tmp_path, opts=["MODEL.WEIGHTS", str(tmp_path / "missing.pth")]))
    cfg = train_net.load_config(parse(output_dir=tmp_path, opts=["SOLVER.IMS_PER_BATCH", "3"]))
    with pytest.raises(ValueError, match="SOLVER.IMS_PER_BATCH=3 is not divisible by the 2 processes"):
        check_config(cfg, world_size=2)
    check_config(cfg, world_size=3)


def test_param_groups_decay_and_multipliers():
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 4, 1), nn.LayerNorm(4))
            self.backbone.relative_position_bias_table = nn.Parameter(torch.zeros(3, 1))
            self.text_encoder = nn.Embedding(5, 4)
            self.text_encoder.position_embeddings = nn.Embedding(5, 4)
            self.head = nn.Linear(4, 1)

    model = Tiny()
    groups = get_param_groups(model, 1.0, 0.05, backbone_multiplier=0.5, text_encoder_multiplier=0.1)
    setting = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(setting) == sum(1 for _ in model.parameters())
    assert setting[id(model.backbone[0].weight)] == (0.5, 0.05)
    assert setting[id(model.backbone[0].bias)] == (0.5, 0.0)
    assert setting[id(model.backbone[1].weight)] == (0.5, 0.0)  # norm
    assert setting[id(model.backbone.relative_position_bias_table)] == (0.5, 0.0)
    assert setting[id(model.text_encoder.weight)] == (0.1, 0.05)
    assert setting[id(model.text_encoder.position_embeddings.weight)] == (0.1, 0.0)
    assert setting[id(model.head.weight)] == (1.0, 0.05) and setting[id(model.head.bias)] == (1.0, 0.0)


@pytest.mark.parametrize("warmup", [0, 10])
def test_warmup_poly_lr(warmup):
    from detectron2.config import get_cfg

    from crobim_d2 import add_crobim_config

    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.BASE_LR, cfg.SOLVER.POLY_LR_END, cfg.SOLVER.MAX_ITER = 1e-3, 1e-5, 100
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR, cfg.SOLVER.WARMUP_METHOD = warmup, 0.1, "linear"
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.AdamW([{"params": [params[0]], "lr": 1e-3}, {"params": [params[1]], "lr": 1e-4}])
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(100):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()

    def poly(it):
        return 1e-5 + (1e-3 - 1e-5) * (1 - it / 100) ** 0.9

    assert lrs[50][0] == pytest.approx(poly(50))
    assert lrs[99][0] == pytest.approx(poly(99))
    assert lrs[50][1] == pytest.approx(poly(50) / 10)  # the group's multiplier scales the whole schedule
    assert all(a[0] >= b[0] for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))
    if warmup:
        assert lrs[0][0] == pytest.approx(0.1 * 1e-3)
        assert lrs[5][0] == pytest.approx(0.1 * 1e-3 + (poly(10) - 0.1 * 1e-3) * 0.5)
    else:
        assert lrs[0][0] == pytest.approx(1e-3)


def test_repeat_by_field_repeats_rare_kinds():
    records = [{"template": "color"}] * 8 + [{"template": "relative"}] * 2
    factors = repeat_factors_by_field(records, "template", 0.5)
    assert factors[:8].tolist() == [1.0] * 8  # share 0.8 > 0.5: never repeated
    assert factors[8].item() == pytest.approx((0.5 / 0.2) ** 0.5)
    with pytest.raises(ValueError, match="REPEAT_BY_FIELD='kind'.*10 of 10"):
        repeat_factors_by_field(records, "kind", 0.5)
    with pytest.raises(ValueError, match="REPEAT_THRESHOLD"):
        repeat_factors_by_field(records, "template", 0.0)


def test_repeat_by_field_trains(data_root, tmp_path, monkeypatch):
    used = []

    class Spy(train_net.RepeatFactorTrainingSampler):
        def __init__(self, factors, **kwargs):
            used.append(factors)
            super().__init__(factors, **kwargs)

    monkeypatch.setattr(train_net, "RepeatFactorTrainingSampler", Spy)
    opts = ["DATALOADER.REPEAT_BY_FIELD", "template", "DATALOADER.REPEAT_THRESHOLD", "0.9", "SOLVER.MAX_ITER", "2"]
    trainer = train_net.Trainer(train_net.setup(parse(output_dir=str(tmp_path), opts=opts)))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert len(used) == 1 and used[0].max() > 1.0  # the tiny dataset's rarer kinds are repeated
    assert os.path.isfile(tmp_path / "model_final.pth")
