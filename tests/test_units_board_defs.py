"""Unit tests of board definitions (scoreboard/board_defs.py): actions and their points."""

from __future__ import annotations

import pytest

from scoreboard.board_defs import definition, from_json, parse_actions


def test_board_actions_parse_and_refuse() -> None:
    assert parse_actions([], max_points=100) == (("play", 1),)
    actions = parse_actions(["kill=3", "win=10"], max_points=100)
    board = definition("b1", actions, None, service_max=100)
    assert (board.default_action, board.points_of("win"), board.points_of("x")) \
        == ("kill", 10, None)
    assert from_json("b1", board.to_json()) == board
    for bad in (["kill"], ["kill=0"], ["kill=101"], ["Kill=1"], ["a=1", "a=2"]):
        with pytest.raises(ValueError):
            parse_actions(bad, max_points=100)
    with pytest.raises(ValueError):
        definition("b1", actions, 101, service_max=100)
    with pytest.raises(ValueError):
        definition("no board", actions, None, service_max=100)
