import json

import pytest
from typer.testing import CliRunner

from clinkd.cli import app

runner = CliRunner()


def test_config_command_prints_the_resolved_recipe():
    result = runner.invoke(app, ["config", "configs/default.yaml", "train.lr=0.01", "--preset", "quick"])
    assert result.exit_code == 0, result.output
    assert "lr: 0.01" in result.output and "name: quick" in result.output


def test_a_leading_override_is_not_mistaken_for_a_config_file():
    result = runner.invoke(app, ["config", "model.size=xs", "model.init=scratch"])
    assert result.exit_code == 0, result.output
    assert "size: xs" in result.output


def test_bad_config_is_one_red_line_and_exit_code_2():
    result = runner.invoke(app, ["config", "configs/default.yaml", "train.bogus=1"])
    assert result.exit_code == 2
    assert "train.bogus: unknown key" in result.output
    assert "Traceback" not in result.output


def test_missing_model_dir_is_a_clear_error(tmp_path):
    result = runner.invoke(
        app,
        [
            "predict",
            "--model",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "o"),
            f"data.dir={tmp_path}",
            "data.synth.enabled=false",
        ],
    )
    assert result.exit_code == 2
    assert "error" in result.output


def _copy_with(small_data, tmp_path, name, text):
    """A copy of ``small_data`` (images linked) whose file ``name`` holds ``text``."""
    data = tmp_path / "data"
    data.mkdir()
    for path in small_data.iterdir():
        (data / path.name).symlink_to(path)
    (data / name).unlink()
    (data / name).write_text(text, encoding="utf-8")
    return data


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [("test_MIA.json", '[{"id": ', "malformed JSON"), ("train.json", "[]", "the file holds an empty list")],
)
@pytest.mark.parametrize("command", ["train", "distill", "clip-train"])
def test_a_split_without_usable_records_stops_before_training(small_data, tmp_path, name, text, reason, command):
    data = _copy_with(small_data, tmp_path, name, text)
    result = runner.invoke(
        app, [command, f"data.dir={data}", "data.synth.enabled=false", f"output_dir={tmp_path / 'runs'}"]
    )
    assert result.exit_code == 2, result.output
    assert f"error: {data / name}: no usable record ({reason}" in result.output.splitlines()[-1]
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs" / "default" / "sft").exists()
    assert (tmp_path / "runs" / "default" / "data_issues.txt").is_file()


def test_predict_reflect_and_evaluate_stop_on_a_test_file_without_usable_records(small_data, tmp_path):
    data = _copy_with(small_data, tmp_path, "test_RC.json", "{}")
    settings = [f"data.dir={data}", "data.synth.enabled=false", f"output_dir={tmp_path / 'runs'}"]
    not_a_model = str(tmp_path / "none")  # the data is checked before the model is loaded
    rows = tmp_path / "p.jsonl"
    rows.write_text("{}\n")
    for args in (
        ["predict", "--model", not_a_model, "--out", str(tmp_path / "p"), *settings],
        ["reflect", "--model", not_a_model, *settings],
        ["evaluate", "--pred", str(rows), "--out", str(tmp_path / "e"), "--data", str(data)],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert (
            f"error: {data / 'test_RC.json'}: no usable record (top level is a JSON dict"
            in result.output.splitlines()[-1]
        )


ROW = {
    "id": "ct_1",
    "image": "ct_1.png",
    "task": "ROC",
    "modality": "ct",
    "question": "q",
    "annotation": "liver",
    "response": "liver",
}


def _jsonl(*rows) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (_jsonl(ROW) + '{"id": "ct_2", "resp', ":2: malformed JSONL line"),  # torn: evaluate does not resume
        ("", ": no prediction rows"),
        ("\n\n", ": no prediction rows"),
        (None, ": is a directory, expected a JSONL file"),
        (_jsonl(ROW, {**ROW, "task": "XX"}), ":2: prediction 'ct_1' (image 'ct_1.png'): unknown task 'XX'"),
        (_jsonl({**ROW, "modality": "zz"}), ":1: prediction 'ct_1' (image 'ct_1.png'): unknown modality 'zz'"),
        (_jsonl({k: v for k, v in ROW.items() if k != "response"}), ":1: prediction row lacks response"),
        (_jsonl({**ROW, "response": None}), ":1: prediction row field(s) response must be strings"),
        (_jsonl("[1, 2]"), ":1: a prediction row must be a JSON object, got list"),
        (_jsonl(ROW, "{oops", ROW), ":2: malformed JSONL line"),
    ],
)
def test_evaluate_names_the_bad_prediction_file_and_line(tmp_path, content, message):
    path = tmp_path / "P.jsonl"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content, encoding="utf-8")
    result = runner.invoke(
        app, ["evaluate", "--pred", str(path), "--out", str(tmp_path / "out"), "--meteor", "off", "--spice", "off"]
    )
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[-1].startswith(f"error: {path}{message}")
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "report.md").exists()


