"""kmsemu: a local AWS KMS that calls real XKS proxies, as KMS does.

It speaks KMS's JSON 1.1 wire protocol (so boto3, the AWS CLI and the AWS Encryption SDK work
against it unchanged), keeps key stores, keys and KMS-side key material in SQLite, and talks to
external key store proxies over HTTPS with SigV4 (service ``kms-xks-proxy``), a 250 ms deadline
and one retry. It depends on ``sigv4`` and an HTTP stack only, never on ``xksproxy`` or ``hsm``.

Modules: :mod:`kmsemu.protocol` (wire format, errors), :mod:`kmsemu.store` (SQLite),
:mod:`kmsemu.xksclient` (calls to proxies), :mod:`kmsemu.mapping` (proxy failures to KMS
errors), :mod:`kmsemu.crypto` (local layer, AAD, ciphertext blob layout),
:mod:`kmsemu.operations` (one coroutine per KMS operation), :mod:`kmsemu.app` (starlette),
:mod:`kmsemu.cli` (``main(argv)``).
"""
