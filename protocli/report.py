"""`protocli report`: a run -> PNG figures after Gerstenberger et al. and a report.md that links them.

Inputs: the run (weights, every push's prototypes.json, pictures and weights, rounds.json when
`protocli rounds` wrote one) and its dataset (cached latents; segmentation masks when present).
Outputs, in RUN/report unless `out` says otherwise, every file written atomically:
- weights.png: last-layer weight of each active prototype to its own class, object vs non-object
  prototypes of the latest push, with a Gaussian fit (the paper's Fig. 3a);
- nonobject_gallery.png: non-object prototypes of the first push; when the run has later pushes,
  the same prototypes at the latest push beneath them (Fig. 3b and Fig. 4a's upper row);
- rounds.png: non-object count, clicks, overlap >= .75 and accuracy before/after the last-layer
  fine-tune per revision round (Fig. 4; needs rounds.json);
- latent_pca.png: 2-D PCA of a sample of training grid vectors, object density in red, non-object
  density in blue, the prototypes of every push joined into trajectories (Fig. 5);
- overlap_hist.png: per-prototype object overlap of the first and the latest push.

Object vs non-object follows the simulated user's criterion, `box` (overlap 0) unless `criterion`
says `cell` (the prototype's latent cell holds no object). A grid cell counts
as object when the mask, shrunk to the grid as the `cell` criterion does (`cache.grid_masks`), is
above 0 there.
Figures that need masks are skipped on a dataset without them; report.md says which and why.
Activation precision is left out: it costs a pass over all test maps and `evaluate` reports it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from protocli.console import info
from protocli.evaluate import evaluate_model  # the report's table is an evaluation
from protocli.files import atomic_write_bytes, atomic_write_text
from protocli.metrics import object_stats
from protocli.model import pushed_prototypes
from protocli.runfiles import read_push_doc, read_rounds

PCA_SAMPLE = 20000  # grid vectors in the PCA: enough for smooth densities, fast on a CPU
GALLERY_MAX = 16
OBJ, BG, PROTO = (0.85, 0.1, 0.1), (0.1, 0.25, 0.9), (0.85, 0.0, 0.85)
PAPER = ("Paper (CUB-200-2011, ResNet34, 2000 prototypes): baseline accuracy .778 with 157-251 non-object "
         "prototypes and 1077 with overlap >= .75; revision: 0 non-object after 5 rounds, accuracy .749 after "
         "the fine-tune, 1583 with overlap >= .75, about 350 clicks; masking: .770, .776 after the fine-tune.")


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def _figure(w: float, h: float):
    # A bare Figure renders through Agg on savefig and leaves pyplot's global state alone.
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _picture(push_dir: Path, j: int) -> np.ndarray | None:
    from PIL import Image

    for sub in ("images", "patches"):
        path = push_dir / sub / f"{j:04d}.png"
        if path.exists():
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
    return None


def _gauss(ax, values: np.ndarray, bins: np.ndarray, color, label: str) -> None:
    if len(values) == 0:
        return
    ax.hist(values, bins=bins, density=True, alpha=0.45, color=color, label=f"{label} (n={len(values)})")
    mu, sd = float(values.mean()), float(values.std())
    if sd > 1e-8:
        x = np.linspace(bins[0], bins[-1], 200)
        ax.plot(x, np.exp(-0.5 * ((x - mu) / sd) ** 2) / (sd * np.sqrt(2 * np.pi)), color=color, lw=2)


def weights_figure(path: Path, w_own: np.ndarray, non_object: np.ndarray | None) -> Path:
    """Fig. 3a: density of the own-class weight, split by object / non-object when masks exist."""
    fig = _figure(6, 3.6)
    ax = fig.subplots()
    bins = np.linspace(float(w_own.min()) - 0.05, float(w_own.max()) + 0.05, 31)
    if non_object is None:
        _gauss(ax, w_own, bins, "0.4", "all prototypes")
    else:
        _gauss(ax, w_own[~non_object], bins, OBJ, "object")
        _gauss(ax, w_own[non_object], bins, BG, "non-object")
    ax.set(xlabel="last-layer weight to own class", ylabel="density", title="Weights of the prototypes")
    ax.legend()
    return _save(fig, path)


def gallery_figure(path: Path, first: Path, latest: Path | None, picks: list[int], overlaps: list) -> Path:
    """Fig. 3b: the picked non-object prototypes at the first push (and at the latest push below)."""
    rows = [(first, overlaps[0])] + ([(latest, overlaps[1])] if latest is not None else [])
    cols = min(len(picks), 8 if latest is not None else GALLERY_MAX // 2)
    per_row = -(-len(picks) // cols)  # rows one push needs
    fig = _figure(1.6 * cols, 1.75 * per_row * len(rows) + 0.4)
    axes = np.atleast_2d(fig.subplots(per_row * len(rows), cols, squeeze=False))
    for ax in axes.flat:
        ax.axis("off")
    for r, (push_dir, ov) in enumerate(rows):
        for k, j in enumerate(picks):
            ax = axes[r * per_row + k // cols, k % cols]
            img = _picture(push_dir, j)
            if img is not None:
                ax.imshow(img)
            ax.set_title(f"{push_dir.name}\np{j}  overlap {ov[j]:.2f}", fontsize=7)
    fig.suptitle("Non-object prototypes" + (" and where revision moved them" if latest is not None else ""))
    return _save(fig, path)


def rounds_figure(path: Path, rows: list[dict], lines: dict[str, float]) -> Path:
    """Fig. 4: per round non-object count and clicks, overlap >= .75, accuracy before/after fine-tune."""
    r = [row.get("round") for row in rows]

    def col(k):
        return np.array([np.nan if row.get(k) is None else float(row[k]) for row in rows])

    fig = _figure(12, 3.4)
    a, b, c = fig.subplots(1, 3)
    # non_object_after: the push after the round's revision (round 0: the start); older tables lack it.
    key = "non_object_after" if any("non_object_after" in row for row in rows) else "non_object"
    a.plot(r, col(key), "o-", color=BG, label="non-object prototypes")
    a.plot(r, np.nancumsum(col("clicks")), "s--", color="0.4", label="clicks (cumulative)")
    a.set(xlabel="round", ylabel="count", title="Non-object prototypes")
    b.plot(r, col("overlap_ge_75"), "o-", color=OBJ)
    b.set(xlabel="round", ylabel="prototypes", title="Overlap >= 0.75")
    c.plot(r, col("accuracy_before_ft"), "o--", color="0.5", label="before fine-tune")
    c.plot(r, col("accuracy_after_ft"), "o-", color="k", label="after fine-tune")
    for (name, v), ls in zip(lines.items(), (":", "-.", "--"), strict=False):
        c.axhline(v, ls=ls, color="tab:green", lw=1, label=name)
    c.set(xlabel="round", ylabel="test accuracy", title="Accuracy")
    for ax in (a, c):
        ax.legend(fontsize=8)
    return _save(fig, path)


def _density(xy: np.ndarray, rng) -> np.ndarray:
    """Log-scaled 2-D histogram in [0, 1], rows along y (what imshow with origin="lower" expects)."""
    h = np.log1p(np.histogram2d(xy[:, 0], xy[:, 1], bins=60, range=rng)[0])
    return (h / h.max() if h.max() > 0 else h).T


def pca_figure(path: Path, z: torch.Tensor, cell_obj: torch.Tensor, trajectory: torch.Tensor,
               moved: torch.Tensor, generator: torch.Generator) -> Path:
    """Fig. 5: densities of object / non-object grid vectors in PCA planes, prototypes across pushes.

    z (N, D, H, W) latents, cell_obj (N, H, W) bool, trajectory (T, P, D) prototypes per push,
    moved (P,) bool: the prototypes drawn in magenta (non-object at the first push).
    """
    from matplotlib.collections import LineCollection

    D = z.shape[1]
    flat = z.permute(0, 2, 3, 1).reshape(-1, D)
    pick = torch.randperm(len(flat), generator=generator)[:PCA_SAMPLE]
    x, obj = flat[pick].float(), cell_obj.reshape(-1)[pick]
    mean = x.mean(0)
    q = min(4, D, len(x))
    _, s, v = torch.pca_lowrank(x - mean, q=q, center=False)
    share = (s**2 / ((x - mean) ** 2).sum()).numpy()
    px, pt = ((x - mean) @ v).numpy(), ((trajectory - mean) @ v).numpy()  # (n, q), (T, P, q)
    planes = [(0, 1), (2, 3)] if q >= 4 else [(0, 1)]
    fig = _figure(5.6 * len(planes), 5)
    axes = np.atleast_1d(fig.subplots(1, len(planes)))
    on, off = obj.numpy(), ~obj.numpy()
    for ax, (i, k) in zip(axes, planes, strict=True):
        lo = np.minimum(np.percentile(px[:, [i, k]], 0.5, axis=0), pt[..., [i, k]].reshape(-1, 2).min(0))
        hi = np.maximum(np.percentile(px[:, [i, k]], 99.5, axis=0), pt[..., [i, k]].reshape(-1, 2).max(0))
        pad = 0.05 * (hi - lo + 1e-6)
        rng = [[lo[0] - pad[0], hi[0] + pad[0]], [lo[1] - pad[1], hi[1] + pad[1]]]
        # White background tinted towards red by object density and towards blue by non-object density.
        rgb = (1 - _density(px[on][:, [i, k]], rng)[..., None] * (1 - np.array(OBJ))
               - _density(px[off][:, [i, k]], rng)[..., None] * (1 - np.array(BG)))
        ax.imshow(rgb.clip(0, 1), origin="lower", aspect="auto", extent=(*rng[0], *rng[1]))
        seg = pt[..., [i, k]].transpose(1, 0, 2)  # (P, T, 2)
        m = moved.numpy()
        ax.add_collection(LineCollection(seg[~m], colors="0.2", linewidths=0.6, alpha=0.35))
        ax.add_collection(LineCollection(seg[m], colors=[PROTO], linewidths=1.2))
        ax.scatter(seg[~m, -1, 0], seg[~m, -1, 1], s=6, color="0.15", label="prototypes (latest)")
        ax.scatter(seg[m, 0, 0], seg[m, 0, 1], s=14, marker="x", color=PROTO, label="non-object at first push")
        ax.scatter(seg[m, -1, 0], seg[m, -1, 1], s=18, color=PROTO, label="same prototypes, latest")
        ax.set(xlabel=f"PC{i + 1} ({share[i]:.0%})", ylabel=f"PC{k + 1} ({share[k]:.0%})")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Latent grid vectors (red: object, blue: non-object; {len(x)} sampled) and prototypes "
                 f"over {trajectory.shape[0]} pushes")
    return _save(fig, path)


def overlap_figure(path: Path, overlaps: list[tuple[str, np.ndarray]]) -> Path:
    fig = _figure(6, 3.6)
    ax = fig.subplots()
    bins = np.linspace(0, 1, 21)
    for (name, ov), color in zip(overlaps, (BG, OBJ), strict=False):
        ax.hist(ov, bins=bins, alpha=0.5, color=color, label=f"{name}: {(ov >= 0.75).sum()} of {len(ov)} >= .75")
    ax.axvline(0.75, ls="--", color="k", lw=1)
    ax.set(xlabel="object overlap of the prototype's box", ylabel="prototypes", title="Object overlap")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _md_table(rows: list[dict], columns: list[str]) -> str:
    def f(v):
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def report_run(run_dir: Path, out: Path | None = None, conditions: list[dict] | None = None,
               device: torch.device | None = None, seed: int = 0, criterion: str = "box") -> dict:
    """Write the figures and report.md of a run; `conditions` (rows of `demo`) adds a comparison table.
    `criterion` (box or cell) decides which prototypes the figures and `non_object` count as non-object."""
    from protocli.cache import grid_masks, masks
    from protocli.run import Run
    from protocli.runtime import pick_device

    if criterion not in ("box", "cell"):
        raise ValueError(f"criterion must be box or cell, not {criterion!r}")
    device = device or pick_device("auto")
    run = Run.open(run_dir)
    out = Path(out) if out is not None else run.path / "report"
    cub, model = run.cub(), run.load_model(device)
    ev = evaluate_model(run, model, cub, device, criterion=criterion, apr=False)
    pushes = run.stage_dirs("push")
    docs = [read_push_doc(p) for p in pushes]
    round_rows = read_rounds(run.path / "rounds.json")
    active = (model.prototype_mask.detach().cpu() > 0).numpy()
    pcls = model.prototype_class.cpu()
    w_own = model.last_layer.weight.detach().cpu()[pcls, torch.arange(model.num_prototypes)].numpy()
    figures: dict[str, str] = {}
    skipped: dict[str, str] = {}
    stats = []
    if pushes and cub.has_masks:
        mtr = masks(cub, "train", size=model.cfg.img_size, crop=run.crop, cache_dir=run.cache_dir)
        gtr = grid_masks(cub, "train", grid=docs[-1]["grid"], crop=run.crop, cache_dir=run.cache_dir)
        stats = [object_stats(doc, mtr, gtr) for doc in docs]
    no_masks = "the dataset has no segmentation masks" if not cub.has_masks else "the run has no push"

    non_obj = stats[-1][criterion].numpy() if stats else None
    if active.any():
        figures["weights"] = str(weights_figure(out / "weights.png", w_own[active],
                                                non_obj[active] if non_obj is not None else None))
    else:
        skipped["weights"] = "every prototype is masked"
    if stats:
        figures.update(object_figures(out, run, model, cub, pushes, stats, gtr, active, device, seed, skipped,
                                      criterion))
    else:
        for name in ("nonobject_gallery", "overlap_hist", "latent_pca"):
            skipped[name] = f"needs object masks and a push: {no_masks}"
    if round_rows:
        lines = {f"{r['condition']} (after fine-tune)": r["accuracy"] for r in conditions or []
                 if r.get("condition") != "revision" and r.get("accuracy") is not None}
        figures["rounds"] = str(rounds_figure(out / "rounds.png", round_rows, lines))
    else:
        skipped["rounds"] = "no rounds.json in the run (run `protocli rounds RUN`)"

    md = out / "report.md"
    atomic_write_text(md, _markdown(run, ev, conditions, round_rows, figures, skipped))
    info(f"report: {len(figures)} figures and {md}")
    keys = ("accuracy", "train_accuracy", "prototypes", "active_prototypes", "non_object", "non_object_cell",
            "overlap_ge_75", "mean_overlap")
    return {"run": str(run.path), "out": str(out), "report": str(md), "criterion": criterion,
            "figures": figures, "skipped": skipped,
            "pushes": [p.name for p in pushes], "rounds": len(round_rows),
            **{k: ev.get(k) for k in keys}}


def object_figures(out: Path, run, model, cub, pushes: list[Path], stats: list[dict], gtr: torch.Tensor,
                   active: np.ndarray, device, seed: int, skipped: dict, criterion: str = "box") -> dict[str, str]:
    """The figures that need object masks: gallery, overlap histogram, latent PCA."""
    from protocli.cache import latents
    from protocli.runfiles import push_is_current

    figures = {}
    first_bad = torch.nonzero(stats[0][criterion]).flatten()
    if len(first_bad):
        n = min(len(first_bad), 8 if len(pushes) > 1 else GALLERY_MAX)
        pick = first_bad[torch.randperm(len(first_bad), generator=torch.Generator().manual_seed(seed))[:n]]
        latest = pushes[-1] if len(pushes) > 1 else None
        ov = [stats[0]["overlap"].tolist(), stats[-1]["overlap"].tolist()]
        figures["nonobject_gallery"] = str(gallery_figure(out / "nonobject_gallery.png", pushes[0], latest,
                                                          sorted(int(j) for j in pick), ov))
    else:
        skipped["nonobject_gallery"] = f"push {pushes[0].name} has no non-object prototypes"
    ovs = [(pushes[0].name, stats[0]["overlap"].numpy()[active])]
    if len(pushes) > 1:
        ovs.append((pushes[-1].name, stats[-1]["overlap"].numpy()[active]))
    figures["overlap_hist"] = str(overlap_figure(out / "overlap_hist.png", ovs))
    ztr, _ = latents(model, cub, "train", crop=run.crop, cache_dir=run.cache_dir, device=device)
    cell_obj = gtr > 0  # the cell criterion's grid masks
    traj = [pushed_prototypes(p) for p in pushes]
    now = model.prototypes.detach().cpu().float()
    if not push_is_current(model.state_dict(), pushes[-1]):
        traj.append(now)  # revised after the last push: show where the prototypes are now
    figures["latent_pca"] = str(pca_figure(out / "latent_pca.png", ztr, cell_obj, torch.stack(traj),
                                           stats[0][criterion], torch.Generator().manual_seed(seed)))
    return figures


CAPTIONS = {
    "weights": "Last-layer weight of each prototype to its own class (paper Fig. 3a).",
    "nonobject_gallery": "Non-object prototypes of the first push; below them, the same prototypes at the "
                         "latest push (paper Fig. 3b, Fig. 4a).",
    "rounds": "Per revision round: non-object prototypes and clicks, overlap >= .75, accuracy before and after "
              "the last-layer fine-tune (paper Fig. 4).",
    "latent_pca": "PCA of training grid vectors, object density red, non-object blue; prototype trajectories "
                  "across pushes, magenta for those that were non-object at the first push (paper Fig. 5).",
    "overlap_hist": "Object overlap of every active prototype's box.",
}


def _markdown(run, ev: dict, conditions, round_rows, figures: dict, skipped: dict) -> str:
    m = run.manifest["model"]
    text = [f"# protocli report: {run.path.name}", "",
            f"Run `{run.path}`, data `{run.manifest['data']['root']}`, backbone {m['backbone']}, "
            f"{m['num_classes']} classes x {m['prototypes_per_class']} prototypes, image {m['img_size']} px, "
            f"latest push {ev.get('push')}.", "", "## Numbers", "",
            _md_table([{"metric": k, "value": ev.get(k)} for k in (
                "accuracy", "train_accuracy", "prototypes", "active_prototypes", "non_object_box",
                "non_object_cell", "overlap_ge_75", "mean_overlap")], ["metric", "value"]), "",
            "Non-object: the box of the prototype's patch misses the object (box) or its latent cell holds "
            "no object (cell); both count active prototypes of the latest push. The figures split prototypes "
            f"by the {ev.get('criterion', 'box')} criterion.", ""]
    if conditions:
        cols = [c for c in ("condition", "train_accuracy", "accuracy", "non_object", "overlap_ge_75", "clicks",
                            "active_prototypes") if any(c in r for r in conditions)]
        text += ["## Conditions", "", _md_table(conditions, cols), ""]
    if round_rows:
        cols = [c for c in ("round", "non_object", "clicks", "accuracy_before_ft", "accuracy_after_ft",
                            "non_object_after", "overlap_ge_75") if any(c in r for r in round_rows)]
        text += ["## Revision rounds", "", _md_table(round_rows, cols), "",
                 "non_object: rejected on the push consulted at the start of the round; non_object_after and "
                 "overlap_ge_75: the push after the round's revision; accuracies on the test split.", ""]
    text += [PAPER, "", "## Figures", ""]
    for name, path in figures.items():
        text += [f"### {name}", "", CAPTIONS[name], "", f"![{name}]({Path(path).name})", ""]
    for name, why in skipped.items():
        text += [f"- {name}.png skipped: {why}"]
    return "\n".join(text) + "\n"