def test_evaluate_refuses_an_unknown_on_error_policy(tmp_path):
    result = runner.invoke(app, ["evaluate", "--pred", "P.jsonl", "--out", str(tmp_path), "--on-error", "ignore"])
    assert result.exit_code == 2 and "Invalid value for '--on-error'" in result.output
    assert "Traceback" not in result.output


def test_config_writes_the_resolved_yaml_to_stdout_only():
    import yaml

    from clinkd.config import dump_config, load_config

    result = runner.invoke(app, ["config", "configs/default.yaml", "--preset", "quick"])
    assert result.exit_code == 0, result.output
    assert result.stdout == dump_config(load_config("configs/default.yaml", preset="quick"))
    assert yaml.safe_load(result.stdout)["name"] == "quick"
    assert result.stderr == ""


def test_evaluate_and_compare_write_their_data_to_stdout(tmp_path):
    rows = tmp_path / "P.jsonl"
    rows.write_text(_jsonl(ROW, {**ROW, "id": "mr_1", "modality": "mr", "response": "kidney"}), encoding="utf-8")
    args = ["evaluate", "--pred", str(rows), "--meteor", "off", "--spice", "off", "--no-figures", "--out"]
    as_json = runner.invoke(app, [*args, str(tmp_path / "a"), "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == json.loads((tmp_path / "a" / "metrics.json").read_text(encoding="utf-8"))
    as_text = runner.invoke(app, [*args, str(tmp_path / "b")])
    assert as_text.stdout.rstrip("\n") == (tmp_path / "b" / "report.md").read_text(encoding="utf-8").rstrip("\n")
    compared = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--label", "a", "--label", "b"])
    assert compared.exit_code == 0, compared.output
    assert compared.stdout.startswith("# Comparison") and "| a |" in compared.stdout
    assert compared.stderr == ""


def test_convert_writes_16_bit_images_as_clinkd_reads_them(tmp_path):
    import numpy as np
    from PIL import Image

    from clinkd.model.processor import load_image

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 3 + 1000)).save(images / "ct_wide.png")
    Image.new("L", (16, 16), 90).save(images / "mr_narrow.png")
    question = "Picture 1: <img>{}.png</img>\nWhat can you diagnose from the overall findings in this image?"
    records = [
        {"id": name, "conversations": [[question.format(name), "A small cyst."]]} for name in ("ct_wide", "mr_narrow")
    ]
    (tmp_path / "in.json").write_text(json.dumps(records), encoding="utf-8")
    out = tmp_path / "lf"
    args = [
        "convert",
        "--input",
        str(tmp_path / "in.json"),
        "--images",
        str(images),
        "--out",
        str(out),
        "--image-paths",
        "relative",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    written = json.loads((out / "clinkd_medgrit.json").read_text(encoding="utf-8"))
    assert [record["images"][0] for record in written] == ["images/ct_wide.png", "../images/mr_narrow.png"]
    converted = np.asarray(Image.open(out / "images" / "ct_wide.png"))
    assert converted.dtype == np.uint8 and converted.shape == (64, 64, 3)
    assert np.array_equal(converted, np.asarray(load_image(images / "ct_wide.png")))
    assert (converted.min(), converted.max()) == (0, 255)  # the used range stretched, not clipped to white
    assert "ConvertSummary(" not in result.output
    assert f"1 16-bit images written as 8-bit PNGs to {out / 'images'}" in result.output


def test_convert_help_lists_the_box_styles_and_image_path_choices():
    result = runner.invoke(app, ["convert", "--help"], env={"COLUMNS": "160"})  # the choices on one line
    assert "qwen2-vl|qwen-vl|qwen3-vl" in result.output and "absolute|relative" in result.output


def test_config_from_an_empty_folder_is_the_clinkd_recipe_with_its_built_in_presets(tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)  # no configs/default.yaml here
    result = runner.invoke(app, ["config", "--preset", "quick"])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.stdout)
    assert (resolved["name"], resolved["distill"]["enabled"], resolved["select"]["method"]) == ("quick", True, "sasg")


