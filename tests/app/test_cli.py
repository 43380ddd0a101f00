"""`python -m app` flags and STUDIO_* variables → StudioConfig, and refusals of impossible settings at start."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from app.__main__ import browser_secret, main, parse_args
from app.config import PARTS, StudioConfig
from settings import TrainerConfig, WorkerConfig


def test_defaults_then_environment_then_flags(monkeypatch):
    for name in ("STUDIO_MODEL", "STUDIO_DATA_DIR", "STUDIO_PORT", "STUDIO_HOST", "STUDIO_TRAIN_EVERY",
                 "STUDIO_GAMMA", "STUDIO_DEVICE", "STUDIO_WORKER", "STUDIO_OBJECTIVE", "STUDIO_TRAIN_STEPS"):
        monkeypatch.delenv(name, raising=False)
    config = parse_args([])
    assert (config.model, config.data_dir, config.host, config.port) == ("embedded", Path("studio-data"),
                                                                         "127.0.0.1", 7860)
    assert config.train_every == 8 and config.worker and config.trainer_config() == TrainerConfig()

    monkeypatch.setenv("STUDIO_DATA_DIR", "/srv/studio")
    monkeypatch.setenv("STUDIO_PORT", "9000")
    monkeypatch.setenv("STUDIO_TRAIN_EVERY", "3")
    monkeypatch.setenv("STUDIO_GAMMA", "0.8")
    monkeypatch.setenv("STUDIO_WORKER", "false")
    config = parse_args([])
    assert (config.data_dir, config.port, config.train_every) == (Path("/srv/studio"), 9000, 3)
    assert config.trainer_config() == TrainerConfig(gamma=0.8) and not config.worker

    config = parse_args(["--port", "9100", "--gamma", "1.0", "--objective", "trajectory", "--train-steps", "20",
                         "--worker", "--train-every", "8"])
    assert config.port == 9100 and config.worker and config.train_every == 8  # a flag wins, even the default
    assert config.trainer_config() == TrainerConfig(objective="trajectory", gamma=1.0, train_steps=20)
    assert not parse_args(["--no-worker"]).worker and config.data_dir == Path("/srv/studio")


@pytest.mark.parametrize("argv, env, message", [
    (["--port", "0"], {}, "port must be a whole number between 1 and 65535"),
    (["--train-every", "0"], {}, "train_every must be at least 1"),
    (["--objective", "ppo"], {}, "invalid choice"),
    ([], {"STUDIO_PORT": "http"}, "STUDIO_PORT: invalid int value: 'http'"),
    ([], {"STUDIO_OBJECTIVE": "ppo"}, "STUDIO_OBJECTIVE: invalid choice 'ppo'"),
    ([], {"STUDIO_WORKER": "perhaps"}, "STUDIO_WORKER: invalid bool value"),
    ([], {"STUDIO_GAMMA": "2"}, "gamma must be in (0, 1]"),
    (["--log-ratio-clip", "0"], {}, "log_ratio_clip must be positive"),
    (["--train-interval-s", "0"], {}, "train_interval_s must be positive"),
    (["--eps", "0.1"], {}, "unrecognized arguments: --eps"),
])
def test_impossible_flags_and_variables_are_refused(monkeypatch, capsys, argv, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err.strip().splitlines()[-1] and "Traceback" not in err


def test_bad_objective_settings_stop_the_start_before_anything_is_loaded(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--gamma", "2", "--data-dir", str(tmp_path / "data")])
    assert exit_info.value.code == 2 and "gamma must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_config_validation():
    with pytest.raises(ValueError, match="unknown objective"):
        StudioConfig(objective="sft")
    with pytest.raises(ValueError, match="train_interval_s"):
        StudioConfig(train_interval_s=0)
    config = StudioConfig(train_every=3, train_interval_s=60, lr=1e-3, train_annotators="a,b")
    assert config.worker_config() == WorkerConfig(train_every=3, train_interval_s=60, train_annotators=("a", "b"))
    assert config.effective_train_voters() == "everyone"  # local
    assert config.guard_policy().pending_per_address == 0  # no bound per address on loopback, as rate limits
    assert StudioConfig(host="0.0.0.0").guard_policy().pending_per_address == 8
    assert StudioConfig(host="0.0.0.0", pending_per_address=3).guard_policy().pending_per_address == 3
    assert StudioConfig(host="0.0.0.0", auth=["a:pw"]).effective_train_voters() == "signed-in"
    assert StudioConfig(on_spaces=True).effective_train_voters() == "signed-in"
    assert StudioConfig(host="0.0.0.0", train_voters="everyone", auth=["a:pw"]).effective_train_voters() == "everyone"
    assert config.trainer_config() == TrainerConfig(lr=1e-3)


def test_help_lists_every_setting_with_its_variable_and_no_secret(monkeypatch, capsys):
    monkeypatch.setenv("STUDIO_ADMIN_TOKEN", "a-secret-token-nobody-sees")
    monkeypatch.setenv("STUDIO_AUTH", "alice:pw-nobody-sees")
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "nobody-sees" not in out
    for part in PARTS:
        for f in dataclasses.fields(part):
            assert f"--{f.name.replace('_', '-')}" in out and f"STUDIO_{f.name.upper()}" in out
            assert " ".join(f.metadata["help"].split()[:3]) in " ".join(out.split())
    assert "--no-worker" in out and "--on-spaces" not in out and "STUDIO_ON_SPACES" not in out


def test_secrets_stay_out_of_the_config_repr(monkeypatch):
    monkeypatch.delenv("STUDIO_AUTH", raising=False)
    config = parse_args(["--auth", "alice:pw-hidden", "--admin-token", TOKEN, "--secret", "key-hidden",
                         "--database-url", "sqlite:///x.db"])
    assert config.admin_token == TOKEN and config.secret == "key-hidden"
    assert all(word not in repr(config) for word in ("pw-hidden", TOKEN, "key-hidden", "sqlite:///x.db"))


def test_browser_secret_is_kept_in_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("STUDIO_SECRET", raising=False)
    first = browser_secret(tmp_path / "data", parse_args([]).secret)
    assert first == browser_secret(tmp_path / "data") and len(first) >= 24
    assert (tmp_path / "data" / "app-secret").stat().st_mode & 0o077 == 0
    monkeypatch.setenv("STUDIO_SECRET", "from-env")
    assert browser_secret(tmp_path / "data", parse_args([]).secret) == "from-env"


def test_studios_starting_together_agree_on_one_secret(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.delenv("STUDIO_SECRET", raising=False)
    with ThreadPoolExecutor(8) as pool:
        got = set(pool.map(lambda _: browser_secret(tmp_path / "shared"), range(32)))
    assert len(got) == 1 and got == {(tmp_path / "shared" / "app-secret").read_text().strip()}
    assert [p.name for p in (tmp_path / "shared").iterdir()] == ["app-secret"]  # no temp files left



SHARING_VARIABLES = ("STUDIO_AUTH", "STUDIO_AUTH_FILE", "STUDIO_ADMINS", "STUDIO_ADMIN_TOKEN", "STUDIO_ALLOW_MODELS",
                     "STUDIO_PAIRS_PER_MINUTE", "STUDIO_VOTES_PER_MINUTE", "STUDIO_TRAIN_ANNOTATORS", "SPACE_ID",
                     "SYSTEM", "STUDIO_HOST", "STUDIO_MODEL")
TOKEN = "a-token-of-enough-length"


@pytest.fixture
def clean_env(monkeypatch):
    for name in SHARING_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_sharing_flags(clean_env, tmp_path):
    logins = tmp_path / "logins.txt"
    logins.write_text("# team\ncarol:pw-c\n\n")
    config = parse_args(["--auth", "alice:pw-a", "--auth", "bob:pw:b", "--auth-file", str(logins),
                         "--admins", "alice,carol", "--admin-token", TOKEN, "--pairs-per-minute", "5",
                         "--votes-per-minute", "0", "--train-annotators", "alice, bob"])
    assert config.logins == (("alice", "pw-a"), ("bob", "pw:b"), ("carol", "pw-c"))
    assert config.admins == ("alice", "carol") and config.admin_token == TOKEN
    assert (config.rate_limits().pairs.limit, config.rate_limits().votes.limit) == (5, 0)
    assert config.train_annotators == ("alice", "bob") and not config.public and not config.on_spaces


def test_sharing_variables(clean_env, tmp_path):
    logins = tmp_path / "logins.txt"
    logins.write_text("carol:pw-c\n")
    for name, value in {"STUDIO_AUTH": "alice:pw-a, bob:pw-b", "STUDIO_AUTH_FILE": str(logins),
                        "STUDIO_ADMINS": "carol", "STUDIO_ADMIN_TOKEN": TOKEN, "STUDIO_HOST": "0.0.0.0",
                        "STUDIO_MODEL": "org/model", "STUDIO_ALLOW_MODELS": "embedded,org/model",
                        "SPACE_ID": "someone/studio", "SYSTEM": "spaces"}.items():
        clean_env.setenv(name, value)
    config = parse_args([])
    assert [user for user, _ in config.logins] == ["alice", "bob", "carol"] and config.admins == ("carol",)
    assert config.on_spaces and config.public and config.allowed_models() == ("embedded", "org/model")
    assert (config.rate_limits().pairs.limit, config.rate_limits().votes.limit) == (30, 120)  # public defaults
    assert parse_args(["--auth", "dave:pw-d", "--admins", "dave"]).logins == (("dave", "pw-d"), ("carol", "pw-c"))


@pytest.mark.parametrize("argv, env, message", [
    (["--auth-file", "{bad}"], {}, "bad.txt line 3: expected user:password"),
    (["--auth", "alice"], {}, "--auth: expected user:password"),
    ([], {"STUDIO_AUTH": "alice:pw,bob"}, "STUDIO_AUTH: expected user:password"),
    (["--auth-file", "{missing}"], {}, "cannot read the auth file"),
    (["--admins", "alice"], {}, "nobody can sign in here"),
    (["--admin-token", "short"], {}, "at least 16 characters"),
    (["--host", "0.0.0.0", "--model", "org/model"], {}, "model 'org/model' is not allowed"),
    (["--model", "org/model"], {"SPACE_ID": "someone/studio", "SYSTEM": "spaces"}, "bound to a Space"),
    (["--votes-per-minute", "-1"], {}, "votes_per_minute must be a whole number at least 0"),
    (["--local-admin", "--host", "0.0.0.0"], {}, "local_admin makes everyone who reaches the studio an admin"),
    (["--allowed-origins", "evil.example"], {}, "is not an origin like https://example.org"),
])
def test_bad_sharing_settings_stop_the_start(clean_env, capsys, tmp_path, argv, env, message):
    bad = tmp_path / "bad.txt"
    bad.write_text("alice:pw\n# ok\nbob\n")
    argv = [a.format(bad=bad, missing=tmp_path / "missing.txt") for a in argv]
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "pw" not in err  # a login's password is never echoed


def test_an_empty_secret_file_is_refused_instead_of_each_process_inventing_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("STUDIO_SECRET", raising=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "app-secret").write_text("")  # what a crash before fsync can leave
    with pytest.raises(SystemExit, match="holds no usable secret"):
        browser_secret(tmp_path / "data")
    assert (tmp_path / "data" / "app-secret").read_text() == ""  # left for the operator to decide


def test_the_secret_is_fsynced_before_it_is_linked_into_place(tmp_path, monkeypatch):
    import os

    synced, linked = [], []
    real_fsync, real_link = os.fsync, os.link
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(os, "link", lambda a, b: (linked.append(len(synced)), real_link(a, b))[1])
    browser_secret(tmp_path / "data")
    assert linked == [1] and len(synced) == 2  # the file before the link, the directory after it
