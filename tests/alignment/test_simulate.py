"""The headless loop: a plug-in labeler, storage, training rounds and the held-out evaluation with its JSON."""

import json

import pytest

from alignment.eval.simulate import main


def prefers_first(a, b, prompt):
    return 0


def test_simulation_runs_end_to_end_with_any_labeler(tmp_path, capsys, monkeypatch):
    from alignment.eval import simulate
    from alignment.eval.splits import eval_seeds, guard_prompts

    rendered = []
    real = simulate.served_figures
    monkeypatch.setattr(simulate, "served_figures",
                        lambda live, v, lab, prompts, seeds, fid: rendered.append((prompts, seeds)) or
                        real(live, v, lab, prompts, seeds, fid))
    out = tmp_path / "sim.json"
    main(["--labeler", "alignment.eval.labelers:larger", "--pairs", "6", "--rounds", "2", "--train-steps", "2",
          "--eval-prompts", "3", "--eval-seeds", "2", "--fidelity-seeds", "7,8", "--data-dir", str(tmp_path / "d"),
          "--json", str(out)])
    result = json.loads(out.read_text())
    for key in ("win_rate", "ci_low", "ci_high", "labels", "train_seconds", "fidelity_base", "fidelity_aligned"):
        assert key in result
    assert result["labels"] == 6 and result["comparisons"] == 6
    assert result["ci_low"] <= result["win_rate"] <= result["ci_high"]
    # judged on the evaluation set, never on the guard's prompts or seeds; the guard's own figures apart
    (prompts, seeds), = rendered
    assert seeds == eval_seeds(0, 2) and not set(prompts) & set(guard_prompts())
    assert result["adapter_version"] == (result["candidate_version"] if result["promoted"] else None)
    assert set(result["guard"]) >= {"guard_selection_fidelity_base", "confirmation_fidelity_base"}
    assert "win rate" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--objective", "ppo"], "invalid choice: 'ppo'"),
    (["--pairs", "4", "--rounds", "5"], "need pairs >= 2 and 1 <= rounds <= pairs"),
    (["--gamma", "1.5"], "gamma must be in (0, 1]"),
    (["--eps", "0.1"], "unrecognized arguments: --eps"),
])
def test_bad_simulation_input_is_refused(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--data-dir", str(tmp_path / "d")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_the_simulation_needs_a_data_dir(capsys, monkeypatch):
    monkeypatch.delenv("STUDIO_DATA_DIR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--pairs", "4"])
    assert exit_info.value.code == 2 and "--data-dir (or STUDIO_DATA_DIR)" in capsys.readouterr().err