def _roc_rows(data) -> list[dict]:
    """One perfect ROC prediction row per test record of ``data``."""
    from clinkd.data.medgrit import load_test_split
    from clinkd.data.records import Prediction

    return [
        Prediction.for_sample("ROC", sample, sample.turns[0].answer).to_json()
        for sample in load_test_split(data, tasks=["ROC"])["ROC"]
    ]


def test_evaluate_reads_the_recipes_evaluate_block_and_its_flags_override_it(tmp_path):
    rows = tmp_path / "P.jsonl"
    rows.write_text(_jsonl(ROW), encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("evaluate: {meteor: 'off', spice: 'off', figures: false}\n", encoding="utf-8")
    quiet = runner.invoke(app, ["evaluate", "--pred", str(rows), "--out", str(tmp_path / "a"), str(recipe)])
    assert quiet.exit_code == 0, quiet.output
    assert (
        not (tmp_path / "a" / "figures").exists() and '"METEOR":' not in (tmp_path / "a" / "metrics.json").read_text()
    )
    drawn = runner.invoke(
        app, ["evaluate", "--pred", str(rows), "--out", str(tmp_path / "b"), "--figures", str(recipe)]
    )
    assert drawn.exit_code == 0, drawn.output
    assert (tmp_path / "b" / "figures").is_dir()
    bad = runner.invoke(app, ["evaluate", "--pred", str(rows), "--out", str(tmp_path / "c"), "--meteor", "jar"])
    assert bad.exit_code == 2 and "evaluate.meteor" in bad.output


def _evaluate(tmp_path, rows, *args):
    path = tmp_path / "P.jsonl"
    path.write_text(_jsonl(*rows), encoding="utf-8")
    out = tmp_path / "out"
    return (
        runner.invoke(
            app,
            [
                "evaluate",
                "--pred",
                str(path),
                "--out",
                str(out),
                "--meteor",
                "off",
                "--spice",
                "off",
                "--no-figures",
                *args,
            ],
        ),
        path,
        out,
    )


def test_evaluate_refuses_a_record_scored_twice_with_or_without_data(small_data, tmp_path):
    rows = _roc_rows(small_data)
    for args in (["--data", str(small_data)], []):
        result, path, out = _evaluate(tmp_path, [*rows, rows[3]], *args)
        assert result.exit_code == 2, result.output
        last = " ".join(result.output.split())
        assert (
            f"error: {path}:{len(rows) + 1}: a second ROC row for id {rows[3]['id']!r} (the first is {path}:4)" in last
        )
        assert "Traceback" not in result.output and not (out / "report.md").exists()


def test_evaluate_with_data_refuses_foreign_ids_and_rows_of_another_task(small_data, tmp_path):
    rows = _roc_rows(small_data)
    for bad, message in [
        ({**rows[0], "id": "ct_not-in-the-test"}, "id 'ct_not-in-the-test' is not a ROC test record"),
        ({**_roc_rows(small_data)[1], "task": "MIA", "id": "ct_nowhere"}, "id 'ct_nowhere' is not a MIA test record"),
    ]:
        result, path, _ = _evaluate(
            tmp_path, [*rows[1:], bad] if bad["task"] == "ROC" else [*rows, bad], "--data", str(small_data)
        )
        assert result.exit_code == 2, result.output
        assert f"error: {path}:{len(rows) if bad['task'] == 'ROC' else len(rows) + 1}: {message}" in " ".join(
            result.output.split()
        )


def test_evaluate_with_data_names_the_first_missing_record_unless_partial(small_data, tmp_path):
    rows = _roc_rows(small_data)
    result, _, _ = _evaluate(tmp_path, rows[2:], "--data", str(small_data))
    assert result.exit_code == 2, result.output
    assert f"2 of {len(rows)} ROC test records have no prediction row, the first id {rows[0]['id']!r}" in " ".join(
        result.output.split()
    )
    result, _, out = _evaluate(tmp_path, rows[2:], "--data", str(small_data), "--partial", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["coverage"] == {
        "ROC": {"records": len(rows), "scored": len(rows) - 2, "missing": 2}
    }
    assert (
        f"- ROC: {len(rows) - 2} of {len(rows)} test records scored, 2 without a prediction row"
        in (out / "report.md").read_text()
    )
    assert json.loads(result.stdout)["model"]["tasks"]["ROC"]["macro_present"]["Recall"] == pytest.approx(1.0)


def test_evaluate_names_a_nan_ground_truth_box_in_one_line(tmp_path):
    row = {
        **ROW,
        "task": "VG",
        "annotation": "<ref>liver</ref><box>(nan,1),(20,30)</box>",
        "response": "<box>(1,1),(20,30)</box>",
    }
    result, path, _ = _evaluate(tmp_path, [ROW, row])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[-1].startswith(
        f"error: {path}:2: prediction 'ct_1': unparseable ground-truth box '(nan,1),(20,30)'"
    )
    assert "Traceback" not in result.output


@pytest.fixture()
def damaged_checkpoint(trained_checkpoint, tmp_path):
    """A copy of the tiny trained checkpoint whose model.safetensors was cut in half (a kill mid-copy, a full disk)."""
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(trained_checkpoint, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


def test_damaged_weights_behind_predict_and_infer_are_one_line_naming_the_file(
    damaged_checkpoint, small_data, overfit_image, tmp_path
):
    settings = [f"data.dir={small_data}", "data.synth.enabled=false", "select.method=greedy"]
    for args in (
        ["predict", "--model", str(damaged_checkpoint), "--out", str(tmp_path / "p"), *settings],
        ["infer", "--model", str(damaged_checkpoint), "--image", str(overfit_image), "--question", "liver"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert f"error: {damaged_checkpoint / 'model.safetensors'} is damaged (SafetensorError: " in " ".join(
            result.output.split()
        )
        assert "Traceback" not in result.output


def test_a_damaged_finished_stage_is_named_before_any_stage_runs(damaged_checkpoint, tmp_path):
    import shutil

    teacher = tmp_path / "runs" / "r" / "distill" / "teacher" / "model"
    shutil.copytree(damaged_checkpoint, teacher)
    result = runner.invoke(app, ["run", f"output_dir={tmp_path / 'runs'}", "name=r", f"data.dir={tmp_path / 'data'}"])
    assert result.exit_code == 2, result.output
    assert f"error: {teacher / 'model.safetensors'} is damaged (SafetensorError: " in " ".join(result.output.split())
    assert f"delete {teacher} to redo the stage that wrote it" in " ".join(result.output.split())
    assert not (tmp_path / "data").exists()  # not even the data was synthesised
    result = runner.invoke(
        app,
        [
            "run",
            f"output_dir={tmp_path / 'other'}",
            f"distill.teacher={damaged_checkpoint}",
            f"data.dir={tmp_path / 'data'}",
        ],
    )
    assert (
        result.exit_code == 2
        and f"error: distill.teacher: {damaged_checkpoint / 'model.safetensors'} is damaged"
        in " ".join(result.output.split())
    )


HOLD_THE_LOCK = (
    "import sys, time\nfrom clinkd.io import folder_lock\n"
    "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n"
)


def test_a_second_command_on_a_folder_in_use_stops_at_once_naming_the_process_that_holds_it(tmp_path):
    import subprocess
    import sys

    run_dir = tmp_path / "runs" / "r"
    settings = [f"output_dir={tmp_path / 'runs'}", "name=r", f"data.dir={tmp_path / 'data'}"]
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        for args in (
            ["run", *settings],
            ["train", *settings],
            ["distill", *settings],
            ["clip-train", *settings],
            ["reflect", "--model", str(tmp_path / "none"), *settings],
            ["predict", "--model", str(tmp_path / "none"), "--out", str(run_dir)],
        ):
            result = runner.invoke(app, args)
            said = " ".join(result.output.split())
            assert result.exit_code == 2, (args, result.output)
            assert (
                f"error: {run_dir} is in use by process {holder.pid} (" in said
                and f"(lock: {run_dir / 'clinkd.lock'})" in said
            ), args
        assert not (tmp_path / "data").exists()  # nothing ran
    finally:
        holder.kill()
        holder.wait()
    result = runner.invoke(app, ["run", *settings, "data.synth.enabled=false"])  # takes the lock, then stops: no data
    said = " ".join(result.output.split())
    assert (
        f"{run_dir}: taking over the lock left by process {holder.pid} (" in said
        and "which ended without releasing it (killed?)" in said
    )
    assert result.exit_code == 2 and "does not exist" in said
    assert (run_dir / "clinkd.lock").read_text() == ""  # released on the way out, error or not
