import datetime

import jobs
from hello_plugin.models import HelloGreeting


@jobs.actor("hello.deliver", time_limit=datetime.timedelta(seconds=30), max_retries=3)
def deliver(greeting_id: int) -> None:
    """Mark a greeting delivered. Safe to run twice: the first delivery time is kept."""
    (
        HelloGreeting.update(delivered_at=datetime.datetime.now(datetime.UTC))
        .where(HelloGreeting.id == greeting_id, HelloGreeting.delivered_at.is_null())
        .execute()
    )
