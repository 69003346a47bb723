"""The architecture comparison and the pictures, through the CLI on the smoke data."""

import json
import re

import pytest
from conftest import SMOKE, fails_cleanly, new_project, run_cli, snapshot
from PIL import Image

VARIANTS = ["tiny", "plain_cnn_strided"]


@pytest.mark.e2e
@pytest.mark.long
def test_zoo_trains_every_variant_on_one_budget_and_writes_table_and_plot(tmp_path):
    project = new_project(tmp_path)
    args = ("zoo", *SMOKE, "--set", f"zoo.variants=[{', '.join(VARIANTS)}]", "--set", "train.epochs=2",
            "--set", "data.limit_train=2000", "--set", "data.limit_test=500")
    run_cli(*args, cwd=project)
    out = project / "tflite_out" / "zoo"
    rows = json.loads((out / "zoo.json").read_text())["variants"]
    assert [r["variant"] for r in rows] == VARIANTS
    for r in rows:
        assert r["int8_bytes"] == (out / f"{r['variant']}.int8.tflite").stat().st_size
        assert 0.5 < r["int8_accuracy"] <= 1 and abs(r["int8_accuracy"] - r["float_accuracy"]) < 0.05
        assert r["gap"] == round(r["train_accuracy"] - r["val_accuracy"], 5)
        assert r["p50_ms"] > 0 and r["params"] > 0
        assert (project / "models" / f"zoo_{r['variant']}.keras").is_file()
    assert rows[1]["macs"] > rows[0]["macs"] and rows[1]["pooling"] == "strided"
    table = (out / "zoo.md").read_text()
    assert all(f"| {v} |" in table for v in VARIANTS)
    assert Image.open(out / "zoo.png").size[0] > 400
    again = run_cli(*args, cwd=project)
    assert again.stdout.count("is up to date") == 2 * len(VARIANTS)  # trained model and int8 file, per variant


@pytest.mark.e2e
def test_a_study_over_seeds_trains_each_seed_and_reports_mean_and_spread(tmp_path):
    project = new_project(tmp_path)
    run_cli("zoo", *SMOKE, "--set", "zoo.variants=[tiny]", "--set", "studies.seeds=[1, 2]", "--set", "train.epochs=1",
            "--set", "data.limit_train=1000", "--set", "data.limit_test=300", cwd=project)
    out = project / "tflite_out" / "zoo"
    (row,) = json.loads((out / "zoo.json").read_text())["variants"]
    assert row["seeds"] == [1, 2] and [r["seed"] for r in row["runs"]] == [1, 2]
    runs = [r["tasks"]["label"] for r in row["runs"]]
    for key in ("float_accuracy", "int8_accuracy", "gap"):
        values = [r[key] for r in runs]
        assert row[key] == pytest.approx(sum(values) / 2, abs=1e-5)
        assert row[f"{key}_sd"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, abs=1e-5)
    assert runs[0]["float_accuracy"] != runs[1]["float_accuracy"]  # two seeds, two trainings
    for seed in (1, 2):
        assert (project / "models" / f"zoo_tiny_s{seed}.keras").is_file() and (out / f"tiny_s{seed}.int8.tflite").is_file()
    table = (out / "zoo.md").read_text()
    assert "seeds (1, 2)" in table and f"{100 * row['int8_accuracy']:.2f} ± {100 * row['int8_accuracy_sd']:.2f}" in table
    fails_cleanly(run_cli("zoo", *SMOKE, "--set", "studies.seeds=[1, 1]", cwd=project, check=False),
                  "studies.seeds: names a seed twice")


def test_pictures_draw_the_first_filters_and_one_feature_map_row_per_stage(copy_of_smoke):
    run_cli("pictures", *SMOKE, "--image", "3", cwd=copy_of_smoke)
    folder = copy_of_smoke / "tflite_out" / "pictures"
    for kind in ("filters", "features"):
        with Image.open(folder / f"smoke.{kind}.png") as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_pictures_refuse_an_image_index_outside_the_test_set(copy_of_smoke):
    before = snapshot(copy_of_smoke)
    fails_cleanly(run_cli("pictures", *SMOKE, "--image", "5000", cwd=copy_of_smoke, check=False),
                  "--image 5000", "images 0 to 999")
    assert snapshot(copy_of_smoke) == before


def test_summary_of_an_untrained_architecture_shows_each_stage_shrinking(tmp_path):
    project = new_project(tmp_path)
    out = run_cli("summary", *SMOKE, "--untrained", "--set", "model.architecture=mobile_cnn", cwd=project).stdout
    assert "stage1_2_dw" in out and "DepthwiseConv2D" in out
    assert re.search(r"stage1_maxpool +MaxPooling2D +14x14x48 ", out) and re.search(r"stage2_maxpool +MaxPooling2D +7x7x96 ", out)
    assert out.strip().splitlines()[-1].startswith("total")
