"""Key labels provisioned by the ``hsm_token`` fixture (tests/conftest.py)."""

DEMO_KEYS = {
    "demo": "encrypt-decrypt",
    "demo-encrypt-only": "encrypt",
    "demo-decrypt-only": "decrypt",
    "demo-no-usage": "none",
}
HEALTH_KEY_LABEL = "xks-health-test"
# Known AES-256 material (tests only) so reference ciphertext can be made with `cryptography`.
KNOWN_KEY_LABEL = "test-known-material"
KNOWN_KEY_MATERIAL = bytes(range(32))
