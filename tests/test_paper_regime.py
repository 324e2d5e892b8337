"""The paper's regime: pretrained encoder, the flowers family, the finetune recipe, and the revision
push (antitype avoidance and distinct patches) against brute force."""

import json

import pytest
import torch

from protocli.backbones import build_backbone
from protocli.data.cub import open_cub
from protocli.data.synth import synth
from protocli.errors import BadInput
from protocli.model import ModelConfig, build_model
from protocli.nearest import distinct_choice, nearest_patches
from protocli.pretrain import pretrain
from protocli.recipes import FINETUNE, PAPER, TINY, make_config


def _toy(seed=0, n=12, grid=(3, 4), dim=5):
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="tiny", num_classes=3, prototypes_per_class=2, proto_dim=dim, img_size=32)
    model = build_model(cfg)
    z = torch.rand(n, dim, *grid)
    y = torch.arange(n) % 3
    return model, z, y


def _cells(z):
    """(image, cell, vector) of every latent cell, cell flat h * W + w."""
    N, D, H, W = z.shape
    return [(b, h * W + w, z[b, :, h, w]) for b in range(N) for h in range(H) for w in range(W)]


def test_push_avoid_is_the_nearest_allowed_cell_by_brute_force():
    model, z, y = _toy()
    P = model.num_prototypes
    # antitypes: the cells the unrestricted push picks for prototypes 0 and 3, plus a random vector
    _, img, cell = nearest_patches(model, z, y, torch.device("cpu"))
    W = z.shape[3]
    q = torch.stack([z[img[0], :, cell[0] // W, cell[0] % W], z[img[3], :, cell[3] // W, cell[3] % W],
                     torch.rand(z.shape[1])])
    keep = model.prototypes.detach()[[1, 2]] + 0.05
    best_d, best_img, best_cell = nearest_patches(model, z, y, torch.device("cpu"), batch_size=5,
                                                        avoid=q, keep=keep)
    protos = model.prototypes.detach()
    for j in range(P):
        best = (float("inf"), None, None)
        for b, c, v in _cells(z):
            d = float(((v - protos[j]) ** 2).sum())
            dq = float(((q - v) ** 2).sum(1).min())
            da = float(((keep - v) ** 2).sum(1).min())
            if int(y[b]) == j // 2 and (d < dq or da < dq) and d < best[0] - 1e-6:
                best = (d, b, c)
        assert (int(best_img[j]), int(best_cell[j])) == best[1:], j
        assert float(best_d[j]) == pytest.approx(best[0], abs=1e-5)
    # no prototype lands on a rejected patch
    for j in (0, 3):
        assert (int(best_img[j]), int(best_cell[j])) != (int(img[j]), int(cell[j]))



def test_a_revision_push_in_a_job_is_not_sharded(monkeypatch):
    """Only the plain training push shards: the shards search without the antitypes or the matching."""
    from types import SimpleNamespace

    from protocli import nearest

    def sharded(*a, **k):
        raise AssertionError("sharded a search with antitypes or distinct patches")

    monkeypatch.setattr(nearest, "nearest_patches_sharded", sharded)
    model, z, y = _toy()
    job = SimpleNamespace(on=True)
    q = z[0, :, 0, :2].T.contiguous()
    alone = nearest_patches(model, z, y, torch.device("cpu"), avoid=q)
    in_job = nearest_patches(model, z, y, torch.device("cpu"), avoid=q, dist=job)
    assert all(torch.equal(a, b) for a, b in zip(alone, in_job, strict=True))
    nearest_patches(model, z, y, torch.device("cpu"), distinct=True, dist=job)
    with pytest.raises(AssertionError, match="sharded"):
        nearest_patches(model, z, y, torch.device("cpu"), dist=job)

def _is_stable(cand_d, cand_key, choice):
    """Distinct keys among matched prototypes, and no blocking pair: no prototype prefers a key (earlier in
    its list) held by a farther prototype or by nobody."""
    P, K = cand_d.shape
    holder = {}
    for j in range(P):
        k = int(cand_key[j, choice[j]])
        if k in holder:
            return False
        holder[k] = j
    for j in range(P):
        for c in range(int(choice[j])):
            k, d = int(cand_key[j, c]), float(cand_d[j, c])
            h = holder.get(k)
            if h is None or (float(cand_d[h, choice[h]]), h) > (d, j):
                return False
    return True


@pytest.mark.parametrize("seed", range(20))
def test_distinct_choice_is_a_stable_matching(seed):
    g = torch.Generator().manual_seed(seed)
    P, K = 9, 10  # every prototype ranks all 10 patches: with 9 prototypes nobody runs out
    cand_key = torch.stack([torch.randperm(10, generator=g) for _ in range(P)])
    cand_d = torch.sort(torch.rand(P, K, generator=g), dim=1).values
    assert _is_stable(cand_d, cand_key, distinct_choice(cand_d, cand_key))


def test_distinct_choice_falls_back_when_a_pool_runs_out():
    # three prototypes, each knowing only patch 4: one keeps it, the others fall back to it (duplicates)
    cand_key = torch.tensor([[4], [4], [4]])
    cand_d = torch.tensor([[0.3], [0.1], [0.2]])
    assert distinct_choice(cand_d, cand_key).tolist() == [0, 0, 0]
    # a not-allowed (inf) next candidate ends the prototype's pool the same way
    cand_key = torch.tensor([[4, 5], [4, 6]])
    cand_d = torch.tensor([[0.1, 0.2], [0.2, float("inf")]])
    assert distinct_choice(cand_d, cand_key).tolist() == [0, 0]


def test_distinct_choice_without_clashes_takes_everyone_s_first_choice():
    cand_key = torch.tensor([[3, 1], [2, 0], [5, 4]])
    cand_d = torch.tensor([[0.1, 0.2], [0.1, 0.3], [0.0, 0.5]])
    assert distinct_choice(cand_d, cand_key).tolist() == [0, 0, 0]
    # two want key 3: the nearer keeps it, the other moves on; equal distance: the lower index wins
    cand_key = torch.tensor([[3, 1], [3, 0]])
    assert distinct_choice(torch.tensor([[0.2, 0.3], [0.1, 0.4]]), cand_key).tolist() == [1, 0]
    assert distinct_choice(torch.tensor([[0.1, 0.3], [0.1, 0.4]]), cand_key).tolist() == [0, 1]


def test_distinct_push_gives_every_prototype_its_own_patch():
    model, z, y = _toy(n=6, grid=(2, 2))
    with torch.no_grad():  # both prototypes of each class start on the same point
        model.prototypes[1::2] = model.prototypes[0::2]
    _, img, cell = nearest_patches(model, z, y, torch.device("cpu"))
    assert len({(int(a), int(b)) for a, b in zip(img, cell, strict=True)}) < model.num_prototypes
    _, img, cell = nearest_patches(model, z, y, torch.device("cpu"), distinct=True)
    assert len({(int(a), int(b)) for a, b in zip(img, cell, strict=True)}) == model.num_prototypes


def test_auto_recipe_fine_tunes_a_pretrained_tiny():
    cfg = make_config(backbone="tiny", weights="enc.safetensors")
    assert cfg.recipe == "finetune" and cfg.img_size == TINY["img_size"]
    assert (cfg.lr_features, cfg.clst, cfg.sep) == (PAPER["lr_features"], PAPER["clst"], PAPER["sep"])
    assert make_config(backbone="tiny").recipe == "tiny"
    assert FINETUNE["proto_dim"] == TINY["proto_dim"]


def test_pretrain_writes_weights_that_train_loads(tiny_data, tmp_path):
    enc = tmp_path / "enc.safetensors"
    res = pretrain(tiny_data, enc, img_size=32, epochs=1, batch_size=8, workers=0)
    assert enc.exists() and 0 <= res["held_out_accuracy"] <= 1 and res["images"] == 40
    module, _ = build_backbone("tiny", weights=enc)
    from safetensors.torch import load_file

    saved = load_file(str(enc))
    assert all(torch.equal(module.state_dict()[k], v) for k, v in saved.items())
    with pytest.raises(BadInput, match="safetensors"):
        pretrain(tiny_data, tmp_path / "enc.pt", img_size=32, epochs=1, workers=0)


def test_flowers_family_is_a_cub_layout_with_exact_masks(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    synth(a, classes=5, train_per_class=3, test_per_class=2, size=48, seed=3, family="flowers")
    synth(b, classes=5, train_per_class=3, test_per_class=2, size=48, seed=3, family="flowers")
    cub = open_cub(a)
    assert len(cub.classes) == 5 and cub.has_masks and len(cub.split("train")) == 15
    meta = json.loads((a / "synth.json").read_text())
    assert meta["family"] == "flowers" and "petals" in meta["attributes"][0]
    for item in cub.items[:6]:
        m = cub.mask(item, crop=False)
        assert 0 < sum(v > 0 for v in m.getdata()) < 48 * 48 * 0.5  # an object, smaller than half
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)  # same seed, same bytes
    with pytest.raises(BadInput, match="family"):
        synth(tmp_path / "c", family="fish")


def test_pretrain_function_defaults_are_the_command_s():
    """The demo calls pretrain() directly: it must train what `protocli pretrain` trains."""
    import inspect

    from typer.main import get_command

    from protocli.cli import app

    cmd = get_command(app).commands["pretrain"]
    opts = {p.name: p.default for p in cmd.params}
    sig = inspect.signature(pretrain).parameters
    for name in ("backbone", "img_size", "epochs", "batch_size", "lr", "crop"):
        assert sig[name].default == opts[name], name
