from django.apps import AppConfig


class AccessctlConfig(AppConfig):
    name = "accessctl"
    verbose_name = "Access control"

    def ready(self) -> None:
        # Webhook deliveries are sent by a Celery task; the tasks import the delivery side, so the
        # fan-out (accessctl.webhooks) is handed the task here rather than importing it.
        from accessctl import tasks, webhooks

        webhooks.webhook_sender_register(tasks.webhook_deliver.delay)

        # Gauges read at each /metrics scrape; the apps above register theirs the same way.
        from accessctl.metric_gauges import domain_gauges, heartbeat_gauges
        from accessctl.metrics import collector_register

        collector_register("accessctl", domain_gauges)
        collector_register("heartbeats", heartbeat_gauges)
