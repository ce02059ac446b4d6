"""Doctor check: the members of each multi-member backend hold the same keys.

Compared per member, all computed inside each HSM (:func:`hsm.replicate.check_values`): the set
of key labels (every version ``<id>#v<n>`` is its own label), each key's check value (AES-ECB of
a zero block, first 3 bytes), and each lifecycle object (``CKO_DATA``, application "xksproxy")
by a digest of its value. A key missing on a member, or the same label with different key
material, is a FAIL naming the key and the member, with the command that repairs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xksproxy.admin.doctor import FAIL, OK

if TYPE_CHECKING:
    from hsm import HsmConfig


def check_member_drift(report: Any, config: Any) -> None:

    for backend, names in config.backends.items():
        if len(names) < 2:
            continue
        members = config.members(backend)
        values = _check_values(report, backend, members)
        if values is None:
            continue  # that backend is reported; the others are still compared
        labels = sorted(set().union(*(v.keys() for v in values.values())))
        problems: list[str] = []
        fixes: list[str] = []
        for label in labels:
            have = {n: v[label] for n, v in values.items() if label in v}
            missing = [n for n in names if n not in have]
            what = "lifecycle object" if label.startswith("data:") else "key"
            shown = label.removeprefix("data:")
            if missing:
                source = next(iter(have))
                problems.append(f"{what} {shown} missing on {', '.join(missing)}")
                fixes.append(f"xksproxy keys replicate --from {source} --to {missing[0]} {shown}")
            elif len(set(have.values())) > 1:
                problems.append(f"{what} {shown} differs between members (check values)")
        if problems:
            report.add(f"members {backend}", FAIL, "; ".join(problems)[:300], "; ".join(fixes[:3]))
        else:
            keys = sum(1 for label in labels if not label.startswith("data:"))
            report.add(
                f"members {backend}",
                OK,
                f"{len(names)} members hold the same {keys} key(s) (check values match)",
            )


def _check_values(
    report: Any, backend: str, members: list[HsmConfig]
) -> dict[str, dict[str, str | None]] | None:
    """Each member's key check values, or None (reported) when a member cannot be read."""
    from hsm.errors import HsmError
    from hsm.replicate import check_values

    values: dict[str, dict[str, str | None]] = {}
    for m in members:
        try:
            values[m.name] = check_values(m)
        except HsmError as exc:
            report.add(f"members {backend}", FAIL, f"{m.name}: {exc.message[:150]}",
                       "bring the member back, then run doctor again")  # fmt: skip
            return None
    return values
