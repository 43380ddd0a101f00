"""The studio's API endpoints that have no widget of their own (`gr.api`), for `gradio_client` and scripts.

    /identity        a signed identity for an API client (ask once, pass it to /new_pair and /vote)
    /vote            pair id, choice, identity -> acknowledgement (after the commit); only on a pair served to you
    /status          votes, live adapter, worker state (a failed run's error text for admins only)
    /whoami          who the server says you are, and whether you are an admin
    /train_now       admins: ask the worker for a run now
    /update_settings admins: objective settings, train_every, train_annotators (a dict)
    /make_live       admins: 'base', 'v3' or 3
    /rollback        admins: back to the previous live version
    /import_votes    admins: a Pick-a-Pic Parquet file uploaded with handle_file(...)
    /blind_trial     prompt, seed (optional), identity -> {trial, left, right, prompt, seed, adapter_version,
                     expires_in_s}: base and the live adapter from one seed, sides shuffled; which side is which
                     stays on the server
    /blind_choice    trial, choice (left, right, tie), identity -> the outcome and your running win rate of that
                     adapter over the base with its 95 % interval (as the Compare tab's blind A/B gives)

Every admin endpoint takes an optional `admin_token` (a wrong one is logged and throttled per address). Who votes
comes from the request (password login, Spaces sign-in) or from the identity the server issued and signed; a
client cannot choose another's. `Studio` decides and logs refusals. A blind trial an API client opens waits in
`app.blind.PendingTrials` (its owner only, answered once, bounded, expiring) and is recorded by
`Studio.record_blind`, the Compare tab's path, with its rate limits. Knows Gradio, `Studio`, `app.session` and
`app.blind`.
"""

from __future__ import annotations

import dataclasses

import gradio as gr
from gradio.data_classes import FileData
from gradio.processing_utils import save_pil_to_cache
from gradio.utils import get_upload_folder
from PIL import Image

from app.access import AnonymousIds
from app.blind import PendingTrials
from app.session import actor_of, address_of, annotator_of, uploaded_file, user_errors, with_identity
from app.studio import BlindTrial, Studio
from app.tabs.compare import parse_version, version_label
from app.tabs.label import GPU


