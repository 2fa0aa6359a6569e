"""Metrics operators alert on: Prometheus naming rules, bounded labels, counters that move."""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from stsync_daemon.enums import (
    CredentialStatus,
    DataType,
    Environment,
    ErrorCategory,
    SyncStatus,
    Trigger,
)
from stsync_daemon.metrics import MAX_FREE_LABEL_VALUES, Metrics, status_class
from stsync_daemon.metrics_server import start_metrics_server
from tests.support import promtool

PROD = Environment.PRODUCTION
CUST = DataType.CUSTOMERS
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

EXPECTED_FAMILIES = {
    "stsync_syncs_total": {"environment", "data_type", "status"},
    "stsync_sync_failures_total": {"environment", "data_type", "category"},
    "stsync_sync_duration_seconds": {"environment", "data_type"},
    "stsync_records_total": {"environment", "data_type", "outcome"},
    "stsync_syncs_running": {"environment", "data_type"},
    "stsync_last_success_timestamp_seconds": {
        "credential_id",
        "company_id",
        "environment",
        "data_type",
    },
    "stsync_credentials": {"status"},
    "stsync_scheduled_credentials": {"environment", "status"},
    "stsync_stale_credentials": {"environment", "data_type"},
    "stsync_oldest_success_timestamp_seconds": {"environment", "data_type"},
    "stsync_database_up": set(),
    "stsync_api_requests_total": {"environment", "endpoint", "status_class"},
    "stsync_api_request_duration_seconds": {"environment", "endpoint"},
    "stsync_rate_limit_waits_total": {"environment", "reason"},
    "stsync_rate_limit_wait_seconds_total": {"environment", "reason"},
    "stsync_token_refreshes_total": {"environment", "outcome"},
    "stsync_api_retries_total": {"environment", "reason"},
    "stsync_schedule_runs_total": {"schedule"},
    "stsync_schedule_skips_total": {"schedule", "reason"},
    "stsync_schedule_misfires_total": {"schedule"},
    "stsync_schedule_next_fire_timestamp_seconds": {"schedule"},
    "stsync_schedule_last_fire_timestamp_seconds": {"schedule"},
    "stsync_runs_total": {"action", "trigger", "status"},
    "stsync_build_info": {"version"},
}


def exercised() -> Metrics:
    """A Metrics on which every method has been called once, so every family has samples."""
    m = Metrics(per_credential=True)
    m.schedules_configured(["hourly-production"])
    m.sync_started(PROD, CUST)
    m.sync_finished(PROD, CUST, SyncStatus.FAILED, ErrorCategory.AUTH, 12.5, 40, 2)
    m.last_success("7", "1234567", PROD, CUST, NOW)
    m.credentials_by_status({CredentialStatus.ACTIVE: 3, CredentialStatus.ERROR: 1})
    m.scheduled_by_status({("production", "error"): 1})
    m.freshness([("production", "customers", 2, NOW)])
    m.database(True)
    m.request_finished(PROD, "crm/customers", 200, 0.3)
    m.request_finished(PROD, "crm/customers", None, 1.0)
    m.rate_limit_waited(PROD, 0.5, "429")
    m.token_refreshed(PROD, "ok")
    m.retried(PROD, "429")
    m.schedule_fired("hourly-production", NOW)
    m.schedule_skipped("hourly-production", "still_running")
    m.schedule_misfired("hourly-production")
    m.schedule_next_fire("hourly-production", NOW + timedelta(hours=1))
    m.run_finished("process", Trigger.SCHEDULED, "completed")
    return m


def families(m: Metrics) -> dict[str, set[str]]:
    """Exposed sample name -> label names, as a scraper sees them."""
    seen: dict[str, set[str]] = {}
    for family in m.registry.collect():
        for sample in family.samples:
            name = sample.name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
            seen.setdefault(name, set()).update(set(sample.labels) - {"le"})
    return seen


