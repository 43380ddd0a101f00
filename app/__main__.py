"""`python -m app`: flags and STUDIO_* environment variables → `StudioConfig` → services → the browser studio.

    python -m app                                   # embedded model, data in ./studio-data, http://127.0.0.1:7860
    python -m app --model org/sd-model --device cuda --data-dir /data --host 0.0.0.0
    python -m app --train-every 4 --objective discounted --gamma 0.9 --train-steps 40
    python -m app --host 0.0.0.0 --auth-file logins.txt --admins alice   # a shared studio (see README)

Every flag has an environment variable (shown in --help); a flag wins over its variable, and both are checked
the same way. On a Hugging Face Space (SPACE_ID is set) people sign in with their Hugging Face account. This is
the only place where flags and the environment are read.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

import gradio as gr

from app.access import parse_auth_entry, read_auth_file
from app.config import OBJECTIVES, PUBLIC_PAIRS_PER_MINUTE, PUBLIC_VOTES_PER_MINUTE, StudioConfig

SECRET_FILE = "app-secret"  # in the data dir: keeps anonymous annotator ids valid across restarts


def env(name: str, default=None):
    value = os.environ.get(name)
    return default if value in (None, "") else value


def parse_args(argv: list[str] | None = None) -> StudioConfig:
    p = argparse.ArgumentParser(prog="python -m app", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=env("STUDIO_MODEL", "embedded"),
                   help="'embedded' (offline, CPU), a hub id or a local diffusers folder [STUDIO_MODEL]")
    p.add_argument("--data-dir", type=Path, default=env("STUDIO_DATA_DIR", "studio-data"),
                   help="database, images and adapters [STUDIO_DATA_DIR, default ./studio-data]")
    p.add_argument("--database-url", default=env("STUDIO_DATABASE_URL"),
                   help="any SQLAlchemy URL instead of SQLite in the data dir [STUDIO_DATABASE_URL]")
    p.add_argument("--host", default=env("STUDIO_HOST", "127.0.0.1"), help="[STUDIO_HOST]")
    p.add_argument("--port", type=int, default=env("STUDIO_PORT", "7860"), help="[STUDIO_PORT]")
    p.add_argument("--device", default=env("STUDIO_DEVICE"), help="cpu, cuda, cuda:N; default auto [STUDIO_DEVICE]")
    p.add_argument("--train-every", type=int, default=env("STUDIO_TRAIN_EVERY", "8"),
                   help="new votes that trigger a training run [STUDIO_TRAIN_EVERY, default 8]")
    p.add_argument("--train-interval", type=float, default=env("STUDIO_TRAIN_INTERVAL"),
                   help="also train every this many seconds when there are new votes [STUDIO_TRAIN_INTERVAL]")
    p.add_argument("--min-votes", type=int, default=env("STUDIO_MIN_VOTES", "4"),
                   help="preference votes needed before the first run [STUDIO_MIN_VOTES]")
    p.add_argument("--no-worker", action="store_true", default=env("STUDIO_NO_WORKER") == "1",
                   help="do not train in this process (run `python -m alignment.worker` instead) [STUDIO_NO_WORKER=1]")
    p.add_argument("--objective", choices=OBJECTIVES, default=env("STUDIO_OBJECTIVE", "discounted"),
                   help="[STUDIO_OBJECTIVE]")
    p.add_argument("--gamma", type=float, default=env("STUDIO_GAMMA"), help="temporal discount [STUDIO_GAMMA]")
    p.add_argument("--beta", type=float, default=env("STUDIO_BETA"), help="DPO beta [STUDIO_BETA]")
    p.add_argument("--lr", type=float, default=env("STUDIO_LR"), help="learning rate [STUDIO_LR]")
    p.add_argument("--train-steps", type=int, default=env("STUDIO_TRAIN_STEPS"),
                   help="optimiser steps per run [STUDIO_TRAIN_STEPS]")
    p.add_argument("--concurrency", type=int, default=env("STUDIO_CONCURRENCY", "8"),
                   help="events served at once; generation always queues on one slot [STUDIO_CONCURRENCY]")
    s = p.add_argument_group("sharing and security (see README, 'Sharing and security')")
    s.add_argument("--auth", action="append", metavar="USER:PASSWORD",
                   help="a password login, repeatable; votes are recorded under USER "
                        "[STUDIO_AUTH: entries separated by commas]")
    s.add_argument("--auth-file", type=Path, default=env("STUDIO_AUTH_FILE"),
                   help="one USER:PASSWORD per line; blank lines and # comments are skipped [STUDIO_AUTH_FILE]")
    s.add_argument("--admins", default=env("STUDIO_ADMINS", ""), metavar="NAME,NAME",
                   help="signed-in names that may train, change settings, make live, roll back, import, export "
                        "[STUDIO_ADMINS]")
    s.add_argument("--admin-token", default=env("STUDIO_ADMIN_TOKEN"), metavar="TOKEN",
                   help="a secret (16+ characters) that unlocks admin controls in the UI and the API; prefer the "
                        "variable, a flag shows in the process list [STUDIO_ADMIN_TOKEN]")
    s.add_argument("--pairs-per-minute", type=int, default=env("STUDIO_PAIRS_PER_MINUTE"),
                   help=f"generated pairs per annotator per minute; 0 = no limit [STUDIO_PAIRS_PER_MINUTE, default "
                        f"{PUBLIC_PAIRS_PER_MINUTE} when public, no limit on localhost]")
    s.add_argument("--votes-per-minute", type=int, default=env("STUDIO_VOTES_PER_MINUTE"),
                   help=f"votes per annotator per minute; 0 = no limit [STUDIO_VOTES_PER_MINUTE, default "
                        f"{PUBLIC_VOTES_PER_MINUTE} when public, no limit on localhost]")
    s.add_argument("--allow-models", default=env("STUDIO_ALLOW_MODELS"), metavar="ID,ID",
                   help="models a public studio may load [STUDIO_ALLOW_MODELS, default: embedded when public, "
                        "any on localhost]")
    s.add_argument("--train-annotators", default=env("STUDIO_TRAIN_ANNOTATORS"), metavar="NAME,NAME",
                   help="train only on these annotators' votes (the Train tab changes it) [STUDIO_TRAIN_ANNOTATORS]")
    a = p.parse_args(argv)
    try:
        return StudioConfig(model=a.model, data_dir=a.data_dir, database_url=a.database_url, host=a.host,
                            port=a.port, device=a.device, train_every=a.train_every,
                            train_interval_s=a.train_interval, min_votes=a.min_votes, worker=not a.no_worker,
                            objective=a.objective, gamma=a.gamma, beta=a.beta, lr=a.lr, train_steps=a.train_steps,
                            concurrency=a.concurrency, on_spaces=bool(env("SPACE_ID")), auth=logins(a),
                            admins=a.admins, admin_token=a.admin_token, pairs_per_minute=a.pairs_per_minute,
                            votes_per_minute=a.votes_per_minute, allow_models=a.allow_models,
                            train_annotators=a.train_annotators)
    except ValueError as e:
        p.error(str(e))


def logins(a: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """--auth entries (else STUDIO_AUTH's) and the --auth-file's lines; ValueError names a malformed one."""
    if a.auth is not None:
        entries = [parse_auth_entry(entry) for entry in a.auth]
    else:
        entries = [parse_auth_entry(entry, "STUDIO_AUTH") for entry in (env("STUDIO_AUTH") or "").split(",")
                   if entry.strip()]
    if a.auth_file is not None:
        entries += read_auth_file(a.auth_file)
    return tuple(entries)


def browser_secret(data_dir: Path) -> str:
    """The key of the browser-stored annotator id: STUDIO_SECRET, or one kept in the data dir."""
    if env("STUDIO_SECRET"):
        return env("STUDIO_SECRET")
    path = data_dir / SECRET_FILE
    if not path.is_file():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{secrets.token_hex(4)}.tmp")  # one per process: studios may race
        tmp.write_text(secrets.token_urlsafe(24))
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)  # atomic and never overwrites: the first studio's secret is everyone's
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


def stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # Gradio's launch() closes the server on it; main() then stops the worker


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = parse_args(argv)
    from alignment.families.loader import ModelLoadError
    from app.studio import Studio, StudioError
    from storage import StorageError
    from app.ui import build_ui, launch

    try:
        studio = Studio.open(config)
    except (ModelLoadError, StudioError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if gr.NO_RELOAD:  # reload mode re-runs this module: one worker and one follower only
        studio.start()
    signal.signal(signal.SIGTERM, stop_on_sigterm)  # `docker stop`: shut down like Ctrl-C, worker included
    demo = build_ui(studio, browser_secret=browser_secret(config.data_dir))
    logging.getLogger("app").info("%s; rate limits per annotator: %s pairs/min, %s votes/min; %d password logins",
                                  studio.access.describe(), studio.limits.pairs.limit or "no limit",
                                  studio.limits.votes.limit or "no limit", len(config.auth))
    try:
        launch(demo, studio, host=config.host, port=config.port, concurrency=config.concurrency,
               auth=list(config.auth) or None)
    finally:
        studio.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
