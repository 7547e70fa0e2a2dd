"""Tests for aaer.models: registry, lineage-exact state-dict keys, forward semantics,
the Normalized layer and tolerant checkpoint loading."""
import pytest
import torch
import torch.nn.functional as F

from aaer.models import (
    Normalized,
    build,
    create_model,
    list_models,
    load_state_dict_into,
    register_model,
)
from aaer.models import registry
from aaer.models.preact_resnet import PreActBlock
from aaer.models.wide_resnet import WideBasicBlock

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)

# The fast-adversarial-training lineage's PreActResNet18, in state_dict() order.
PREACTRESNET18_KEYS = [
    "conv1.weight",
    "layer1.0.bn1.weight",
    "layer1.0.bn1.bias",
    "layer1.0.bn1.running_mean",
    "layer1.0.bn1.running_var",
    "layer1.0.bn1.num_batches_tracked",
    "layer1.0.conv1.weight",
    "layer1.0.bn2.weight",
    "layer1.0.bn2.bias",
    "layer1.0.bn2.running_mean",
    "layer1.0.bn2.running_var",
    "layer1.0.bn2.num_batches_tracked",
    "layer1.0.conv2.weight",
    "layer1.1.bn1.weight",
    "layer1.1.bn1.bias",
    "layer1.1.bn1.running_mean",
    "layer1.1.bn1.running_var",
    "layer1.1.bn1.num_batches_tracked",
    "layer1.1.conv1.weight",
    "layer1.1.bn2.weight",
    "layer1.1.bn2.bias",
    "layer1.1.bn2.running_mean",
    "layer1.1.bn2.running_var",
    "layer1.1.bn2.num_batches_tracked",
    "layer1.1.conv2.weight",
    "layer2.0.bn1.weight",
    "layer2.0.bn1.bias",
    "layer2.0.bn1.running_mean",
    "layer2.0.bn1.running_var",
    "layer2.0.bn1.num_batches_tracked",
    "layer2.0.conv1.weight",
    "layer2.0.bn2.weight",
    "layer2.0.bn2.bias",
    "layer2.0.bn2.running_mean",
    "layer2.0.bn2.running_var",
    "layer2.0.bn2.num_batches_tracked",
    "layer2.0.conv2.weight",
    "layer2.0.shortcut.0.weight",
    "layer2.1.bn1.weight",
    "layer2.1.bn1.bias",
    "layer2.1.bn1.running_mean",
    "layer2.1.bn1.running_var",
    "layer2.1.bn1.num_batches_tracked",
    "layer2.1.conv1.weight",
    "layer2.1.bn2.weight",
    "layer2.1.bn2.bias",
    "layer2.1.bn2.running_mean",
    "layer2.1.bn2.running_var",
    "layer2.1.bn2.num_batches_tracked",
    "layer2.1.conv2.weight",
    "layer3.0.bn1.weight",
    "layer3.0.bn1.bias",
    "layer3.0.bn1.running_mean",
    "layer3.0.bn1.running_var",
    "layer3.0.bn1.num_batches_tracked",
    "layer3.0.conv1.weight",
    "layer3.0.bn2.weight",
    "layer3.0.bn2.bias",
    "layer3.0.bn2.running_mean",
    "layer3.0.bn2.running_var",
    "layer3.0.bn2.num_batches_tracked",
    "layer3.0.conv2.weight",
    "layer3.0.shortcut.0.weight",
    "layer3.1.bn1.weight",
    "layer3.1.bn1.bias",
    "layer3.1.bn1.running_mean",
    "layer3.1.bn1.running_var",
    "layer3.1.bn1.num_batches_tracked",
    "layer3.1.conv1.weight",
    "layer3.1.bn2.weight",
    "layer3.1.bn2.bias",
    "layer3.1.bn2.running_mean",
    "layer3.1.bn2.running_var",
    "layer3.1.bn2.num_batches_tracked",
    "layer3.1.conv2.weight",
    "layer4.0.bn1.weight",
    "layer4.0.bn1.bias",
    "layer4.0.bn1.running_mean",
    "layer4.0.bn1.running_var",
    "layer4.0.bn1.num_batches_tracked",
    "layer4.0.conv1.weight",
    "layer4.0.bn2.weight",
    "layer4.0.bn2.bias",
    "layer4.0.bn2.running_mean",
    "layer4.0.bn2.running_var",
    "layer4.0.bn2.num_batches_tracked",
    "layer4.0.conv2.weight",
    "layer4.0.shortcut.0.weight",
    "layer4.1.bn1.weight",
    "layer4.1.bn1.bias",
    "layer4.1.bn1.running_mean",
    "layer4.1.bn1.running_var",
    "layer4.1.bn1.num_batches_tracked",
    "layer4.1.conv1.weight",
    "layer4.1.bn2.weight",
    "layer4.1.bn2.bias",
    "layer4.1.bn2.running_mean",
    "layer4.1.bn2.running_var",
    "layer4.1.bn2.num_batches_tracked",
    "layer4.1.conv2.weight",
    "bn.weight",
    "bn.bias",
    "bn.running_mean",
    "bn.running_var",
    "bn.num_batches_tracked",
    "linear.weight",
    "linear.bias",
]

