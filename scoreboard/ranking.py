"""How a board is ordered and ranked, as pure functions.

Order: higher score first; equal scores by who reached that score first, then
by user id. Redis orders a ZSET by score, then by member bytes, so a board is
stored with the score negated (ascending order = highest first) and the member
``<reached ms, 13 digits>|<user id>`` (ascending = reached first, then id).
``ZRANK`` is then the deterministic position, and the whole order is Redis's
own: paging, around-me and ranks need no sorting in Python.

Ranks: ``competition`` ("1, 1, 3": equal scores share a rank, the next rank
skips) or ``ordinal`` (every position its own rank, ties broken as above),
chosen by the ``RANK_TIES`` setting.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson

REACHED_DIGITS = 13
RANK_MODES = ("competition", "ordinal")


def epoch_ms(moment: datetime) -> int:
    """Whole milliseconds since the epoch (rounded: ``timestamp()`` is a float)."""
    return round(moment.timestamp() * 1000)


def encode_member(reached_ms: int, user_id: str) -> str:
    return f"{reached_ms:0{REACHED_DIGITS}d}|{user_id}"


def decode_member(member: str) -> tuple[int, str]:
    reached, _, user_id = member.partition("|")
    return int(reached), user_id


def zset_score(total: int) -> int:
    return -total


def total_of(zscore: float) -> int:
    return -int(zscore)


@dataclass(frozen=True)
class Entry:
    rank: int
    user_id: str
    username: str
    score: int

    def as_json(self) -> dict[str, object]:
        return {"rank": self.rank, "user_id": self.user_id, "username": self.username,
                "score": self.score}


def ranks(scores: Sequence[int], *, first_position: int, first_competition_rank: int,
          mode: str) -> list[int]:
    """Ranks of consecutive board entries, starting at 0-based ``first_position``.

    ``first_competition_rank`` is 1 + the number of entries with a strictly
    higher score than the first one (only used in ``competition`` mode).
    """
    result: list[int] = []
    for index, score in enumerate(scores):
        if mode == "ordinal":
            result.append(first_position + index + 1)
        elif index == 0:
            result.append(first_competition_rank)
        elif score == scores[index - 1]:
            result.append(result[-1])
        else:
            result.append(first_position + index + 1)
    return result


def totals_by_user(zrange_with_scores: Sequence[tuple[str, float]]) -> dict[str, int]:
    """``ZRANGE ... WITHSCORES`` of a board as user id -> total."""
    return {decode_member(member)[1]: total_of(zscore) for member, zscore in zrange_with_scores}


def encode_cursor(total: int, member: str) -> str:
    """An opaque page cursor: the last entry's place in the order."""
    return base64.urlsafe_b64encode(orjson.dumps([total, member])).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[int, str]:
    """``ValueError`` for anything that is not a cursor this service made."""
    try:
        total, member = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        decode_member(member)
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        raise ValueError("cursor is not valid") from None
    if not isinstance(total, int) or not isinstance(member, str) or "|" not in member:
        raise ValueError("cursor is not valid")
    return total, member
