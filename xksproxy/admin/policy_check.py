"""``xksproxy doctor``'s Cedar policy rows: what each key store's policy is, or that it has none.

Parsing and schema validation already happened in ``load_config`` (an invalid policy file is the
doctor's ``configuration`` FAIL row, naming the file and line); this adds one row per store so
an operator sees which file is in force and is told to replace deprecated deny rules.
"""

from __future__ import annotations

from typing import Any


def check_policies(report: Any, config: Any) -> None:
    from xksproxy.admin.doctor import OK, WARN

    for store in config.keystores:
        name = f"policy {store.name}"
        compiled = store.policy
        if compiled is None:
            report.add(name, OK, "no Cedar policy: every authenticated request is allowed")
            continue
        source = str(compiled.path) if compiled.path is not None else "deny rules only"
        detail = f"{source}: {len(compiled.ids)} Cedar policies, valid against the schema"
        if compiled.permits == 0:
            report.add(
                name,
                WARN,
                f"{detail}; no permit policy, so every key operation is denied (403)",
                "add a permit policy if the store should serve requests",
            )
        elif store.deny:
            report.add(
                name,
                WARN,
                f"{detail}; {len(store.deny)} deprecated [[keystore.deny]] rule(s) translated",
                f'move them into a Cedar policy file (policy = "policies/{store.name}.cedar")',
            )
        else:
            report.add(name, OK, detail)
