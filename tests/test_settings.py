"""Every setting is defined once (settings), and every command line and STUDIO_* variable is derived from it."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

import settings
from alignment.core import limits
from alignment.eval.simulate import main as simulate_main
from alignment.training.fidelity import FidelityGuard
from alignment.training.worker import parse_args as worker_args
from app import inputs
from app.__main__ import command_line as app_command_line
from app.__main__ import parse_args as app_args
from app.config import PARTS, StudioConfig
from settings import (GenerateConfig, ModelConfig, SamplerConfig, ServerConfig, SharingConfig, SimulationConfig,
                      StoreConfig, TrainerConfig, WorkerConfig)
from settings_cli import CommandLine, env_name, kinds
from storage import models

ALL = (ModelConfig, StoreConfig, SamplerConfig, TrainerConfig, WorkerConfig, ServerConfig, SharingConfig,
       GenerateConfig, SimulationConfig)
TRAINING = (TrainerConfig, WorkerConfig)


@pytest.fixture
def no_studio_env(monkeypatch):
    for cls in ALL:
        for f in dataclasses.fields(cls):
            monkeypatch.delenv(env_name(f.name), raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    return monkeypatch


def fields_of(*classes):
    return [(cls, f) for cls in classes for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls, f", fields_of(*ALL), ids=lambda x: getattr(x, "name", getattr(x, "__name__", "")))
def test_every_setting_has_help_and_a_default(cls, f):
    if dataclasses.is_dataclass(kinds(cls)[f.name].scalar):  # SimulationConfig.trainer: its own fields are flags
        return
    assert len(f.metadata.get("help", "")) > 10, f"{cls.__name__}.{f.name} needs a help text"
    assert f.default is not dataclasses.MISSING, f"{cls.__name__}.{f.name} needs a default"


def test_the_variable_of_a_setting_is_its_name_in_capitals():
    assert env_name("train_every") == "STUDIO_TRAIN_EVERY" and env_name("log_ratio_clip") == "STUDIO_LOG_RATIO_CLIP"


def other_value(cls, f) -> str:
    """A valid value of setting `f` of `cls` that is not its default, as a command line writes it."""
    kind, default = kinds(cls)[f.name], f.default
    if "choices" in f.metadata:
        return next(c for c in f.metadata["choices"] if c != default)
    if kind.scalar is bool:
        return "false" if default else "true"
    if kind.many:
        return "7,8" if kind.scalar is int else "alice,bob"
    if kind.scalar is int:
        return str((default or 2) + 1)
    if kind.scalar is float:
        return str((default or 2.0) / 2)
    if f.name == "fidelity_scorer":
        return "drift"
    return "some/other-model"


@pytest.mark.parametrize("cls, f", fields_of(*TRAINING), ids=lambda x: getattr(x, "name", getattr(x, "__name__", "")))
def test_the_app_and_the_worker_take_each_training_setting_under_one_name(no_studio_env, cls, f):
    value = other_value(cls, f)
    flag = ["--" + f.name.replace("_", "-"), value]
    app, worker = app_args(flag), worker_args(flag).build(cls)
    part = app.trainer_config() if cls is TrainerConfig else app.worker_config()
    assert part == worker and getattr(worker, f.name) != f.default  # the flag took effect, the same in both
    no_studio_env.setenv(env_name(f.name), value)
    from_env = app_args([])
    assert (from_env.trainer_config() if cls is TrainerConfig else from_env.worker_config()) == part
    assert worker_args([]).build(cls) == part


def test_a_flag_wins_over_its_variable_and_a_variable_over_the_default(no_studio_env):
    assert app_args([]).train_every == WorkerConfig().train_every == worker_args([]).build(WorkerConfig).train_every
    no_studio_env.setenv("STUDIO_TRAIN_EVERY", "5")
    assert app_args([]).train_every == 5 == worker_args([]).build(WorkerConfig).train_every
    assert app_args(["--train-every", "8"]).train_every == 8  # the flag, though it repeats the default
    assert worker_args(["--train-every", "9"]).build(WorkerConfig).train_every == 9


def test_multi_valued_settings_take_repeats_spaces_and_commas(no_studio_env):
    parsed = worker_args(["--train-annotators", "alice,bob", "carol", "--train-annotators", "dave",
                          "--fidelity-seeds", "1", "2"])
    assert parsed.build(WorkerConfig).train_annotators == ("alice", "bob", "carol", "dave")
    assert parsed.build(WorkerConfig).fidelity_seeds == (1, 2)
    no_studio_env.setenv("STUDIO_TARGET_MODULES", "to_q, to_v")
    no_studio_env.setenv("STUDIO_FIDELITY_SEEDS", "5,6,7")
    parsed = worker_args([])
    assert parsed.build(TrainerConfig).target_modules == ("to_q", "to_v")
    assert parsed.build(WorkerConfig).fidelity_seeds == (5, 6, 7)


@pytest.mark.parametrize("env, argv, message", [
    ({"STUDIO_FIDELITY_SEEDS": "1,two"}, [], "STUDIO_FIDELITY_SEEDS: invalid int value"),
    ({"STUDIO_GRADIENT_CHECKPOINTING": "maybe"}, [], "STUDIO_GRADIENT_CHECKPOINTING: invalid bool value"),
    ({"STUDIO_TIE_POLICY": "flip"}, [], "STUDIO_TIE_POLICY: invalid choice 'flip'"),
    ({"STUDIO_MIN_VOTES": "0"}, [], "min_votes must be at least 1"),
    ({}, ["--lease-ttl", "0"], "lease_ttl_s must be positive"),
    ({}, ["--fidelity-scorer", "clip"], "needs clip_model"),
    ({}, ["--train-every"], "expected one argument"),
    ({}, ["--interval", "5"], "unrecognized arguments: --interval"),
])
def test_a_bad_setting_ends_the_worker_with_one_line_and_code_2(no_studio_env, capsys, env, argv, message):
    for name, value in env.items():
        no_studio_env.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        parsed = worker_args(argv)
        parsed.build(TrainerConfig), parsed.build(WorkerConfig)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err.strip().splitlines()[-1] and "Traceback" not in err


@pytest.mark.parametrize("cls, values, message", [
    (TrainerConfig, {"gamma": 0}, "gamma must be in (0, 1]"),
    (TrainerConfig, {"target_modules": ""}, "target_modules must name at least one module"),
    (WorkerConfig, {"fidelity_seeds": ()}, "at least one seed"),
    (WorkerConfig, {"fidelity_prompts": 0}, "fidelity_prompts must be a whole number at least 1"),
    (ServerConfig, {"concurrency": 0}, "concurrency must be a whole number at least 1"),
    (ServerConfig, {"cpu_threads": -1}, "cpu_threads must be a whole number between 0 and 1024"),
    (ServerConfig, {"ready_batch": 9}, "ready_batch must be a whole number between 0 and 8"),
    (SharingConfig, {"votes_per_minute": 1.5}, "votes_per_minute must be a whole number at least 0"),
    (SharingConfig, {"admins": [1]}, "admins: expected names"),
    (GenerateConfig, {"n": 65}, "n must be a whole number between 1 and 64"),
    (SimulationConfig, {"eval_seeds": 0}, "eval_prompts and eval_seeds must be at least 1"),
    (ModelConfig, {"model": " "}, "model must be 'embedded'"),
    (SamplerConfig, {"eta": 0}, "eta must be in (0, 1]"),
])
def test_each_part_checks_its_own_values(cls, values, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        cls(**values)


def test_the_studio_takes_half_the_cores_unless_told_or_omp_num_threads_is_set():
    auto = ServerConfig()
    assert [auto.torch_threads({}, cores) for cores in (1, 2, 3, 16, None)] == [1, 1, 1, 8, 1]
    assert auto.torch_threads({"OMP_NUM_THREADS": "4"}, 16) is None  # the environment's choice stands
    assert ServerConfig(cpu_threads=3).torch_threads({"OMP_NUM_THREADS": "4"}, 16) == 3  # the setting wins


def test_the_ready_queue_batches_two_pairs_only_for_the_embedded_models_unless_told():
    assert (ServerConfig().ready_batch_for(True), ServerConfig().ready_batch_for(False)) == (2, 1)
    assert ServerConfig(ready_batch=3).ready_batch_for(False) == 3


def test_names_are_stripped_deduplicated_and_split_on_commas():
    assert settings.names(["a, b", "b", " c ", ""], "x") == ("a", "b", "c")
    assert WorkerConfig(train_annotators=" , ").train_annotators is None
    assert SharingConfig(allow_models="embedded,org/sd").allow_models == ("embedded", "org/sd")


def test_documented_command_lines_parse(no_studio_env, tmp_path):
    """The flags the README and the module docstrings show."""
    config = app_args(["--model", "embedded", "--device", "cpu", "--data-dir", str(tmp_path), "--database-url",
                       "sqlite:///x.db", "--train-every", "4", "--objective", "discounted", "--gamma", "0.9",
                       "--train-steps", "40", "--lr", "1e-4", "--port", "7861", "--host", "127.0.0.1", "--no-worker",
                       "--train-annotators", "alice,bob", "--pairs-per-minute", "5", "--votes-per-minute", "9"])
    assert (config.device, config.train_steps, config.port, config.worker) == ("cpu", 40, 7861, False)
    parsed = worker_args(["--model", "embedded", "--device", "cpu", "--mixed-precision", "fp16", "--rank", "4",
                          "--batch-pairs", "2", "--lr", "1e-4", "--train-steps", "200", "--train-every", "16",
                          "--micro-batch", "2", "--gradient-checkpointing", "--lease-ttl", "60", "--min-votes", "4",
                          "--fidelity-prompts", "4", "--data-dir", str(tmp_path), "--database-url", "sqlite://",
                          "--once"])
    trainer = parsed.build(TrainerConfig)
    assert (trainer.lora_rank, trainer.micro_batch, trainer.gradient_checkpointing) == (4, 2, True)
    assert parsed.build(WorkerConfig).lease_ttl_s == 60 and parsed.extra.once


def test_a_name_two_parts_share_is_one_flag_that_sets_both(no_studio_env):
    cli = CommandLine(SimulationConfig, TrainerConfig, prog="sim")
    parsed = cli.parse(["--seed", "3"], environ={})
    assert parsed.build(SimulationConfig).seed == 3 == parsed.build(TrainerConfig).seed
    assert parsed.sources == {"seed": "--seed"}
    assert cli.parse([], environ={"STUDIO_SEED": "4"}).sources == {"seed": "STUDIO_SEED"}


def test_the_parser_reads_the_environment_it_is_given():
    cli = CommandLine(ServerConfig, prog="serve")
    assert cli.parse([], environ={"STUDIO_PORT": "9001", "STUDIO_HOST": " "}).values == {"port": 9001}


def test_a_field_without_help_cannot_become_a_flag():
    @dataclasses.dataclass
    class Undocumented:
        knob: int = 1

    with pytest.raises(ValueError, match="Undocumented.knob has no help text"):
        CommandLine(Undocumented, prog="x")


def test_each_duplicated_constant_now_has_one_home():
    assert models.VOTE_CHOICES is settings.VOTE_CHOICES is inputs.VOTE_CHOICES
    assert models.MAX_PROMPT_CHARS is settings.MAX_PROMPT_CHARS is limits.MAX_PROMPT_CHARS
    assert models.MAX_ANNOTATOR_CHARS is settings.MAX_ANNOTATOR_CHARS
    guard = inspect.signature(FidelityGuard).parameters
    assert guard["seeds"].default is settings.default(WorkerConfig, "fidelity_seeds")
    assert guard["max_drop"].default is settings.default(WorkerConfig, "fidelity_max_drop")


def test_the_app_has_no_training_setting_of_its_own():
    """StudioConfig's training fields are TrainerConfig's and WorkerConfig's own (the same Field objects)."""
    studio = {f.name: f for f in dataclasses.fields(StudioConfig)}
    for part in PARTS:
        for f in dataclasses.fields(part):
            assert studio[f.name] is f
    own = set(studio) - {f.name for part in PARTS for f in dataclasses.fields(part)}
    assert own == {"on_spaces", "logins"}  # from SPACE_ID and the logins: never flags