# First keys of the TRADES/AAER WideResNet (the first block of stage 1 has a projection).
WRN_KEY_PREFIX = [
    "conv1.weight",
    "block1.layer.0.bn1.weight",
    "block1.layer.0.bn1.bias",
    "block1.layer.0.bn1.running_mean",
    "block1.layer.0.bn1.running_var",
    "block1.layer.0.bn1.num_batches_tracked",
    "block1.layer.0.conv1.weight",
    "block1.layer.0.bn2.weight",
    "block1.layer.0.bn2.bias",
    "block1.layer.0.bn2.running_mean",
    "block1.layer.0.bn2.running_var",
    "block1.layer.0.bn2.num_batches_tracked",
    "block1.layer.0.conv2.weight",
    "block1.layer.0.convShortcut.weight",
    "block1.layer.1.bn1.weight",
]
WRN_KEY_SUFFIX = [
    "block3.layer.4.conv2.weight",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "fc.weight",
    "fc.bias",
]

SMALL_CNN_KEYS = [
    "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
    "conv2.weight", "bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var", "bn2.num_batches_tracked",
    "conv3.weight", "bn3.weight", "bn3.bias", "bn3.running_mean", "bn3.running_var", "bn3.num_batches_tracked",
    "conv4.weight", "bn4.weight", "bn4.bias", "bn4.running_mean", "bn4.running_var", "bn4.num_batches_tracked",
    "fc.weight", "fc.bias",
]


BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def randomize_bn_stats(model, seed=0):
    """Non-trivial running statistics, so eval-mode outputs depend on every buffer."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            m.weight.data.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


# ---------------------------------------------------------------- registry

def test_list_models_names():
    assert list_models() == [
        "linear", "preactresnet18", "preactresnet18-fastat", "preactresnet18-preact-shortcut",
        "resnet18", "resnet18-imagenet", "small-cnn", "small-cnn-32", "wrn-28-10", "wrn-34-10",
    ]


def test_unknown_name_lists_models():
    with pytest.raises(ValueError) as err:
        create_model("resnet50")
    msg = str(err.value)
    assert "'resnet50'" in msg
    for name in list_models():
        assert name in msg


@pytest.mark.parametrize("kwargs, needle", [
    (dict(num_classes=0), "num_classes"),
    (dict(num_classes=2.0), "num_classes"),
    (dict(in_channels=True), "in_channels"),
    (dict(image_size=-32), "image_size"),
])
def test_bad_arguments_rejected(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        create_model("small-cnn", **kwargs)


def test_wrn_pattern_and_bad_depth():
    m = create_model("wrn-16-2", num_classes=5)
    assert m.conv1.weight.shape == (16, 3, 3, 3)
    assert m.block1.layer[0].conv1.weight.shape == (32, 16, 3, 3)
    assert len(m.block1.layer) == 2 and m.fc.weight.shape == (5, 128)
    with pytest.raises(ValueError, match="6n\\+4.*30"):
        create_model("wrn-30-10")


def test_preactresnet18_image_too_small():
    with pytest.raises(ValueError, match="image_size 16.*>= 25"):
        create_model("preactresnet18", image_size=16)


def test_register_model(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("tiny-test")
    def tiny(num_classes, in_channels, image_size):
        return torch.nn.Linear(in_channels * image_size * image_size, num_classes)

    assert "tiny-test" in list_models()
    m = create_model("tiny-test", num_classes=3, in_channels=1, image_size=4)
    assert m.weight.shape == (3, 16)
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny-test")(tiny)


# ---------------------------------------------------------------- architectures

def test_preactresnet18_keys_shapes_and_params():
    m = create_model("preactresnet18")
    sd = m.state_dict()
    assert list(sd) == PREACTRESNET18_KEYS
    assert sd["conv1.weight"].shape == (64, 3, 3, 3)
    assert sd["layer2.0.shortcut.0.weight"].shape == (128, 64, 1, 1)
    assert sd["layer4.0.shortcut.0.weight"].shape == (512, 256, 1, 1)
    assert sd["linear.weight"].shape == (10, 512)
    assert n_params(m) == 11_172_170  # counted on the reference PreActResNet18(num_classes=10)
    # Tiny-ImageNet: 64x64 inputs, 200 classes -> 2x2 pooled map, linear over 512*4 features
    tiny = create_model("preactresnet18", num_classes=200, image_size=64)
    assert tiny.linear.weight.shape == (200, 2048)
    assert n_params(tiny) == 11_576_840
    assert list(create_model("preactresnet18-preact-shortcut").state_dict()) == PREACTRESNET18_KEYS
    gray = create_model("preactresnet18", in_channels=1, image_size=28)
    assert gray.conv1.weight.shape == (64, 1, 3, 3) and gray.linear.weight.shape == (10, 512)


def _bn(x, state, key):
    """Eval-mode BatchNorm from the state dict's entries under ``key``."""
    return F.batch_norm(x, state[key + ".running_mean"], state[key + ".running_var"],
                        state[key + ".weight"], state[key + ".bias"], training=False)