def test_every_metric_is_exposed_with_its_labels() -> None:
    text = exercised().render().decode()
    exposed = families(exercised())
    for name, labels in EXPECTED_FAMILIES.items():
        assert f"\n{name}" in text or text.startswith(name), name
        assert exposed[name] == labels, name


def test_closed_label_sets_exist_at_zero_before_anything_happens() -> None:
    m = Metrics()
    sample = m.registry.get_sample_value
    for env in Environment:
        for dt in DataType:
            assert sample("stsync_syncs_running", {"environment": env, "data_type": dt}) == 0
            key: dict[str, str] = {"environment": env, "data_type": dt}
            for cat in ErrorCategory:
                assert sample("stsync_sync_failures_total", {**key, "category": cat}) == 0
            for status in SyncStatus:
                expected = None if status is SyncStatus.RUNNING else 0
                assert sample("stsync_syncs_total", {**key, "status": status}) == expected
        assert sample("stsync_token_refreshes_total", {"environment": env, "outcome": "ok"}) == 0
    for cred_status in CredentialStatus:
        assert sample("stsync_credentials", {"status": cred_status}) == 0
    for env in Environment:
        assert sample("stsync_scheduled_credentials", {"environment": env, "status": "error"}) == 0
        for dt in DataType:
            assert sample("stsync_stale_credentials", {"environment": env, "data_type": dt}) == 0
    # Unproven until the first heartbeat answers.
    assert sample("stsync_database_up") == 0
    assert sample("stsync_build_info", {"version": "0.1.0"}) == 1


def test_per_credential_series_are_opt_in() -> None:
    """10,000 tenants must not mean 20,000 series unless the operator asks for them."""
    default = Metrics()
    default.last_success("7", "111", PROD, CUST, NOW)
    default.replace_last_success([("7", "111", "production", "customers", NOW)])
    text = default.render().decode()
    assert "stsync_last_success_timestamp_seconds" not in text
    opted = Metrics(per_credential=True)
    opted.last_success("7", "111", PROD, CUST, NOW)
    assert 'stsync_last_success_timestamp_seconds{company_id="111"' in opted.render().decode()


def test_replacing_last_success_keeps_only_the_given_pairs() -> None:
    """The database's truth replaces this instance's copies: newer values, and no unscheduled pair."""
    m = Metrics(per_credential=True)
    sample = m.registry.get_sample_value
    m.last_success("7", "111", PROD, CUST, NOW)
    m.last_success("8", "222", PROD, CUST, NOW)  # e.g. a manual sync of an unscheduled credential
    later = NOW + timedelta(hours=1)
    m.replace_last_success([("7", "111", "production", "customers", later)])
    labels = {"credential_id": "7", "company_id": "111", "environment": "production"}
    assert sample(
        "stsync_last_success_timestamp_seconds", {**labels, "data_type": "customers"}
    ) == (later.timestamp())
    assert 'credential_id="8"' not in m.render().decode()
    m.replace_last_success([])
    assert "credential_id=" not in m.render().decode()


def test_freshness_and_scheduled_counts_reset_what_is_gone() -> None:
    m = Metrics()
    sample = m.registry.get_sample_value
    key = {"environment": "production", "data_type": "invoices"}
    m.freshness([("production", "invoices", 3, NOW)])
    assert sample("stsync_stale_credentials", key) == 3
    assert sample("stsync_oldest_success_timestamp_seconds", key) == NOW.timestamp()
    m.freshness([])  # nothing scheduled any more
    assert sample("stsync_stale_credentials", key) == 0
    assert sample("stsync_oldest_success_timestamp_seconds", key) is None
    m.scheduled_by_status({("integration", "error"): 2})
    assert (
        sample("stsync_scheduled_credentials", {"environment": "integration", "status": "error"})
        == 2
    )
    m.scheduled_by_status({})
    assert (
        sample("stsync_scheduled_credentials", {"environment": "integration", "status": "error"})
        == 0
    )