def register(studio: Studio, ids: AnonymousIds) -> None:
    """Add the endpoints to the Blocks being built; `ids` signs the identities `/identity` issues."""
    pending: PendingTrials[BlindTrial] = PendingTrials()

    @user_errors
    def identity(request: gr.Request) -> dict:
        """A new anonymous identity, signed by this studio: pass it as `identity` to /new_pair, /vote and /whoami.
        Signed-in clients (password login) need none. New identities per client address are limited."""
        studio.limits.identities.check(address_of(request) or "unknown")
        token = ids.mint()
        return {"identity": token, "annotator": ids.verify(token)}

    @user_errors
    def vote(pair_id: int, choice: str, identity: str = "", request: gr.Request = None,
             profile: gr.OAuthProfile | None = None) -> dict:
        """Record a vote (left, right, tie, both_bad, skip) on a pair served to you; answers after the commit."""
        acting = with_identity(None, identity, ids)
        return studio.vote(pair_id, choice, annotator=annotator_of(acting, request, profile),
                           address=address_of(request))

    @user_errors
    def status(admin_token: str = "", request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> dict:
        """Votes, live adapter version, worker state; a failed run's error text for admins only."""
        return studio.status(admin=studio.is_admin(actor_of(None, request, profile, admin_token)))

    @user_errors
    def whoami(admin_token: str = "", identity: str = "", request: gr.Request = None,
               profile: gr.OAuthProfile | None = None) -> dict:
        """The annotator the server records your votes under, whether you signed in, whether you are an admin."""
        actor = actor_of(with_identity(None, identity, ids), request, profile, admin_token)
        return {"annotator": actor.name or None, "signed_in": actor.authenticated, "admin": studio.is_admin(actor)}

    @user_errors
    def train_now(admin_token: str = "", request: gr.Request = None,
                  profile: gr.OAuthProfile | None = None) -> dict:
        """Admins: ask the worker for a training run now; started is false when one is already going."""
        return {"started": studio.train_now(actor=actor_of(None, request, profile, admin_token))}

    @user_errors
    def update_settings(settings: dict, admin_token: str = "", request: gr.Request = None,
                        profile: gr.OAuthProfile | None = None) -> dict:
        """Admins: change training settings for the next runs (objective, gamma, beta, lr, train_steps,
        train_every, train_annotators); returns all settings."""
        if not isinstance(settings, dict) or "actor" in settings:
            raise gr.Error("settings must be a JSON object of setting names and values, e.g. {\"gamma\": 0.9}")
        return studio.update_settings(actor=actor_of(None, request, profile, admin_token), **settings)

    @user_errors
    def make_live(version: str, admin_token: str = "", request: gr.Request = None,
                  profile: gr.OAuthProfile | None = None) -> dict:
        """Admins: make a version live ('base', 'v3' or 3); its file must match the hash in the database."""
        live = studio.make_live(parse_version(version), actor=actor_of(None, request, profile, admin_token))
        return {"live_adapter_version": live, "live": version_label(live)}

    @user_errors
    def rollback(admin_token: str = "", request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> dict:
        """Admins: retire the live adapter and go back to the previous live version (or the base)."""
        live = studio.rollback(actor=actor_of(None, request, profile, admin_token))
        return {"live_adapter_version": live, "live": version_label(live)}

    @user_errors
    def import_votes(file: FileData, admin_token: str = "", request: gr.Request = None,
                     profile: gr.OAuthProfile | None = None) -> dict:
        """Admins: import a Pick-a-Pic Parquet file (upload it with gradio_client.handle_file); all rows or none."""
        actor = actor_of(None, request, profile, admin_token)
        studio.require_admin(actor, "import")  # before looking at the file
        return {"imported": studio.import_file(uploaded_file(file), actor=actor)}

    @user_errors
    def blind_trial(prompt: str, seed: str = "", identity: str = "", request: gr.Request = None,
                    profile: gr.OAuthProfile | None = None) -> dict:
        """Base vs. the live adapter from one seed (optional; empty = random), sides shuffled: returns the trial id
        to answer with /blind_choice, the left and right images, the prompt, the seed and the adapter's version.
        Which side is the adapter stays on the server. A trial is yours alone, answered once, and expires."""
        annotator = annotator_of(with_identity(None, identity, ids), request, profile)
        pending.check_room(annotator)  # before rendering: a client that never answers costs no images
        trial = studio.blind_trial(prompt, seed, annotator=annotator, address=address_of(request))
        trial_id = pending.add(dataclasses.replace(trial, left=None, right=None), annotator)  # no images kept
        return {"trial": trial_id, "left": image_file(trial.left), "right": image_file(trial.right),
                "prompt": trial.prompt, "seed": trial.seed, "adapter_version": trial.adapter_version,
                "expires_in_s": pending.ttl_s}

    @user_errors
    def blind_choice(trial: str, choice: str, identity: str = "", request: gr.Request = None,
                     profile: gr.OAuthProfile | None = None) -> dict:
        """Answer your blind trial: left, right or tie. Stored apart from the training votes; returns the outcome
        (adapter, base or tie) and your running win rate of that adapter over the base with its 95 % interval."""
        annotator = annotator_of(with_identity(None, identity, ids), request, profile)
        with pending.answering(trial, annotator) as open_trial:  # stays open when recording fails
            answer = studio.record_blind(open_trial, choice, annotator=annotator, address=address_of(request))
        return {"trial": str(trial).strip(), **answer}

    gr.api(identity, api_name="identity", concurrency_limit=None)
    gr.api(vote, api_name="vote")
    gr.api(status, api_name="status", concurrency_limit=None)
    gr.api(whoami, api_name="whoami", concurrency_limit=None)
    for fn in (train_now, update_settings, make_live, rollback, import_votes):
        gr.api(fn, api_name=fn.__name__)
    gr.api(blind_trial, api_name="blind_trial", **GPU)
    gr.api(blind_choice, api_name="blind_choice")


def image_file(image: Image.Image) -> FileData:
    """`image` as a PNG in Gradio's cache (deleted with the other cached files), for a client to download."""
    return FileData(path=save_pil_to_cache(image, cache_dir=get_upload_folder(), format="png"))
