"""`python -m app`: flags and STUDIO_* environment variables → `StudioConfig` → services → the browser studio.

    python -m app                                   # embedded model, data in ./studio-data, http://127.0.0.1:7860
    python -m app --model org/sd-model --device cuda --data-dir /data --host 0.0.0.0
    python -m app --train-every 4 --objective discounted --gamma 0.9 --train-steps 40

Every flag has an environment variable (shown in --help); a flag wins over its variable, and both are checked
the same way. This is the only place where flags and the environment are read.
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

from app.config import OBJECTIVES, StudioConfig

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
    a = p.parse_args(argv)
    try:
        return StudioConfig(model=a.model, data_dir=a.data_dir, database_url=a.database_url, host=a.host,
                            port=a.port, device=a.device, train_every=a.train_every,
                            train_interval_s=a.train_interval, min_votes=a.min_votes, worker=not a.no_worker,
                            objective=a.objective, gamma=a.gamma, beta=a.beta, lr=a.lr, train_steps=a.train_steps,
                            concurrency=a.concurrency)
    except ValueError as e:
        p.error(str(e))


def browser_secret(data_dir: Path) -> str:
    """The key of the browser-stored annotator id: STUDIO_SECRET, or one kept in the data dir."""
    if env("STUDIO_SECRET"):
        return env("STUDIO_SECRET")
    path = data_dir / SECRET_FILE
    if not path.is_file():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(secrets.token_urlsafe(24))
        tmp.chmod(0o600)
        os.replace(tmp, path)
    return path.read_text().strip()


def stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # Gradio's launch() closes the server on it; main() then stops the worker


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = parse_args(argv)
    from alignment.models import ModelLoadError
    from app.studio import Studio, StudioError
    from storage import StorageError
    from app.ui import build_ui, launch

    try:
        studio = Studio.open(config)
    except (ModelLoadError, StudioError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if gr.NO_RELOAD and studio.worker is not None:  # reload mode re-runs this module: one worker only
        studio.worker.start()
    signal.signal(signal.SIGTERM, stop_on_sigterm)  # `docker stop`: shut down like Ctrl-C, worker included
    demo = build_ui(studio, browser_secret=browser_secret(config.data_dir))
    try:
        launch(demo, studio, host=config.host, port=config.port, concurrency=config.concurrency)
    finally:
        studio.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
