"""explain: one image -> predicted class, top prototypes by contribution, a PNG; bad files exit 2."""

import json

import torch
from typer.testing import CliRunner

from protocli.cli import app
from protocli.data.cub import open_cub
from protocli.explain import explain_image
from protocli.run import Run, save_weights

CPU = torch.device("cpu")


def sample_image(tiny_data):
    cub = open_cub(tiny_data)
    return cub.image_path(cub.split("test")[0])


def test_explain_returns_ranked_prototypes_and_png(tiny_run, tiny_data):
    image = sample_image(tiny_data)
    res = explain_image(tiny_run, image, top=3, device=CPU)
    assert res["png"] == str(tiny_run / "explain" / f"{image.stem}.png")
    assert open(res["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert 0 <= res["predicted"] < 4 and 0 < res["score"] <= 1
    assert res["class_name"] == res["top_classes"][0]["class_name"]
    rows = res["prototypes"]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    contrib = [r["contribution"] for r in rows]
    assert contrib == sorted(contrib, reverse=True)
    for r in rows:
        assert abs(r["contribution"] - r["similarity"] * r["weight"]) < 1e-4
        x0, y0, x1, y1 = r["box"]
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
        assert r["patch"].endswith(f"patches/{r['prototype']:04d}.png")
    json.dumps(res)  # what --json prints


def test_masked_prototypes_are_left_out(tiny_run, tiny_data, tmp_path):
    image = sample_image(tiny_data)
    first = explain_image(tiny_run, image, top=8, out=tmp_path / "a.png", device=CPU)
    gone = first["prototypes"][0]["prototype"]
    run = Run.open(tiny_run)
    model = run.load_model()
    with torch.no_grad():
        model.prototype_mask[gone] = 0
    save_weights(model, run.weights_path)
    again = explain_image(tiny_run, image, top=8, out=tmp_path / "b.png", device=CPU)
    assert len(again["prototypes"]) == 7 and gone not in {r["prototype"] for r in again["prototypes"]}


def test_corrupt_or_missing_image_exits_2_naming_the_file(tiny_run, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    runner = CliRunner()
    for path in (bad, tmp_path / "missing.jpg"):
        res = runner.invoke(app, ["explain", str(tiny_run), str(path), "-q"])
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and path.name in lines[0]


def test_explain_cli_json(tiny_run, tiny_data, tmp_path):
    res = CliRunner().invoke(app, ["explain", str(tiny_run), str(sample_image(tiny_data)), "--top", "2",
                                   "--png", str(tmp_path / "e.png"), "--json", "-q"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert len(data["prototypes"]) == 2 and data["png"] == str(tmp_path / "e.png")
