from django.apps import AppConfig


class AccessctlConfig(AppConfig):
    name = "accessctl"
    verbose_name = "Access control"

    def ready(self) -> None:
        # Webhook deliveries are sent by a Celery task; the tasks import the delivery side, so the
        # fan-out (accessctl.webhooks) is handed the task here rather than importing it.
        from accessctl import tasks, webhooks

        webhooks.webhook_sender_register(tasks.webhook_deliver.delay)
