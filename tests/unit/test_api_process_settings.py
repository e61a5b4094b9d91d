"""BILLING_GRPC_PROCESSES: the settings it needs and what each extra process gets."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from billing.api_processes import settings_of_process
from billing.config import Settings


def test_several_processes_need_fixed_ports():
    with pytest.raises(ValidationError, match="BILLING_GRPC_PROCESSES > 1 needs a fixed BILLING_GRPC_PORT"):
        Settings(grpc_processes=2, grpc_port=0)
    with pytest.raises(ValidationError, match="grpc_processes"):
        Settings(grpc_processes=0)
    assert Settings(grpc_processes=1, grpc_port=0).grpc_processes == 1


def test_each_extra_process_takes_the_next_http_port_and_shares_the_grpc_port():
    s = Settings(grpc_processes=3, grpc_port=50100, http_port=8100)
    assert [(settings_of_process(s, i).http_port, settings_of_process(s, i).grpc_port) for i in (1, 2)] == \
        [(8101, 50100), (8102, 50100)]
    for bad in (0, 3):
        with pytest.raises(ValueError, match="--api-process must be 1..2"):
            settings_of_process(s, bad)
