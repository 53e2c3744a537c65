"""CroBIM meta-architecture on tiny configs: outputs, losses, gradients, checkpoints, ablations, precision."""

import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from crobim_d2 import add_crobim_config
from crobim_d2.modeling.layers import linear
from crobim_d2.modeling.layers.linear import set_onednn_policy

SIZE = 64
FIXTURE = os.path.join(os.path.dirname(__file__), "data", "crobim_tiny_7dc6103.pth")
WORDS = "text_encoder.bert.embeddings.word_embeddings.weight"


def tiny_cfg(backbone: str = "D2ConvNeXt", **crobim):
    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "CroBIM"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = backbone
    cfg.INPUT.IMAGE_SIZE = SIZE
    te = cfg.MODEL.TEXT_ENCODER
    te.NUM_LAYERS, te.HIDDEN_SIZE, te.NUM_HEADS, te.INTERMEDIATE_SIZE = 2, 64, 4, 128
    cfg.MODEL.SWIN.EMBED_DIM = 16
    cfg.MODEL.SWIN.DEPTHS = [1, 1, 2, 1]
    cfg.MODEL.SWIN.NUM_HEADS = [1, 2, 2, 4]
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.0
    cfg.MODEL.CONVNEXT.DEPTHS = [1, 1, 1, 1]
    cfg.MODEL.CONVNEXT.DIMS = [16, 32, 64, 128]
    cfg.MODEL.CONVNEXT.DROP_PATH_RATE = 0.0
    c = cfg.MODEL.CROBIM
    c.HIDDEN_DIM, c.CAPM_NUM_HEADS, c.LGFA_NUM_HEADS, c.MID_NUM_HEADS = 32, 4, 4, 4
    c.MID_NUM_LAYERS, c.MID_FFN_DIM, c.ADC_TOPK = 1, 64, 4
    for key, value in crobim.items():
        setattr(c, key, value)
    return cfg