def test_the_train_tab_takes_its_kinds_from_the_dataclasses():
    assert inputs.SETTINGS["beta"] == kinds(TrainerConfig)["beta"] and inputs.SETTINGS["beta"].optional
    assert inputs.SETTINGS["train_every"].scalar is int and not inputs.SETTINGS["train_every"].optional
    assert inputs.SETTINGS["train_annotators"].many
    assert inputs.parse_setting("beta", "") is None and inputs.parse_setting("train_steps", 12.0) == 12


def test_every_command_offers_help_for_its_settings(capsys):
    for run, argv in ((simulate_main, ["--help"]), (worker_args, ["--help"])):
        with pytest.raises(SystemExit) as exit_info:
            run(argv)
        out = " ".join(capsys.readouterr().out.split())
        assert exit_info.value.code == 0 and "--log-ratio-clip" in out and "STUDIO_LOG_RATIO_CLIP" in out
    help_text = " ".join(app_command_line().parser.format_help().split())
    assert "STUDIO_TRAIN_INTERVAL_S" in help_text and "--lease-ttl" in help_text


def test_store_paths_are_paths(no_studio_env, tmp_path):
    no_studio_env.setenv("STUDIO_DATA_DIR", str(tmp_path))
    assert worker_args([]).build(StoreConfig).data_dir == Path(tmp_path)


def test_the_weights_precision_is_one_setting_checked_at_start():
    from settings import ModelConfig

    assert ModelConfig(dtype="fp16").dtype == "fp16" and ModelConfig().dtype is None
    with pytest.raises(ValueError, match="dtype must be fp32, fp16, bf16"):
        ModelConfig(dtype="fp8")
