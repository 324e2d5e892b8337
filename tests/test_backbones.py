"""Backbones: shapes, channel counts, cuts, local weights files, offline --pretrained. No downloads."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from safetensors.torch import save_file

from protocli import backbones
from protocli.backbones import build_backbone, list_backbones
from protocli.errors import BadInput


def _grid(module: torch.nn.Module, size: int) -> tuple[int, int, int]:
    module.eval()
    with torch.no_grad():
        out = module(torch.rand(2, 3, size, size))
    return tuple(out.shape[1:])


@pytest.mark.parametrize(
    "name, channels, grid",
    [
        ("tiny", 128, 8),  # stride 8
        ("resnet18", 512, 2),  # stride 32
        ("resnet18@layer3", 256, 4),  # stride 16
        ("resnet18@layer2", 128, 8),  # stride 8
        ("vgg11", 512, 2),  # final max-pool included
        ("densenet121", 1024, 2),
    ],
)
def test_build_gives_channels_and_grid(name, channels, grid):
    module, c = build_backbone(name)
    assert c == channels
    assert _grid(module, 64) == (channels, grid, grid)


def test_tiny_is_stride_8_at_96px():
    module, c = build_backbone("tiny")
    assert _grid(module, 96) == (c, 12, 12)


def test_tiny_receptive_field_is_127px():
    """The documented receptive field, measured by gradients: 127 px = 63 px either side of a cell's
    centre. Cell (0, 0) is centred on pixel 0 and reaches pixel 63; a central cell sees the whole
    96-px image (so one cell can combine a bird's parts)."""
    torch.manual_seed(0)
    module, _ = build_backbone("tiny")
    module.eval()

    def field(i: int) -> tuple[int, int]:
        x = torch.rand(1, 3, 96, 96, requires_grad=True)
        module(x)[0, :, i, i].sum().backward()
        rows = (x.grad[0].abs().sum((0, 2)) > 0).nonzero().flatten()
        return int(rows.min()), int(rows.max())

    assert field(0) == (0, 63)
    assert field(6) == (0, 95)


def test_name_table_and_channels_without_forward():
    names = list_backbones()
    assert {"tiny", "resnet152", "vgg19_bn", "densenet201"} <= set(names)
    assert len(names) == 1 + 5 + 8 + 4
    assert "resnet34@layer2" in list_backbones(cuts=True)
    # Heavier members: channel count from the layer table only (meta device: no memory, no init cost).
    import torchvision

    expect = {"resnet50": 2048, "resnet152": 2048, "vgg19_bn": 512, "densenet161": 2208, "densenet201": 1920}
    for name, c in expect.items():
        with torch.device("meta"):
            full = torchvision.models.get_model(name, weights=None)
        assert backbones.out_channels(backbones._strip_head(name, full, "layer4")) == c, name
    with torch.device("meta"):
        r50 = torchvision.models.get_model("resnet50", weights=None)
    assert backbones.out_channels(backbones._strip_head("resnet50", r50, "layer3")) == 1024


def test_resnet34_cut_after_layer2():
    module, c = build_backbone("resnet34@layer2")
    assert c == 128 and not hasattr(module, "layer3")


@pytest.mark.parametrize("name", ["resnet18@layer5", "vgg11@layer3", "tiny@layer1", "resnet9", ""])
def test_bad_names(name):
    with pytest.raises(BadInput):
        build_backbone(name)


def test_tiny_pretrained_is_refused():
    with pytest.raises(BadInput, match="--weights"):
        build_backbone("tiny", pretrained=True)


def _full_resnet18_state() -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(1)
    return torchvision.models.resnet18(weights=None).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_of_full_model_round_trips(tmp_path, suffix):
    full = _full_resnet18_state()
    path = tmp_path / f"r18{suffix}"
    if suffix == ".safetensors":
        save_file(full, str(path))
    else:
        torch.save(full, path)
    # The cut drops layer4 as well as fc: both are in the full model but not in the backbone.
    module, _ = build_backbone("resnet18@layer3", weights=path)
    got = module.state_dict()
    assert "fc.weight" not in got and not any(k.startswith("layer4") for k in got)
    for k, v in got.items():
        assert torch.equal(v, full[k]), k


def test_weights_file_of_backbone_only_without_bn_counters(tmp_path):
    src, _ = build_backbone("tiny")
    state = {k: v + 0.5 for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(tmp_path / "tiny.safetensors"))
    module, _ = build_backbone("tiny", weights=tmp_path / "tiny.safetensors")
    for k, v in state.items():
        assert torch.equal(module.state_dict()[k], v)


def test_weights_file_of_a_protopnet_state(tmp_path):
    from protocli.model import ModelConfig, build_model, export_state

    model = build_model(ModelConfig(backbone="tiny", num_classes=2, prototypes_per_class=1, proto_dim=4))
    save_file(export_state(model), str(tmp_path / "model.safetensors"))
    module, _ = build_backbone("tiny", weights=tmp_path / "model.safetensors")
    assert torch.equal(module.block1[0].weight, model.features.block1[0].weight)


def test_mismatched_weights_name_the_file_and_key(tmp_path):
    # A key of a bigger ResNet (resnet34 has a third block in layer1): unexpected, named.
    state = _full_resnet18_state()
    path = tmp_path / "r34ish.pth"
    torch.save({**state, "layer1.2.conv1.weight": torch.zeros(64, 64, 3, 3)}, path)
    with pytest.raises(BadInput) as e:
        build_backbone("resnet18", weights=path)
    assert str(path) in str(e.value) and "unexpected key 'layer1.2.conv1.weight'" in str(e.value)

    del state["layer2.0.conv1.weight"]
    save_file(state, str(tmp_path / "holey.safetensors"))
    with pytest.raises(BadInput, match=r"holey\.safetensors.*missing key 'layer2\.0\.conv1\.weight'"):
        build_backbone("resnet18", weights=tmp_path / "holey.safetensors")

    tiny, _ = build_backbone("tiny")
    bad = {k: v for k, v in tiny.state_dict().items()}
    bad["block1.0.weight"] = torch.zeros(8, 3, 3, 3)
    save_file(bad, str(tmp_path / "shape.safetensors"))
    with pytest.raises(BadInput, match="block1.0.weight' has shape"):
        build_backbone("tiny", weights=tmp_path / "shape.safetensors")


def test_unreadable_or_absent_weights(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInput, match="junk.pth.*cannot read"):
        build_backbone("tiny", weights=junk)
    with pytest.raises(BadInput, match="not found"):
        build_backbone("tiny", weights=tmp_path / "absent.safetensors")


def test_old_densenet_keys_are_renamed(tmp_path):
    old = "features.denseblock1.denselayer1.norm.1.weight"
    save_file({old: torch.ones(2), "features.conv0.weight": torch.ones(1)}, str(tmp_path / "d.safetensors"))
    state = backbones.read_state_dict(tmp_path / "d.safetensors")
    assert set(state) == {"features.denseblock1.denselayer1.norm1.weight", "features.conv0.weight"}


def test_pretrained_offline_says_use_weights(tmp_path, monkeypatch):
    # Empty torch cache and a download function that fails as it would without network.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(BadInput) as e:
        build_backbone("resnet18", pretrained=True)
    msg = str(e.value)
    assert "--weights FILE" in msg and "resnet18" in msg and "\n" not in msg
