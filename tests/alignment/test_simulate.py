"""The headless loop: a plug-in labeler, storage, training rounds and the held-out evaluation with its JSON."""

import json

import pytest

from alignment.eval.simulate import main


def prefers_first(a, b, prompt):
    return 0


def test_simulation_runs_end_to_end_with_any_labeler(tmp_path, capsys):
    out = tmp_path / "sim.json"
    main(["--labeler", "alignment.eval.labelers:larger", "--pairs", "6", "--rounds", "2", "--train-steps", "2",
          "--eval-prompts", "3", "--eval-seeds", "2", "--data-dir", str(tmp_path / "d"), "--json", str(out)])
    result = json.loads(out.read_text())
    for key in ("win_rate", "ci_low", "ci_high", "labels", "train_seconds", "fidelity_base", "fidelity_aligned"):
        assert key in result
    assert result["labels"] == 6 and result["comparisons"] == 6
    assert result["ci_low"] <= result["win_rate"] <= result["ci_high"]
    assert "win rate" in capsys.readouterr().out


def test_bad_simulation_input_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        main(["--objective", "ppo", "--data-dir", str(tmp_path)])
    with pytest.raises(ValueError):
        main(["--pairs", "4", "--rounds", "5", "--data-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="gamma"):
        main(["--gamma", "1.5", "--data-dir", str(tmp_path)])
