"""The generate CLI: writes images, and turns bad input into a one-line error with exit code 2."""

import pytest
from PIL import Image

from alignment.generate import main


def test_generate_writes_n_images_side_by_side(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["a large red circle on a blue background", "--seed", "0", "--n", "3", "--scale", "2",
                 "--steps", "6", "--out", str(out)]) == 0
    assert Image.open(out).size == (3 * 64, 64)
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["", "--steps", "4"], "empty"),
    (["   "], "empty"),
    (["x" * 600], "limit is"),
    (["a red circle", "--seed", "-1"], "out of range"),
    (["a red circle", "--seed", str(2**70)], "out of range"),
    (["a red circle", "--steps", "0"], "steps must be between 1 and 1000"),
    (["a red circle", "--n", "0"], "n must be a whole number between 1 and 64"),
    (["a red circle", "--scale", "40"], "scale must be a whole number between 1 and 32"),
    (["a red circle", "--steps", "many"], "invalid int value"),
])
def test_bad_input_is_refused_before_loading(tmp_path, capsys, args, words):
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and "error:" in last and words in last and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args, words", [
    (["a red circle", "--model", "/no/such/model"], "not a diffusers pipeline"),
    (["a red circle", "--adapter", "/no/such/adapter.safetensors"], "no LoRA weights"),
])
def test_bad_model_or_adapter_gets_a_clear_error(tmp_path, capsys, args, words):
    assert main(args + ["--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and words in last and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_sampler_settings_come_from_flags_then_variables_then_the_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STUDIO_STEPS", "3")
    out = tmp_path / "one.png"
    assert main(["a small blue square", "--out", str(out)]) == 0
    assert "3 steps" in capsys.readouterr().out  # the variable, not the model's default
    assert main(["a small blue square", "--steps", "2", "--out", str(out)]) == 0
    assert "2 steps" in capsys.readouterr().out  # the flag wins
    monkeypatch.delenv("STUDIO_STEPS")
    assert main(["a small blue square", "--eta", "0.5", "--out", str(out)]) == 0
    assert "eta 0.5" in capsys.readouterr().out and Image.open(out).size == (32, 32)