def _randomise_bn(model, seed=0):
    """Non-trivial running statistics and affine parameters, so that eval-mode forwards
    test every BatchNorm (fresh ones are the identity up to eps)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
    return model.eval()


def test_resnet18_is_the_cifar_resnet18():
    """'resnet18' (the FastAT Benchmark's CIFAR model, fzjcdt/FastAT_Benchmark
    models/resnet.py): keys, the well-known parameter count of the CIFAR ResNet-18 with 10
    classes, and the forward pass written out from the state dict (3x3 stem conv + BN +
    ReLU, post-activation blocks with conv+BN projection shortcuts, 4x4 average pool)."""
    torch.manual_seed(0)
    m = _randomise_bn(create_model("resnet18"))
    sd = m.state_dict()
    keys = ["conv1.weight"] + [f"bn1.{k}" for k in BN_KEYS]
    for stage, planes in enumerate((64, 128, 256, 512), start=1):
        for i in (0, 1):
            b = f"layer{stage}.{i}."
            keys += [b + "conv1.weight"] + [b + f"bn1.{k}" for k in BN_KEYS]
            keys += [b + "conv2.weight"] + [b + f"bn2.{k}" for k in BN_KEYS]
            if stage > 1 and i == 0:
                keys += [b + "shortcut.0.weight"] + [b + f"shortcut.1.{k}" for k in BN_KEYS]
    keys += ["linear.weight", "linear.bias"]
    assert list(sd) == keys
    assert n_params(m) == 11_173_962
    assert sd["layer3.0.shortcut.0.weight"].shape == (256, 128, 1, 1)

    def block(x, b, stride, project):
        out = F.relu(_bn(F.conv2d(x, sd[b + "conv1.weight"], stride=stride, padding=1), sd,
                         b + "bn1"))
        out = _bn(F.conv2d(out, sd[b + "conv2.weight"], padding=1), sd, b + "bn2")
        skip = _bn(F.conv2d(x, sd[b + "shortcut.0.weight"], stride=stride), sd,
                   b + "shortcut.1") if project else x
        return F.relu(out + skip)

    x = torch.rand(3, 3, 32, 32)
    out = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"))
    for stage in (1, 2, 3, 4):
        out = block(out, f"layer{stage}.0.", 1 if stage == 1 else 2, stage > 1)
        out = block(out, f"layer{stage}.1.", 1, False)
    want = F.linear(F.avg_pool2d(out, 4).flatten(1), sd["linear.weight"], sd["linear.bias"])
    with torch.no_grad():
        torch.testing.assert_close(m(x), want, rtol=1e-4, atol=1e-5)
    # 64x64 keeps the 4x4 pool: a 2x2 map, 2048 features
    assert create_model("resnet18", num_classes=200, image_size=64).linear.weight.shape \
        == (200, 2048)
    with pytest.raises(ValueError, match="too small for resnet18"):
        create_model("resnet18", image_size=16)


def test_preactresnet18_fastat_differs_from_the_lineage_as_the_benchmark_does():
    """'preactresnet18-fastat' (the FastAT Benchmark's Tiny-ImageNet model,
    models/preact_resnet.py): the lineage's keys without the final BatchNorm, the 1x1
    projection on the pre-activated input, no ReLU before the pool, and the 8x8 average pool
    of the 8x8 final map of a 64x64 image feeding a 512-wide classifier."""
    torch.manual_seed(0)
    m = _randomise_bn(create_model("preactresnet18-fastat", num_classes=200, image_size=64))
    sd = m.state_dict()
    assert list(sd) == [k for k in PREACTRESNET18_KEYS if not k.startswith("bn.")]
    assert sd["linear.weight"].shape == (200, 512)
    assert n_params(m) == 11_172_170 - 10 * 513 + 200 * 513 - 2 * 512
    assert all(b.shortcut_from == "preact" for b in m.modules() if isinstance(b, PreActBlock))
    feats = {}
    m.layer4.register_forward_hook(lambda mod, i, o: feats.setdefault("layer4", o))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        z = m(x)
    h = feats["layer4"]
    assert h.shape == (2, 512, 8, 8) and (h < 0).any()      # no ReLU: negatives are pooled
    pooled = F.avg_pool2d(h, 8).flatten(1)
    torch.testing.assert_close(z, F.linear(pooled, sd["linear.weight"], sd["linear.bias"]))
    # smaller images pool their whole final map (the benchmark's fixed 8x8 pool would fail)
    assert create_model("preactresnet18-fastat", image_size=32)(torch.rand(2, 3, 32, 32)).shape \
        == (2, 10)


def test_wrn_34_10_keys_shapes_params_and_forward():
    torch.manual_seed(0)
    m = create_model("wrn-34-10")
    sd = m.state_dict()
    keys = list(sd)
    assert keys[: len(WRN_KEY_PREFIX)] == WRN_KEY_PREFIX
    assert keys[-len(WRN_KEY_SUFFIX):] == WRN_KEY_SUFFIX
    assert len(keys) == 191
    assert [k for k in keys if "convShortcut" in k] == [
        "block1.layer.0.convShortcut.weight",
        "block2.layer.0.convShortcut.weight",
        "block3.layer.0.convShortcut.weight",
    ]
    assert sd["block1.layer.0.convShortcut.weight"].shape == (160, 16, 1, 1)
    assert sd["block2.layer.0.conv1.weight"].shape == (320, 160, 3, 3)
    assert sd["block3.layer.4.conv2.weight"].shape == (640, 640, 3, 3)
    assert sd["fc.weight"].shape == (10, 640)
    assert n_params(m) == 46_160_474
    assert torch.count_nonzero(m.fc.bias) == 0  # the lineage zero-initialises the bias
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_wrn_28_10_size():
    m = create_model("wrn-28-10", num_classes=100)
    assert len(m.state_dict()) == 155
    assert n_params(m) == 36_479_194 + 90 * 641


def test_resnet18_imagenet_keys_and_params():
    m = create_model("resnet18-imagenet", num_classes=100, image_size=224)
    sd = m.state_dict()
    assert len(sd) == 121
    assert list(sd)[:7] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                            "bn1.num_batches_tracked", "layer1.0.conv1.weight"]
    assert sd["layer2.0.shortcut.0.weight"].shape == (128, 64, 1, 1)
    assert sd["layer2.0.shortcut.1.running_var"].shape == (128,)
    assert "layer1.0.shortcut.0.weight" not in sd
    assert list(sd)[-1] == "fc.weight" and "fc.bias" not in sd
    assert sd["fc.weight"].shape == (100, 512)
    assert n_params(m) == 11_220_032


def test_small_cnn_keys_and_params():
    assert list(create_model("small-cnn").state_dict()) == SMALL_CNN_KEYS
    assert n_params(create_model("small-cnn")) == 61_338
    assert n_params(create_model("small-cnn", in_channels=1)) == 61_338 - 16 * 2 * 9
    wide = create_model("small-cnn-32")
    assert list(wide.state_dict()) == SMALL_CNN_KEYS
    assert wide.conv4.weight.shape == (128, 128, 3, 3) and n_params(wide) == 242_474


SHAPE_CASES = [
    (name, shape)
    for name in ("preactresnet18", "preactresnet18-preact-shortcut", "wrn-16-2", "resnet18-imagenet",
                 "small-cnn", "small-cnn-32", "linear", "resnet18", "preactresnet18-fastat")
    for shape in ((1, 28, 28), (3, 32, 32), (3, 64, 64))
]


@pytest.mark.parametrize("name, shape", SHAPE_CASES)
def test_output_shapes(name, shape):
    torch.manual_seed(0)
    c, s, _ = shape
    m = create_model(name, num_classes=7, in_channels=c, image_size=s)
    m.train()
    out = m(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------- forward semantics

def _silence_residual_branch(block):
    """relu(bn1(.)) == 0 for any input, so conv1/conv2 contribute nothing in eval mode."""
    with torch.no_grad():
        block.bn1.weight.zero_()
        block.bn1.bias.fill_(-1.0)
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()
    return block.eval()


def test_preact_block_projection_sees_raw_input():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    block = _silence_residual_branch(PreActBlock(4, 8, stride=2))
    expected = F.conv2d(x, block.shortcut[0].weight, stride=2)
    torch.testing.assert_close(block(x), expected)
    # the Tiny-ImageNet / Wong et al. variant projects relu(bn1(x)), which is 0 here
    variant = _silence_residual_branch(PreActBlock(4, 8, stride=2, shortcut_from="preact"))
    assert torch.count_nonzero(variant(x)) == 0


def test_preact_block_identity_shortcut():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    block = _silence_residual_branch(PreActBlock(8, 8, stride=1))
    assert block.shortcut is None
    torch.testing.assert_close(block(x), x)


def test_wide_block_projection_sees_preactivation():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    block = WideBasicBlock(4, 8, stride=2).eval()
    with torch.no_grad():
        block.conv2.weight.zero_()  # leaves only the shortcut path
    a = F.relu(F.batch_norm(x, block.bn1.running_mean, block.bn1.running_var, block.bn1.weight,
                            block.bn1.bias, training=False, eps=block.bn1.eps))
    expected = F.conv2d(a, block.convShortcut.weight, stride=2)
    torch.testing.assert_close(block(x), expected)
    assert not torch.allclose(expected, F.conv2d(x, block.convShortcut.weight, stride=2))


def test_resnet18_imagenet_normalises_features():
    torch.manual_seed(0)
    m = randomize_bn_stats(create_model("resnet18-imagenet", num_classes=5)).eval()
    feats = {}
    m.layer4.register_forward_hook(lambda mod, inp, out: feats.setdefault("z", out))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = m(x)
    z = feats["z"].mean(dim=(2, 3))
    expected = z / z.norm(dim=1, keepdim=True) @ m.fc.weight.T
    torch.testing.assert_close(out, expected)
    # logits are bounded by the classifier rows' norms whatever the input scale
    assert (out.abs() <= m.fc.weight.norm(dim=1) + 1e-5).all()


def test_linear_model_is_affine():
    torch.manual_seed(0)
    m = create_model("linear", num_classes=3, in_channels=1, image_size=4)
    x = torch.rand(5, 1, 4, 4)
    torch.testing.assert_close(m(x), x.reshape(5, 16) @ m.fc.weight.T + m.fc.bias)


# ---------------------------------------------------------------- Normalized / build

def test_normalized_matches_manual_normalisation():
    torch.manual_seed(0)
    net = randomize_bn_stats(create_model("small-cnn")).eval()
    model = Normalized(net, CIFAR_MEAN, CIFAR_STD).eval()
    assert model.net is net
    assert model.mean.shape == (1, 3, 1, 1) and model.std.shape == (1, 3, 1, 1)
    x = torch.rand(4, 3, 32, 32)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net((x - mean) / std), rtol=0, atol=0)


def test_normalized_state_dict_is_net_prefixed():
    net = create_model("preactresnet18")
    model = Normalized(net, CIFAR_MEAN, CIFAR_STD)
    assert list(model.state_dict()) == ["net." + k for k in PREACTRESNET18_KEYS]
    model64 = model.to(torch.float64)
    assert model64.mean.dtype == torch.float64 and model64.std.dtype == torch.float64


def test_normalized_rejects_bad_stats_and_inputs():
    net = create_model("small-cnn")
    with pytest.raises(ValueError, match="same number of channels"):
        Normalized(net, CIFAR_MEAN, (0.2, 0.2))
    with pytest.raises(ValueError, match="positive"):
        Normalized(net, CIFAR_MEAN, (0.2, 0.0, 0.2))
    model = Normalized(net, CIFAR_MEAN, CIFAR_STD)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\].*\(2, 1, 32, 32\)"):
        model(torch.rand(2, 1, 32, 32))


def test_build():
    torch.manual_seed(0)
    model = build("small-cnn", 10, 1, 28, (0.2860,), (0.3530,))
    assert isinstance(model, Normalized) and model.net.conv1.weight.shape == (16, 1, 3, 3)
    model.eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - 0.2860) / 0.3530), rtol=0, atol=0)
    with pytest.raises(ValueError, match="in_channels is 3"):
        build("small-cnn", 10, 3, 32, (0.5, 0.5), (0.5, 0.5))


# ---------------------------------------------------------------- loading checkpoints

def _fresh_pair(name="preactresnet18", **kwargs):
    torch.manual_seed(1)
    source = randomize_bn_stats(create_model(name, **kwargs), seed=1).eval()
    torch.manual_seed(2)
    target = create_model(name, **kwargs).eval()
    return source, target


def _outputs(model, seed=3, shape=(2, 3, 32, 32)):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


def test_bare_checkpoint_roundtrip(tmp_path):
    source, target = _fresh_pair()
    assert not torch.allclose(_outputs(source), _outputs(target))
    path = tmp_path / "preact.pt"
    torch.save(source.state_dict(), path)
    load_state_dict_into(target, torch.load(path, weights_only=True))
    torch.testing.assert_close(_outputs(target), _outputs(source), rtol=0, atol=0)


@pytest.mark.parametrize("prefix", ["module.", "net.", "_orig_mod.", "module._orig_mod.net.", "net._orig_mod."])
def test_wrapped_checkpoints_load(prefix):
    source, target = _fresh_pair("small-cnn")
    state = {prefix + k: v for k, v in source.state_dict().items()}
    load_state_dict_into(target, state)
    torch.testing.assert_close(_outputs(target), _outputs(source), rtol=0, atol=0)


def test_load_into_normalized_and_from_normalized():
    source, target = _fresh_pair("small-cnn")
    wrapped_source = Normalized(source, CIFAR_MEAN, CIFAR_STD).eval()
    wrapped_target = Normalized(target, CIFAR_MEAN, CIFAR_STD).eval()
    load_state_dict_into(wrapped_target, source.state_dict())  # bare dict into the wrapper
    torch.testing.assert_close(_outputs(wrapped_target), _outputs(wrapped_source), rtol=0, atol=0)
    torch.manual_seed(4)
    bare = create_model("small-cnn").eval()
    load_state_dict_into(bare, wrapped_source.state_dict())  # 'net.' dict into a bare net
    torch.testing.assert_close(_outputs(bare), _outputs(source), rtol=0, atol=0)


def test_checkpoint_without_bn_counters_loads():
    source, target = _fresh_pair("small-cnn")
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_state_dict_into(target, state)
    torch.testing.assert_close(_outputs(target), _outputs(source), rtol=0, atol=0)


def test_wrong_num_classes_is_explained():
    state = create_model("preactresnet18", num_classes=100).state_dict()
    with pytest.raises(ValueError) as err:
        load_state_dict_into(create_model("preactresnet18", num_classes=10), state)
    msg = str(err.value)
    assert "linear.weight: state dict (100, 512) vs model (10, 512)" in msg
    assert "num_classes=100" in msg
    assert "it fits create_model('preactresnet18', num_classes=100, in_channels=3, image_size=32)" in msg


def test_tiny_imagenet_checkpoint_into_cifar_model_suggests_image_size():
    state = create_model("preactresnet18", num_classes=200, image_size=64).state_dict()
    with pytest.raises(ValueError, match=r"num_classes=200.*image_size=64"):
        load_state_dict_into(create_model("preactresnet18"), state)


def test_wrong_architecture_is_named():
    state = {"module." + k: v for k, v in create_model("wrn-16-2", num_classes=100).state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_state_dict_into(create_model("preactresnet18"), state)
    msg = str(err.value)
    assert "does not fit PreActResNet18" in msg
    assert "missing keys: ['layer1.0.bn1.weight'" in msg
    assert "unexpected keys: " in msg and "'block1.layer.0.bn1.weight'" in msg
    assert "it fits create_model('wrn-16-2', num_classes=100, in_channels=3, image_size=32)" in msg


def test_in_channels_mismatch_is_explained():
    state = create_model("small-cnn", in_channels=1).state_dict()
    with pytest.raises(ValueError, match=r"in_channels=1.*in_channels=3.*small-cnn', num_classes=10, in_channels=1"):
        load_state_dict_into(create_model("small-cnn"), state)


def test_checkpoint_container_is_explained():
    state = {"state_dict": create_model("small-cnn").state_dict(), "epoch": 30}
    with pytest.raises(ValueError, match=r"state\['state_dict'\]"):
        load_state_dict_into(create_model("small-cnn"), state)
    with pytest.raises(ValueError, match="got list"):
        load_state_dict_into(create_model("small-cnn"), [1, 2])


def test_preactresnet18_width_family():
    """preactresnet18-w<W> is PreActResNet-18 with W first-stage channels: w64 has the very
    keys and shapes of preactresnet18 (a width applied to one stage only, or to the shortcut
    but not the block, would not), and w4's parameter count is the closed form of the
    network at width 4."""
    import torch
    full = create_model("preactresnet18").state_dict()
    w64 = create_model("preactresnet18-w64").state_dict()
    assert {k: v.shape for k, v in full.items()} == {k: v.shape for k, v in w64.items()}
    m = create_model("preactresnet18-w4", num_classes=10)
    w = 4
    convs = 3 * 9 * w                                      # stem
    bns = 0
    cin = w
    for planes in (w, 2 * w, 4 * w, 8 * w):
        for b in range(2):
            convs += cin * planes * 9 + planes * planes * 9 + (cin * planes if cin != planes else 0)
            bns += 2 * (cin + planes)
            cin = planes
    expected = convs + bns + 2 * 8 * w + 8 * w * 10 + 10   # final bn, linear
    assert sum(p.numel() for p in m.parameters()) == expected
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    from aaer.errors import UsageError
    with pytest.raises(UsageError, match="positive"):
        create_model("preactresnet18-w0")


def test_cifar10_normalization_is_the_recipes_statistics():
    """--normalization cifar10: a CIFAR-10 copy read as an image folder (whose default is
    ImageNet's statistics) normalised as the AAER recipe does."""
    from aaer.data.datasets import NORMALIZATION
    from aaer.errors import UsageError
    from aaer.models import input_stats
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert input_stats("cifar10", *imagenet, 3) == NORMALIZATION["cifar10"]
    with pytest.raises(UsageError, match="--normalization cifar10 is for RGB images"):
        input_stats("cifar10", (0.5,), (0.25,), 1)