def test_promtool_check_metrics_accepts_the_output() -> None:
    result = subprocess.run(
        [promtool(), "check", "metrics"],
        input=exercised().render(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"" and result.stderr.strip() == b""


def test_counters_move() -> None:
    m = Metrics()
    sample = m.registry.get_sample_value
    m.sync_started(PROD, CUST)
    assert (
        sample("stsync_syncs_running", {"environment": "production", "data_type": "customers"}) == 1
    )
    m.sync_finished(PROD, CUST, SyncStatus.TIMED_OUT, ErrorCategory.TIMEOUT, 3600.0, 500, 3)
    key = {"environment": "production", "data_type": "customers"}
    assert sample("stsync_syncs_running", key) == 0
    assert sample("stsync_syncs_total", {**key, "status": "timed_out"}) == 1
    assert sample("stsync_sync_failures_total", {**key, "category": "timeout"}) == 1
    assert sample("stsync_records_total", {**key, "outcome": "successful"}) == 500
    assert sample("stsync_records_total", {**key, "outcome": "failed"}) == 3
    assert sample("stsync_sync_duration_seconds_sum", key) == 3600.0
    assert sample("stsync_sync_duration_seconds_bucket", {**key, "le": "1800.0"}) == 0
    assert sample("stsync_sync_duration_seconds_bucket", {**key, "le": "3600.0"}) == 1

    m.sync_started(PROD, CUST)
    m.sync_finished(PROD, CUST, SyncStatus.COMPLETED, None, 2.0, 10, 0)
    assert sample("stsync_syncs_total", {**key, "status": "completed"}) == 1
    assert (
        sum(
            sample("stsync_sync_failures_total", {**key, "category": c}) or 0 for c in ErrorCategory
        )
        == 1
    )

    m.request_finished(PROD, "crm/customers", 429, 0.1)
    m.request_finished(PROD, "crm/customers", 503, 0.1)
    m.request_finished(PROD, "crm/customers", None, 0.1)
    api = {"environment": "production", "endpoint": "crm/customers"}
    for cls in ("429", "5xx", "error"):
        assert sample("stsync_api_requests_total", {**api, "status_class": cls}) == 1
    assert sample("stsync_api_request_duration_seconds_count", api) == 3

    m.rate_limit_waited(PROD, 1.5, "proactive")
    m.rate_limit_waited(PROD, 2.0, "proactive")
    rl = {"environment": "production", "reason": "proactive"}
    assert sample("stsync_rate_limit_waits_total", rl) == 2
    assert sample("stsync_rate_limit_wait_seconds_total", rl) == 3.5
    m.token_refreshed(PROD, "error")
    assert (
        sample("stsync_token_refreshes_total", {"environment": "production", "outcome": "error"})
        == 1
    )
    m.retried(PROD, "network")
    assert (
        sample("stsync_api_retries_total", {"environment": "production", "reason": "network"}) == 1
    )

    m.run_finished("retry", Trigger.MANUAL, "failed")
    runs = {"action": "retry", "trigger": "manual", "status": "failed"}
    assert sample("stsync_runs_total", runs) == 1

    m.credentials_by_status({CredentialStatus.ACTIVE: 5})
    m.credentials_by_status({CredentialStatus.DISABLED: 1})
    assert sample("stsync_credentials", {"status": "active"}) == 0
    assert sample("stsync_credentials", {"status": "disabled"}) == 1


def test_schedule_series() -> None:
    m = Metrics()
    sample = m.registry.get_sample_value
    m.schedules_configured(["nightly"])
    assert sample("stsync_schedule_runs_total", {"schedule": "nightly"}) == 0
    assert (
        sample(
            "stsync_schedule_skips_total", {"schedule": "nightly", "reason": "claimed_elsewhere"}
        )
        == 0
    )
    m.schedule_fired("nightly", NOW)
    m.schedule_skipped("nightly", "claimed_elsewhere")
    m.schedule_misfired("nightly")
    m.schedule_next_fire("nightly", NOW + timedelta(days=1))
    assert sample("stsync_schedule_runs_total", {"schedule": "nightly"}) == 1
    assert (
        sample("stsync_schedule_last_fire_timestamp_seconds", {"schedule": "nightly"})
        == NOW.timestamp()
    )
    assert (
        sample("stsync_schedule_next_fire_timestamp_seconds", {"schedule": "nightly"})
        == (NOW + timedelta(days=1)).timestamp()
    )
    assert sample("stsync_schedule_misfires_total", {"schedule": "nightly"}) == 1
    m.schedule_next_fire("nightly", None)
    m.schedule_next_fire("nightly", None)
    assert sample("stsync_schedule_next_fire_timestamp_seconds", {"schedule": "nightly"}) is None
    with pytest.raises(ValueError, match="skip reason"):
        m.schedule_skipped("nightly", "bored")


def test_last_success_per_credential_and_forgetting_it() -> None:
    m = Metrics(per_credential=True)
    sample = m.registry.get_sample_value
    labels = {
        "credential_id": "7",
        "company_id": "111",
        "environment": "production",
        "data_type": "invoices",
    }
    m.last_success("7", "111", PROD, DataType.INVOICES, NOW)
    assert sample("stsync_last_success_timestamp_seconds", labels) == NOW.timestamp()
    # The credential's company id was corrected: the old series goes, not a stale duplicate.
    m.last_success("7", "222", PROD, DataType.INVOICES, NOW)
    assert sample("stsync_last_success_timestamp_seconds", labels) is None
    m.last_success("8", "333", PROD, DataType.INVOICES, NOW)
    m.forget_credential("7")
    m.forget_credential("does-not-exist")
    text = m.render().decode()
    assert 'credential_id="7"' not in text
    assert 'credential_id="8"' in text
    with pytest.raises(ValueError, match="timezone-aware"):
        m.last_success("8", "333", PROD, CUST, datetime(2025, 1, 1))  # noqa: DTZ001


def test_no_secret_looking_label_and_free_labels_are_bounded() -> None:
    m = exercised()
    secretish = re.compile(r"secret|token|password|key|authorization|dsn", re.IGNORECASE)
    for name, labels in families(m).items():
        assert not any(secretish.search(label) for label in labels), name
    for i in range(MAX_FREE_LABEL_VALUES + 10):
        m.request_finished(PROD, f"crm/customers/{i}", 200, 0.1)
    endpoints = {
        s.labels["endpoint"]
        for f in m.registry.collect()
        if f.name == "stsync_api_requests"
        for s in f.samples
    }
    assert len(endpoints) <= MAX_FREE_LABEL_VALUES + 1
    assert "other" in endpoints


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, "2xx"),
        (204, "2xx"),
        (301, "3xx"),
        (404, "4xx"),
        (429, "429"),
        (500, "5xx"),
        (None, "error"),
        (999, "error"),
    ],
)
def test_status_class(status: int | None, expected: str) -> None:
    assert status_class(status) == expected


async def test_metrics_server_serves_metrics_and_health() -> None:
    m = exercised()
    verdict: tuple[str, list[str]] = ("ok", [])
    runner = await start_metrics_server(m, "127.0.0.1", 0, verdict=lambda: verdict)
    try:
        host, port = runner.addresses[0][:2]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{host}:{port}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                body = await resp.text()
            assert "stsync_syncs_total" in body
            assert "process_cpu_seconds_total" in body
            async with session.get(f"http://{host}:{port}/healthz") as resp:
                assert resp.status == 200
            verdict = ("unhealthy", ["background loop claims keeps failing"])
            async with session.get(f"http://{host}:{port}/healthz") as resp:
                assert resp.status == 503
                assert await resp.text() == "unhealthy\nbackground loop claims keeps failing\n"
    finally:
        await runner.cleanup()