def make_inputs(n: int = 2, size: int = SIZE, train: bool = False, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        tokens = torch.randint(1000, 2000, (20,), generator=g)
        tokens[0] = 101
        mask = torch.zeros(20, dtype=torch.long)
        mask[: 6 + 3 * i] = 1
        record = {"image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)}
        record.update(lang_tokens=tokens, lang_mask=mask, height=50 + i, width=70)
        if train:
            record["gt_mask"] = (torch.rand(size, size, generator=g) > 0.5).to(torch.uint8)
        out.append(record)
    return out


def build(cfg, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg)


def check_train_step(model) -> None:
    model.train()
    model.zero_grad()
    losses = model(make_inputs(train=True))
    assert sorted(losses) == ["loss_ce", "loss_dice"]
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []  # DDP would fail on any of them


@pytest.fixture(scope="module")
def convnext_model():
    return build(tiny_cfg())


def test_eval_output_per_record_size(convnext_model):
    convnext_model.eval()
    lv_shapes = []
    hook = convnext_model.text_encoder.register_forward_hook(lambda m, a, out: lv_shapes.append(out[0].shape))
    with torch.no_grad():
        outputs = convnext_model(make_inputs())
    hook.remove()
    assert lv_shapes == [(2, 24, 64)]  # L_v: 20 tokens + N_p = 4 prompts
    for i, out in enumerate(outputs):
        prob = out["ref_seg"]
        assert prob.shape == (50 + i, 70) and prob.dtype == torch.float32
        assert prob.min() >= 0 and prob.max() <= 1


def test_images_not_at_the_model_size_are_refused(convnext_model):
    convnext_model.eval()
    inputs = make_inputs()
    inputs[1]["image"] = torch.randint(0, 256, (3, 90, 75), dtype=torch.uint8)
    with torch.no_grad(), pytest.raises(ValueError, match=r"got \(3, 90, 75\); prepare them with"):
        convnext_model(inputs)


@pytest.mark.parametrize("backbone", ["D2ConvNeXt", "D2SwinTransformer"])
def test_every_trainable_parameter_gets_a_gradient(backbone):
    check_train_step(build(tiny_cfg(backbone)))


@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_detectron2_resnet_backbone_with_crobim_head(norm):
    cfg = tiny_cfg("build_resnet_backbone")
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    model = build(cfg)
    assert [model.backbone.output_shape()[f].channels for f in cfg.MODEL.CROBIM.IN_FEATURES] == [
        64,
        128,
        256,
        512,
    ]
    check_train_step(model)
    model.eval()
    with torch.no_grad():
        assert model(make_inputs(1))[0]["ref_seg"].shape == (50, 70)


def test_checkpoint_round_trip_is_exact(tmp_path):
    cfg = tiny_cfg()
    model = build(cfg, seed=0).eval()
    inputs = make_inputs()
    with torch.no_grad():
        expected = model(inputs)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    other = build(cfg, seed=1).eval()
    with torch.no_grad():
        assert not torch.equal(other(inputs)[0]["ref_seg"], expected[0]["ref_seg"])
    DetectionCheckpointer(other).load(str(tmp_path / "model.pth"))
    with torch.no_grad():
        got = other(inputs)
    assert all(torch.equal(a["ref_seg"], b["ref_seg"]) for a, b in zip(got, expected))


@pytest.mark.parametrize(
    "switch",
    [
        {"CAPM_SCALES": ["res5"]},
        {"CAPM_SCALES": ["res2", "res4"]},
        {"CAPM_POOL_TYPE": "avg"},
        {"CAPM_POOL_TYPE": "max", "CAPM_POOL_SIZE": 2},
        {"ADC_STAGES": []},
        {"ADC_STAGES": ["res4", "res5"]},
        {"ADC_FUSION": "channel"},
        {"ADC_FUSION": "channel", "ADC_STAGES": ["res5"], "ADC_GRID_SIZE": 4},
        {"LGFA_LANGUAGE": "words"},
        {"MID_ATTENTION": "unidirectional"},
        {"MID_ATTENTION": "parallel"},
        {"MSDA_IMPL": "pytorch"},
    ],
    ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()),
)
def test_ablation_switches_build_and_train(switch):
    model = build(tiny_cfg(**switch))
    check_train_step(model)
    model.eval()
    with torch.no_grad():
        assert model(make_inputs(1))[0]["ref_seg"].shape == (50, 70)


def test_bfloat16_inference_agrees_with_float32(convnext_model):
    convnext_model.eval()
    inputs = make_inputs()
    default = convnext_model.inference_dtype
    try:
        with torch.no_grad():
            convnext_model.inference_dtype = "float32"
            fp32 = convnext_model(inputs)
            convnext_model.inference_dtype = "bfloat16"
            bf16 = convnext_model(inputs)
    finally:
        convnext_model.inference_dtype = default
    for a, b in zip(fp32, bf16):
        assert b["ref_seg"].dtype == torch.float32
        assert not torch.equal(a["ref_seg"], b["ref_seg"])  # bf16 autocast really ran
        assert (a["ref_seg"] - b["ref_seg"]).abs().mean() < 0.02


@pytest.mark.parametrize(
    "key, value, error",
    [
        ("MODEL.CROBIM.INFERENCE_DTYPE", "half", ValueError),
        ("MODEL.CROBIM.IN_FEATURES", ["res3", "res4", "res5"], ValueError),
        ("MODEL.CROBIM.IN_FEATURES", ["res2", "res3", "res4", "res6"], ValueError),
        ("MODEL.CROBIM.LOSS_LAMBDA", 1.5, ValueError),
        ("MODEL.CROBIM.LGFA_LANGUAGE", "prompts", ValueError),
        ("MODEL.CROBIM.ADC_FUSION", "spatial", ValueError),
        ("MODEL.CROBIM.ONEDNN_LINEAR", "mkl", ValueError),
        ("MODEL.TEXT_ENCODER.WEIGHTS", "pretrained/no-such-bert", FileNotFoundError),
    ],
)
def test_bad_config_values_name_the_key(key, value, error):
    cfg = tiny_cfg()
    cfg.merge_from_list([key, value])
    with pytest.raises(error, match=key.replace(".", r"\.")):
        build_model(cfg)


def test_training_without_gt_mask_explains(convnext_model):
    convnext_model.train()
    with pytest.raises(KeyError, match="RRSISDatasetMapper"):
        convnext_model(make_inputs())


@pytest.mark.parametrize("language, length", [("words_and_prompts", 24), ("words", 20)])
def test_lgfa_language_selects_what_lgfa_reads(language, length):
    model = build(tiny_cfg(LGFA_LANGUAGE=language)).eval()
    seen = {}
    hooks = [
        model.lgfa.fusions[0].register_forward_hook(lambda m, a, o: seen.update(lgfa=a[1].shape[1])),
        model.mid.register_forward_hook(lambda m, a, o: seen.update(mid=a[1].shape[1])),
    ]
    with torch.no_grad():
        model(make_inputs())
    for hook in hooks:
        hook.remove()
    assert seen == {"lgfa": length, "mid": 24}  # MID always reads L_v: 20 words + 4 prompts


def load_fixture(model, saved: dict) -> dict:
    """The saved state dict, upcast to float32, with BERT's word embeddings filled in for the saved rows."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in saved["model"].items()}
    words = torch.zeros_like(model.state_dict()[WORDS])
    words[saved["word_ids"]] = saved["word_rows"].float()
    return {**state, WORDS: words}


def test_checkpoint_of_an_earlier_version_loads_and_gives_the_same_outputs(tmp_path):
    """tests/data/crobim_tiny_7dc6103.pth: a tiny default CroBIM (weights moved off their initialization,
    stored in float16; BERT's word embeddings only for the tokens used), its inputs and its outputs, all saved
    by the code at commit 7dc6103, when CAPM and ADC still held nn.MultiheadAttention's parameter layout."""
    saved = torch.load(FIXTURE, weights_only=True)
    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.merge_from_list(saved["opts"])
    cfg.MODEL.CROBIM.INFERENCE_DTYPE = "float32"  # as the outputs were saved
    state = load_fixture(build(cfg), saved)
    assert "capm.cross_attn.in_proj_weight" in state and "lgfa.adc.attn.out_proj.weight" in state
    inputs = saved["inputs"]
    tokens = torch.stack([x["lang_tokens"] for x in inputs])
    mask = torch.stack([x["lang_mask"] for x in inputs])

    strict = build(cfg, seed=1).eval()
    strict.load_state_dict(state, strict=True)  # every old key has a place, every parameter is set
    torch.save({"model": state}, tmp_path / "old.pth")
    checkpointed = build(cfg, seed=2).eval()
    DetectionCheckpointer(checkpointed).load(str(tmp_path / "old.pth"))
    for model in (strict, checkpointed):
        with torch.no_grad():
            logits = model.predict_logits(model.preprocess_images(inputs), tokens, mask)
            probs = [out["ref_seg"] for out in model(inputs)]
        torch.testing.assert_close(logits, saved["logits"], rtol=0, atol=1e-4)
        for got, want in zip(probs, saved["ref_seg"]):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.skipif(not linear.ONEDNN_LINEAR, reason="torch built without oneDNN")
@pytest.mark.parametrize("policy", ["never", "always"])
def test_onednn_linear_policy_reaches_every_layer(monkeypatch, policy):
    """MODEL.CROBIM.ONEDNN_LINEAR sets the policy of the backbone's, LGFA's and MID's layers (and MID's FFN):
    "never" keeps F.linear even where the rule would take oneDNN, "always" takes it where the rule would not;
    the masks agree either way."""
    model = build(tiny_cfg(ONEDNN_LINEAR=policy)).eval()
    policies = {m.onednn_policy for m in model.modules() if hasattr(m, "onednn_policy")}
    assert policies == {policy}
    assert sum(isinstance(m, linear.OneDNNLinear) for m in model.backbone.modules()) > 0
    calls = []
    op = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(linear.torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(a[3]) or op(*a))
    monkeypatch.setattr(linear, "_avx512", lambda: policy == "never")  # the rule says the opposite
    model.inference_dtype = "float32"
    with torch.no_grad():
        got = model(make_inputs(1))[0]["ref_seg"]
    assert bool(calls) is (policy == "always")
    set_onednn_policy(model, "auto")
    with torch.no_grad():
        want = model(make_inputs(1))[0]["ref_seg"]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
