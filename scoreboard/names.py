"""What a board name and a user id may be (shared by the API and the broadcaster)."""

from __future__ import annotations

import re

BOARD_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
BOARD_RULE = "must be 1 to 64 letters, digits, '_', '.', ':' or '-'"
DEFAULT_BOARD = "global"
