"""One real ``xksproxy serve`` (started through the CLI, plain HTTP, one worker) for the whole
adversarial suite, built with the conformance harness so both suites start servers the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from adversarial_helpers import Target
from server_harness import init_state, start_server


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    state = init_state(tmp_path_factory.mktemp("adv-state"))
    server = start_server(state, log_name="adversarial")
    yield Target(server=server, cred=state.demo.creds[0], prefix=state.demo.prefix)
    server.stop()
