"""Champion and challenger: the roles of a model's versions, and the three commands that change them.

State, per model (registry.Roles, recorded in DIR/<name>/roles.json):
  champion     the version that answers every caller who names no version (and its own callers);
  challenger   None, or a version that also scores `share` of the champion's requests, in shadow:
               its scores are logged beside the champion's and never reach the caller;
  previous     None, or the champion before the last promotion, which `rollback` restores.
A model with no record has its highest version as champion, no challenger and no previous.

Transitions (pure functions: old roles in, new roles out, or a typed refusal and nothing changed):

  command            precondition                                   new roles
  deploy V share     V on disk, V != champion, 0 < share <= 1       challenger = V, share
  promote            challenger set                                 champion = challenger,
                                                                    previous = old champion,
                                                                    challenger cleared
  rollback           previous set                                   champion = previous, previous
                                                                    cleared; the challenger stays
                                                                    unless it is the restored one

A refusal names the model and what is missing. The server (scoring/server.py) writes the new
record to disk first and swaps it into memory second, both under its reload lock.
"""

from __future__ import annotations

from collections.abc import Collection

from scoring.registry import Roles


class UnknownVersion(Exception):
    """The version asked for is not in the registry (NOT_FOUND)."""


class Conflict(Exception):
    """The command does not apply to the model's roles as they stand (FAILED_PRECONDITION)."""


class BadShare(Exception):
    """A challenger's share outside (0, 1] (INVALID_ARGUMENT)."""


def initial(versions: Collection[int]) -> Roles:
    """The roles of a model that has no record: its highest version is champion."""
    assert versions, "a model has at least one version"
    return Roles(champion=max(versions))


def deploy(name: str, roles: Roles, version: int, share: float, on_disk: Collection[int]) -> Roles:
    if version not in on_disk:
        have = ", ".join(str(v) for v in sorted(on_disk))
        raise UnknownVersion(f"model {name!r} has no version {version} in the registry (has {have})")
    if version == roles.champion:
        raise Conflict(f"version {version} of model {name!r} is already the champion; deploy another version")
    if not 0.0 < share <= 1.0:
        raise BadShare(f"share {share} of requests for the challenger must be above 0 and at most 1")
    return Roles(champion=roles.champion, challenger=version, share=share, previous=roles.previous)


def promote(name: str, roles: Roles) -> Roles:
    if roles.challenger is None:
        raise Conflict(f"model {name!r} has no challenger to promote (champion v{roles.champion}); deploy one first")
    return Roles(champion=roles.challenger, previous=roles.champion)


def rollback(name: str, roles: Roles) -> Roles:
    if roles.previous is None:
        raise Conflict(f"model {name!r} has no previous champion to restore (champion v{roles.champion})")
    if roles.challenger == roles.previous:
        return Roles(champion=roles.previous)
    return Roles(champion=roles.previous, challenger=roles.challenger, share=roles.share)
