"""Compile a key store's policy (its Cedar file plus translated deny rules) once per (re)load.

Why at load: parsing is the expensive part of a Cedar decision (measured here: ~320 us per call
with the text passed each time, ~75 us with a reused ``PolicySet``), and a policy that does not
parse or does not fit the schema must stop the start or the reload with a message saying where
— never be discovered by the first request.

Checks, in order, each a :class:`PolicyError` naming ``file:line``:
1. the file is readable UTF-8;
2. every policy parses (the first one that does not is named by its line);
3. the whole set validates against the shipped schema (:mod:`.model`): unknown entity types,
   actions, context attributes, type errors;
4. no templates (nothing links them: they would silently never apply);
5. ``@id`` annotations are unique (they are what the logs name).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xksproxy.authz import legacy, model
from xksproxy.authz.source import Segment, segments


class PolicyError(Exception):
    """A policy that cannot be used; ``option`` is the config option at fault (relative to the
    key store: ``policy`` or ``deny[2].principal``), ``message`` says where and what."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option
        self.message = message


@dataclass(frozen=True, eq=False)
class CompiledPolicy:
    """A key store's policy, ready for decisions (immutable; a reload builds a new one).

    Equality is by source (file and text), so a reload that changes nothing compares equal.
    """

    path: Path | None
    """The policy file (None: only translated deny rules)."""
    text: str
    """The Cedar text decided on: the file's text, then the translated deny rules."""
    ids: Mapping[str, str]
    """Cedar's policy id (``policy<position>``) -> the id the logs name: the ``@id`` annotation,
    else the Cedar id."""
    order: Mapping[str, int]
    """Cedar's policy id -> its position (the first matching forbid is the one reported)."""
    permits: int
    """How many ``permit`` policies (none: Cedar denies every request; doctor warns)."""
    policy_set: Any = field(repr=False)
    """``cedarpy.PolicySet``, parsed once."""
    entities: Any = field(repr=False)
    """``cedarpy.Entities`` (none: every attribute is in the request), parsed once."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompiledPolicy):
            return NotImplemented
        return (self.path, self.text) == (other.path, other.text)

    def __hash__(self) -> int:
        return hash((self.path, self.text))

    def name(self, cedar_ids: Sequence[str]) -> str | None:
        """The reported id of the first (in file order) of ``cedar_ids``; None if empty."""
        if not cedar_ids:
            return None
        first = min(cedar_ids, key=lambda i: self.order.get(i, len(self.order)))
        return self.ids.get(first, first)


def _where(path: Path | None, file_segs: list[Segment], index: int) -> str:
    """Policy ``index`` as an operator finds it: ``FILE:LINE``, or the translated deny rule."""
    if index < len(file_segs):
        return f"{path}:{file_segs[index].line}"
    return f"the translated [[keystore.deny]] rules (policy {index - len(file_segs) + 1})"


def compile_policy(
    path: Path | None, deny_rules: Sequence[tuple[str, Mapping[str, str]]] = ()
) -> CompiledPolicy:
    """Read, parse and validate ``path`` plus ``deny_rules`` (name, fields) into handles."""
    import cedarpy  # deferred: only stores with a policy load cedarpy

    file_text = ""
    if path is not None:
        try:
            file_text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError("policy", f"{path}: cannot read ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise PolicyError("policy", f"{path}: not UTF-8 text") from None
    for i, (name, fields) in enumerate(deny_rules):
        for f, pattern in fields.items():
            why = legacy.unsupported_glob(pattern)
            if why:
                raise PolicyError(f"deny[{i}].{f}", f"rule {name!r}: {why}")
    file_segs = segments(file_text)
    text = file_text
    if deny_rules:
        text += "\n" + legacy.translate(deny_rules, with_permit=path is None)
    try:
        policy_set = cedarpy.PolicySet.from_str(text)
    except ValueError as exc:
        raise PolicyError("policy", _parse_failure(path, file_segs, str(exc))) from None
    doc = json.loads(cedarpy.policies_to_json_str(text))
    for cedar_id in doc.get("templates") or {}:
        raise PolicyError(
            "policy",
            f"{_where(path, file_segs, int(cedar_id.removeprefix('policy')))}: a template "
            "(?principal / ?resource slot) never applies here: write a static policy",
        )
    annotations = doc["staticPolicies"]
    ids: dict[str, str] = {}
    order: dict[str, int] = {}
    seen: dict[str, str] = {}
    permits = 0
    for cedar_id, body in annotations.items():
        position = int(cedar_id.removeprefix("policy"))
        reported = ((body.get("annotations") or {}).get("id")) or cedar_id
        if reported in seen:
            raise PolicyError(
                "policy",
                f"{_where(path, file_segs, position)}: @id({reported!r}) is used twice "
                f"(also at {_where(path, file_segs, int(seen[reported].removeprefix('policy')))}); "
                "the logs name the policy that decided, so ids must be unique",
            )
        seen[reported] = cedar_id
        ids[cedar_id], order[cedar_id] = reported, position
        permits += body.get("effect") == "permit"
    result = cedarpy.validate_policies(text, model.schema())
    if not result.validation_passed:
        err = result.errors[0]
        pos = err.policy_id.removeprefix("policy")
        where = _where(path, file_segs, int(pos)) if pos.isdigit() else f"{path}"
        detail = err.error.replace(f"`{err.policy_id}`", f"`{ids.get(err.policy_id, pos)}`")
        raise PolicyError(
            "policy",
            f"{where}: does not match the xksproxy Cedar schema: {detail} "
            "(see conf/policies/xksproxy.cedarschema)",
        )
    entities = cedarpy.Entities.from_json_str("[]")
    return CompiledPolicy(path, text, ids, order, permits, policy_set, entities)


def _parse_failure(path: Path | None, segs: list[Segment], detail: str) -> str:
    """Which policy of the file does not parse (parsed one by one), with cedarpy's reason."""
    import cedarpy

    for seg in segs:
        try:
            cedarpy.PolicySet.from_str(seg.text)
        except ValueError as exc:
            return f"{path}:{seg.line}: not a valid Cedar policy: {exc}"
    return f"{path}: not valid Cedar: {detail}"
