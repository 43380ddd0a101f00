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
    (["a red circle", "--steps", "0"], "steps"),
    (["a red circle", "--model", "/no/such/model"], "not a diffusers pipeline"),
    (["a red circle", "--n", "0"], "--n"),
    (["a red circle", "--adapter", "/no/such/adapter.safetensors"], "no LoRA weights"),
])
def test_bad_input_gets_a_clear_error(tmp_path, capsys, args, words):
    assert main(args + ["--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and words in last and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()
