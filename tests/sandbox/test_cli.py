"""`stsync-sandbox`: help, one-line errors, a tenants file, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from stsync_daemon.sandbox.__main__ import build_parser, config_from_args

COMMAND = [sys.executable, "-m", "stsync_daemon.sandbox"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_help_documents_the_options() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for option in (
        "--host",
        "--port",
        "--tenants",
        "--token-ttl",
        "--rate-limit",
        "--page-size",
        "--seed",
        "--latency-ms",
        "--fault-429",
        "--fault-drop",
        "--fault-repeat-token",
        "--export-token-ttl",
        "--export-order",
    ):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--bogus",), "unrecognized arguments"),
        (("--port", "x"), "invalid int value"),
        (("--page-size", "0"), "export_page_size"),
        (("--fault-500", "2"), "server_error_share"),
        (("--tenants", "/no/such/file.toml"), "not found"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args: tuple[str, ...], fragment: str) -> None:
    result = _run(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_tenants_file(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(
        'app_keys = ["my-app"]\n'
        "token_ttl_seconds = 30\n"
        "[[tenants]]\n"
        'tenant_id = 42\nenvironment = "integration"\nclient_id = "a"\nclient_secret = "b"\n'
        "customers = 10\ninvoices = 5\nseed = 3\n"
    )
    args = build_parser().parse_args(["--tenants", str(path), "--rate-limit", "10"])
    config = config_from_args(args)
    assert config.app_keys == ("my-app",)
    assert config.token_ttl_seconds == 30 and config.rate_limit_per_second == 10
    assert [(t.tenant_id, t.environment.value) for t in config.tenants] == [(42, "integration")]
    bad = tmp_path / "bad.json"
    bad.write_text('{"tenants": [{"tenant_id": 1}]}')
    result = _run("--tenants", str(bad))
    assert result.returncode == 2 and "tenants.0" in result.stderr


def test_fault_test_options() -> None:
    args = build_parser().parse_args(
        [
            "--export-order",
            "unsorted",
            "--export-token-ttl",
            "30",
            "--fault-repeat-token",
            "0.25",
        ]
    )
    config = config_from_args(args)
    assert config.export_order == "unsorted" and config.export_token_ttl_seconds == 30
    assert config.faults[-1].repeat_token_share == 0.25
    defaults = config_from_args(build_parser().parse_args([]))
    assert defaults.export_order == "modified" and defaults.export_token_ttl_seconds is None
    assert defaults.faults == ()
    aimed = config_from_args(
        build_parser().parse_args(["--fault-500", "1", "--fault-endpoint", "invoices_list"])
    )
    assert aimed.faults[-1].endpoint == "invoices_list"
    assert aimed.faults[-1].server_error_share == 1
    # An endpoint alone injects nothing: no rule.
    assert (
        config_from_args(build_parser().parse_args(["--fault-endpoint", "customers_list"])).faults
        == ()
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--fault-endpoint", "token"])


async def test_runs_demo_tenants_and_stops_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        "--port",
        "0",
        "--json",
        "--customers",
        "20",
        "--invoices",
        "10",
        "--log-level",
        "WARNING",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        info = json.loads(line)
        tenants = info["tenants"]
        assert sorted((t["environment"], t["tenant_id"]) for t in tenants) == [
            ("integration", 2001),
            ("integration", 2002),
            ("production", 1001),
            ("production", 1002),
        ]
        prod = next(t for t in tenants if t["tenant_id"] == 1001)
        urls = info["environments"]["production"]
        async with aiohttp.ClientSession() as session:
            form = {
                "grant_type": "client_credentials",
                "client_id": prod["client_id"],
                "client_secret": prod["client_secret"],
            }
            async with session.post(urls["auth_url"] + "/connect/token", data=form) as response:
                token = (await response.json())["access_token"]
            headers = {"Authorization": token, "ST-App-Key": info["app_keys"][0]}
            url = urls["api_url"] + "/crm/v2/tenant/1001/export/customers"
            async with session.get(url, headers=headers) as response:
                assert response.status == 200
                assert len((await response.json())["data"]) == 20
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(process.wait(), 10)
    assert returncode == 0
    assert process.stderr is not None
    assert "Traceback" not in (await process.stderr.read()).decode()
