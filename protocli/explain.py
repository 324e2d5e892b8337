"""`protocli explain`: run + one image file -> "this looks like that": the prototypes behind the prediction.

Inputs: a run (its current weights; the latest push for the prototypes' pictures and class names)
and an image file of any size and mode. The image is used as it is (no bounding-box crop: there is
no box for an arbitrary file) and resized by the eval transform to the model's input size.

Outputs: a dict (predicted class and softmax score, the runner-up classes, and the top-K active
prototypes by contribution = similarity x last-layer weight to the predicted class, each with its
similarity, weight, the latent cell where it fires and the 95th-percentile box of its upsampled
similarity map in input space); a table on stderr; a PNG (default RUN/explain/<image stem>.png):
the input on top, then one row per prototype: its patch from the push, the input with the box
where it fires, and its similarity heatmap. Masked prototypes never vote, so they are left out.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from protocli.activation_maps import high_activation_boxes, similarity_maps, upsample
from protocli.console import info, print_table, warn
from protocli.errors import BadInput
from protocli.files import atomic_write_bytes
from protocli.pictures import draw_box, jet
from protocli.runfiles import read_push_doc


def load_image(path: Path):
    """Any image file -> RGB PIL image; a missing or undecodable file is BadInput naming it."""
    from PIL import Image

    from protocli.data.cub import to_rgb

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except FileNotFoundError:
        raise BadInput("image not found", path) from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise BadInput(f"cannot decode image ({type(e).__name__}: {e})", path) from None


def _class_names(run, push_dir: Path | None, num_classes: int) -> list[str]:
    # The push file carries the names, so explaining works even where the dataset is not mounted.
    if push_dir is not None:
        names = read_push_doc(push_dir)["classes"]
        if names and len(names) == num_classes:
            return list(names)
    try:
        return list(run.cub().classes)
    except BadInput:
        return [str(k) for k in range(num_classes)]


def _patch(push_dir: Path | None, j: int) -> np.ndarray | None:
    from PIL import Image

    path = push_dir / "patches" / f"{j:04d}.png" if push_dir is not None else None
    if path is None or not path.exists():
        return None
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _score(model, x: torch.Tensor, top: int) -> dict:
    """One image (1, 3, S, S) -> prediction, per-prototype similarity, weight and contribution to the
    predicted class, the `top` active prototypes by contribution and their similarity maps."""
    from protocli.model import log_similarity

    with torch.no_grad():
        z = model.encode(x)
        min_d, cell = model.distances(z).flatten(2).min(dim=2)  # (1, P)
        logits = model.classify(min_d)[0]
        prob = logits.softmax(0).cpu()
        pred = int(logits.argmax())
        sim = log_similarity(min_d[0])
        weight = model.last_layer.weight.detach()[pred]
        active = model.prototype_mask > 0
        contrib = sim * weight * model.prototype_mask
        k = min(top, int(active.sum()))
        order = torch.where(active, contrib, -torch.inf).topk(k).indices
        maps = similarity_maps(model, z.expand(k, -1, -1, -1), model.prototypes[order]).cpu()
    return {"logits": logits, "prob": prob, "pred": pred, "sim": sim, "weight": weight, "contrib": contrib,
            "cell": cell, "order": order, "maps": maps, "grid_w": z.shape[3]}


def _patches_stale(model, push_dir: Path | None) -> bool:
    """Whether the prototypes moved since the push whose patches the figure shows (warns when so)."""
    if push_dir is None:
        return False
    from protocli.runfiles import push_is_current

    stale = not push_is_current(model.state_dict(), push_dir)
    if stale:
        warn(f"prototypes moved since push {push_dir.name}: the patches show where they were then")
    return stale


def explain_image(run_dir: Path, image: Path, top: int = 5, out: Path | None = None,
                  device: torch.device | None = None) -> dict:
    """Explain the model's prediction for one image; write the PNG and return the explanation."""
    from protocli.data.transforms import eval_transform
    from protocli.run import Run

    if top < 1:
        raise BadInput(f"--top {top}: must be at least 1")
    device = device or torch.device("cpu")
    run = Run.open(run_dir)
    pil = load_image(image)
    model = run.load_model(device).eval()
    size = model.cfg.img_size
    push_dir = run.latest_push()
    names = _class_names(run, push_dir, model.num_classes)

    x = eval_transform(size)(pil)[None].to(device)
    s = _score(model, x, top)
    pred, sim, weight, contrib, cell = s["pred"], s["sim"], s["weight"], s["contrib"], s["cell"]
    logits, prob, maps = s["logits"], s["prob"], s["maps"]
    boxes = high_activation_boxes(maps, size)
    W = s["grid_w"]
    pcls = model.prototype_class.cpu()
    rows = []
    for rank, j in enumerate(s["order"].tolist(), 1):  # K rows of bookkeeping; the maths in _score is batched
        c = int(pcls[j])
        rows.append({"rank": rank, "prototype": j, "class": c, "class_name": names[c],
                     "similarity": float(sim[j]), "weight": float(weight[j]), "contribution": float(contrib[j]),
                     "cell": [int(cell[0, j]) // W, int(cell[0, j]) % W], "box": [int(v) for v in boxes[rank - 1]],
                     "patch": str(push_dir / "patches" / f"{j:04d}.png") if push_dir is not None else None})
    stale = _patches_stale(model, push_dir)
    ranked = prob.topk(min(3, len(prob)))
    result = {
        "run": str(run.path), "image": str(image), "img_size": size, "push": push_dir.name if push_dir else None,
        "predicted": pred, "class_name": names[pred], "score": float(prob[pred]), "logit": float(logits[pred]),
        "top_classes": [{"class": int(c), "class_name": names[int(c)], "score": float(p)}
                        for p, c in zip(ranked.values, ranked.indices, strict=True)],
        "prototypes": rows, "patches_stale": stale,
    }
    png = Path(out) if out is not None else run.path / "explain" / f"{Path(image).stem}.png"
    pixels = (x[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    atomic_write_bytes(png, _figure(result, pixels, upsample(maps, size).numpy(), push_dir))
    result["png"] = str(png)
    shown = [{**r, "class": r["class_name"], "cell": "{},{}".format(*r["cell"]), "box": "{},{},{},{}".format(*r["box"])}
             for r in rows]
    print_table(f"{Path(image).name}: {names[pred]} (p = {result['score']:.3f})", shown,
                ["rank", "prototype", "class", "similarity", "weight", "contribution", "cell", "box"])
    info(f"explanation written to {png}")
    return result


def _figure(result: dict, pixels: np.ndarray, heat: np.ndarray, push_dir: Path | None) -> bytes:
    """PNG bytes: the input and its prediction, then per prototype: patch | box on input | heatmap."""
    from matplotlib.figure import Figure


    rows = result["prototypes"]
    fig = Figure(figsize=(7.5, 2.4 * (len(rows) + 1)), layout="constrained")
    axes = fig.subplots(len(rows) + 1, 3, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(pixels)
    axes[0, 0].set_title("input", fontsize=9)
    lines = [f"predicted: {result['class_name']}  (p = {result['score']:.3f})", ""]
    lines += [f"{c['class_name']}: {c['score']:.3f}" for c in result["top_classes"]]
    axes[0, 1].text(0, 0.5, "\n".join(lines), fontsize=9, va="center", transform=axes[0, 1].transAxes)
    lo, hi = heat.min(axis=(1, 2), keepdims=True), heat.max(axis=(1, 2), keepdims=True)
    norm = (heat - lo) / np.maximum(hi - lo, 1e-12)
    for r, row in enumerate(rows, 1):
        patch = _patch(push_dir, row["prototype"])
        if patch is not None:
            axes[r, 0].imshow(patch)
        axes[r, 0].set_title(f"p{row['prototype']} ({row['class_name']})", fontsize=8)
        axes[r, 1].imshow(draw_box(pixels, row["box"]))
        axes[r, 1].set_title(f"sim {row['similarity']:.2f} x w {row['weight']:.2f} = {row['contribution']:.2f}",
                             fontsize=8)
        blend = (0.5 * pixels + 0.5 * jet(norm[r - 1])).clip(0, 255).astype(np.uint8)
        axes[r, 2].imshow(draw_box(blend, row["box"]))
        axes[r, 2].set_title(f"fires at cell {tuple(row['cell'])}", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
