from typer.testing import CliRunner

from clinkd.cli import app

runner = CliRunner()


def test_config_command_prints_the_resolved_recipe():
    result = runner.invoke(app, ["config", "configs/default.yaml", "train.lr=0.01", "--preset", "quick"])
    assert result.exit_code == 0, result.output
    assert "lr: 0.01" in result.output and "name: quick" in result.output


def test_a_leading_override_is_not_mistaken_for_a_config_file():
    result = runner.invoke(app, ["config", "model.size=xs"])
    assert result.exit_code == 0, result.output
    assert "size: xs" in result.output


def test_bad_config_is_one_red_line_and_exit_code_2():
    result = runner.invoke(app, ["config", "configs/default.yaml", "train.bogus=1"])
    assert result.exit_code == 2
    assert "train.bogus: unknown key" in result.output
    assert "Traceback" not in result.output


def test_missing_model_dir_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["predict", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o"), f"data.dir={tmp_path}", "data.synth.enabled=false"])
    assert result.exit_code == 2
    assert "error" in result.output
