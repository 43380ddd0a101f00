"""`python -m app`: flags and STUDIO_* environment variables → `StudioConfig` → services → the browser studio.

    python -m app                                   # embedded model, data in ./studio-data, http://127.0.0.1:7860
    python -m app --model org/sd-model --device cuda --data-dir /data --host 0.0.0.0
    python -m app --train-every 4 --objective discounted --gamma 0.9 --train-steps 40
    python -m app --host 0.0.0.0 --auth-file logins.txt --admins alice   # a shared studio (docs/security.md)

Every setting has a flag and a variable (`--train-every`, `STUDIO_TRAIN_EVERY`), both derived from the settings
dataclasses and listed below; a flag wins over its variable, and both are checked the same way. The training
settings are the ones `python -m alignment.worker` takes. On a Hugging Face Space (SPACE_ID is set) people sign in
with their Hugging Face account. This is the only place where the app reads flags and the environment.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
from pathlib import Path

import gradio as gr

from app.access import parse_auth_entry
from app.config import PARTS, StudioConfig
from settings_cli import CommandLine

SECRET_FILE = "app-secret"  # in the data dir: keeps anonymous annotator ids valid across restarts
MIN_SECRET_CHARS = 16


def command_line() -> CommandLine:
    return CommandLine(*PARTS, prog="python -m app", description=__doc__)


def parse_args(argv: list[str] | None = None) -> StudioConfig:
    """The studio's settings from `argv` and the environment; a bad one exits with code 2 and one error line."""
    parsed = command_line().parse(argv)
    try:  # checked here too, so that a malformed login names the flag or variable it came from
        for entry in parsed.values.get("auth", ()):
            parse_auth_entry(entry, parsed.sources["auth"])
    except ValueError as e:
        parsed.error(str(e))
    return parsed.build(StudioConfig, on_spaces=on_a_space(os.environ))


def on_a_space(environ) -> bool:
    """True on a real Hugging Face Space. Gradio runs the real OAuth only where SYSTEM=spaces; elsewhere its sign-in
    routes are mocked (anyone could sign in as anyone), so SPACE_ID alone turns the sign-in off, and says so."""
    if not environ.get("SPACE_ID"):
        return False
    if environ.get("SYSTEM") != "spaces":
        logging.getLogger("app").warning(
            "SPACE_ID is set but SYSTEM is not 'spaces': this is not a Hugging Face Space, so the Hugging Face "
            "sign-in is off (Gradio would only mock it here); use --auth or --admin-token instead")
        return False
    return True


def browser_secret(data_dir: Path, secret: str | None = None) -> str:
    """The key of the browser-stored annotator id: `secret` (the `secret` setting), or one kept in the data dir.

    The file is written to a temporary name, fsynced, hard-linked into place (atomic, and it never overwrites: the
    first studio's secret is everyone's) and the directory fsynced, so a crash leaves either no file or a whole
    one. A file that is empty or too short (e.g. left by an older version that did not fsync) is refused with
    what to do, rather than each process inventing its own key."""
    if secret:
        return secret
    path = data_dir / SECRET_FILE
    if not path.is_file():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{secrets.token_hex(4)}.tmp")  # one per process: studios may race
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_urlsafe(24).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        dir_fd = os.open(data_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    value = path.read_text().strip()
    if len(value) < MIN_SECRET_CHARS:
        raise SystemExit(f"error: {path} holds no usable secret ({len(value)} characters); delete it to make a new "
                         "one (anonymous annotators then get new ids) or set STUDIO_SECRET")
    return value


def stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # Gradio's launch() closes the server on it; main() then stops the worker


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = parse_args(argv)
    from alignment.families.loader import ModelLoadError, use_threads

    threads = config.torch_threads(os.environ, os.cpu_count())
    use_threads(threads)  # before any thread of the studio does torch work
    if threads is not None:
        logging.getLogger("app").info("torch threads per task: %d", threads)
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
    demo = build_ui(studio, browser_secret=browser_secret(config.data_dir, config.secret))
    logging.getLogger("app").info("%s; rate limits per annotator: %s pairs/min, %s votes/min; %d password logins",
                                  studio.access.describe(), studio.limits.pairs.limit or "no limit",
                                  studio.limits.votes.limit or "no limit", len(config.logins))
    if not studio.access.everyone_admin and not studio.access.admins and studio.access.admin_token is None:
        logging.getLogger("app").info("no admin: %s", studio.access.how_to_unlock())
    try:
        launch(demo, studio, host=config.host, port=config.port, concurrency=config.concurrency,
               auth=list(config.logins) or None, queue_size=config.queue_size, guard=config.guard_policy())
    finally:
        studio.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
