"""Cedar policy files for secondary authorization: the model, the schema, loading and checking.

Why a wing of its own, below ``config``: a key store's policy file is part of its configuration,
so it is parsed and validated against the shipped schema when the configuration loads (a bad
policy is a :class:`~xksproxy.config.ConfigError` naming the file and line, at start, on reload
and in ``xksproxy doctor``), and the compiled handles are built once per (re)load.  The request
path's decision (context, cache, 403) is :mod:`xksproxy.keys.policy`.

Importing this package imports no ``cedarpy``: only a store that has a policy loads it.

- :mod:`.model`: the entity/action model (names, context attributes) — the one home of both;
- :mod:`.source`: where each policy of a file starts (Cedar reports no source positions);
- :mod:`.legacy`: ``[[keystore.deny]]`` rules translated to Cedar ``forbid`` policies;
- :mod:`.compiled`: :func:`compile_policy` -> :class:`CompiledPolicy` (or :class:`PolicyError`).
"""

from xksproxy.authz.compiled import CompiledPolicy, PolicyError, compile_policy

__all__ = ["CompiledPolicy", "PolicyError", "compile_policy"]
