"""Every Redis key name, in one place; nothing else spells a key.

All keys of a deployment carry one hash tag, ``{<prefix>}``, so that every
script's keys hash to the same slot and each script runs unchanged on Redis
Cluster. The prefix separates deployments and test runs sharing a server.
Sharding the stream by user (several tags) is the documented next step when
one slot is no longer enough; only this module and the worker's stream list
would change.
"""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.tag = "{" + prefix + "}"

    # The hand-off from ingest to workers.
    @property
    def stream(self) -> str:
        return f"{self.tag}:stream:increments"

    def action_token(self, nonce: str) -> str:
        """Holds the user id an unused action token was issued to; gone once used."""
        return f"{self.tag}:atok:{nonce}"

    def revoked_jti(self, jti: str) -> str:
        """Exists while a revoked access token would still be unexpired."""
        return f"{self.tag}:revoked:{jti}"

    def banned(self, user_id: str) -> str:
        return f"{self.tag}:banned:{user_id}"

    def flagged(self, user_id: str) -> str:
        return f"{self.tag}:flagged:{user_id}"

    def event(self, event_id: str) -> str:
        """Idempotency marker of an accepted event id (expires after the dedup TTL)."""
        return f"{self.tag}:event:{event_id}"

    def user_rate(self, limit_name: str, user_id: str) -> str:
        return f"{self.tag}:rate:{limit_name}:user:{user_id}"

    def ip_rate(self, limit_name: str, address: str) -> str:
        return f"{self.tag}:rate:{limit_name}:ip:{address}"
