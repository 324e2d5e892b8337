"""Push math against brute force: nearest own-class patch, percentile, 95th-percentile box, overlap."""

import numpy as np
import torch

from protocli.activation_maps import high_activation_boxes, percentile_rows, upsample
from protocli.metrics import box_overlap
from protocli.model import ModelConfig, build_model
from protocli.nearest import nearest_patches


def test_percentile_rows_matches_numpy():
    x = torch.randn(7, 333)
    for q in (0.0, 50.0, 95.0, 99.9, 100.0):
        ours = percentile_rows(x, q).numpy()
        assert np.allclose(ours, np.percentile(x.numpy(), q, axis=1), atol=1e-6), q


def test_nearest_patches_brute_force():
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="tiny", num_classes=3, prototypes_per_class=2, proto_dim=5, img_size=32)
    model = build_model(cfg)
    z = torch.rand(9, 5, 3, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    best_d, best_img, best_cell = nearest_patches(model, z, y, torch.device("cpu"), batch_size=4)
    P = model.num_prototypes
    for j in range(P):
        c = j // 2
        best = (float("inf"), None, None)
        for b in range(9):
            for h in range(3):
                for w in range(4):
                    d = float(((z[b, :, h, w] - model.prototypes[j].detach()) ** 2).sum())
                    if y[b] == c and d < best[0] - 1e-7:
                        best = (d, b, h * 4 + w)
        assert abs(best_d[j] - best[0]) < 1e-5
        assert int(best_img[j]) == best[1] and int(best_cell[j]) == best[2]
        assert int(y[best_img[j]]) == c  # own class only


def test_high_activation_box_brute_force():
    torch.manual_seed(1)
    maps = torch.rand(5, 4, 4)
    size = 32
    boxes = high_activation_boxes(maps, size, chunk=2)
    up = upsample(maps, size).numpy()
    for r in range(5):
        m = up[r] >= np.percentile(up[r], 95)
        ys, xs = np.nonzero(m)
        assert boxes[r].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_box_overlap():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 2:6, 2:6] = True
    masks[1, :, :4] = True
    boxes = torch.tensor([[0, 0, 4, 4], [4, 0, 8, 8]])  # 4 of 16 covered; none covered
    assert torch.allclose(box_overlap(boxes, masks), torch.tensor([0.25, 0.0]))
    # the cell criterion (PIL's bicubic shrink of the raw mask) is checked in test_fidelity.py
