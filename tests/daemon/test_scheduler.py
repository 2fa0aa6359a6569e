"""The running scheduler plans each schedule's next tick as cron would (APScheduler is real here)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from stsync_daemon.config import ScheduleConfig
from stsync_daemon.daemon.scheduler import Scheduler
from stsync_daemon.metrics import Metrics


async def _never(schedule: ScheduleConfig, scheduled_for: datetime) -> str:
    raise AssertionError("no tick is due during this test")


async def test_next_fire_times_follow_cron_day_rules() -> None:
    schedules = (
        ScheduleConfig(name="first-or-monday", cron="0 0 1 * mon"),
        ScheduleConfig(name="every-other-day", cron="0 12 * * */2", timezone="Europe/Berlin"),
        ScheduleConfig(name="weekdays", cron="30 6 * * 1-5", timezone="America/New_York"),
    )
    scheduler = Scheduler(schedules, _never, Metrics(), misfire_grace_seconds=300)
    scheduler.start()
    try:
        now = datetime.now(UTC)
        views = {view["name"]: view for view in scheduler.views()}
    finally:
        scheduler.shutdown()
    for schedule in schedules:
        zone = ZoneInfo(schedule.timezone)
        expected = croniter(schedule.cron, now.astimezone(zone)).get_next(datetime)
        planned = views[schedule.name]["next_fire_at"]
        assert planned is not None
        assert datetime.fromisoformat(planned) == expected.astimezone(UTC), schedule.name
