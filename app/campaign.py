"""`Campaign`: a labeling campaign, the list of prompts an admin wants labeled, offered fewest votes first.

Annotators are offered, after each vote, the campaign prompt with the fewest votes so far (ties in the admin's
order), so votes spread evenly over the list. The list lives in memory (a restart ends the campaign); the counts
come from storage (`Repository.votes_per_prompt`), so votes from every process count. Who may set a campaign is
`Studio`'s business; this module knows only the repository's query.
"""

from __future__ import annotations

MAX_CAMPAIGN_PROMPTS = 1000


class Campaign:
    def __init__(self, repo):
        self.repo = repo
        self.prompts: list[str] = []

    def set(self, prompts: list[str]) -> list[str]:
        """Make the (already checked) `prompts` the campaign, duplicates dropped; [] ends it."""
        chosen = list(dict.fromkeys(prompts))
        if len(chosen) > MAX_CAMPAIGN_PROMPTS:
            raise ValueError(f"a campaign takes at most {MAX_CAMPAIGN_PROMPTS} prompts; got {len(chosen)}")
        self.prompts = chosen
        return chosen

    def order(self) -> list[str]:
        """The campaign's prompts, fewest votes first (ties in the admin's order); [] with no campaign."""
        if not self.prompts:
            return []
        counts = self.repo.votes_per_prompt(self.prompts)
        return sorted(self.prompts, key=lambda text: counts[text])

    def rows(self, every_prompt: bool) -> list[dict]:
        """Votes per prompt: the campaign's, or with `every_prompt` every stored prompt that has votes too."""
        counts = self.repo.votes_per_prompt(self.prompts) if not every_prompt else {
            **self.repo.votes_per_prompt(self.prompts), **self.repo.votes_per_prompt()}
        campaign = set(self.prompts)
        return [{"prompt": text, "votes": n, "campaign": "yes" if text in campaign else ""}
                for text, n in counts.items()]
