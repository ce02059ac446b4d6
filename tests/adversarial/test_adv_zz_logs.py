"""Runs last in this directory: nothing the suite sent as plaintext, AAD or secret reached the
server's stdout/stderr or its audit log, and no request produced a traceback."""

from __future__ import annotations

import base64

from adversarial_helpers import Target
from test_adv_json import MARKER


def test_logs_hold_no_plaintext_secret_or_traceback(target: Target) -> None:
    state = target.server.state
    texts = {"server output": target.server.log_text()}
    for path in sorted((state.path / "audit").glob("*.log*")):
        texts[path.name] = path.read_text(errors="replace")
    forbidden = [
        MARKER.decode(),
        base64.b64encode(MARKER).decode(),
        "Signature=",
        "AWS4-HMAC-SHA256",
        *state.secrets_used,
    ]
    for name, text in texts.items():
        for value in forbidden:
            assert value not in text, f"{name} contains a forbidden value ({value[:12]}...)"
        assert "Traceback" not in text, name
        assert '"level":"error"' not in text, name
