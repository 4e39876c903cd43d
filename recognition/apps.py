from django.apps import AppConfig


class RecognitionConfig(AppConfig):
    name = "recognition"
    verbose_name = "Face recognition"

    def ready(self) -> None:
        from accessctl.metrics import collector_register
        from accessctl.selectors import door_recognition_health_register
        from recognition.health import door_health_summaries
        from recognition.metric_gauges import broker_gauges, recognition_gauges

        # Dashboard tiles show each door's recognition health (accessctl does not import recognition).
        door_recognition_health_register(door_health_summaries)

        # The staged queue and the gallery, read at each /metrics scrape; the broker's queue apart.
        collector_register("recognition", recognition_gauges)
        collector_register("broker", broker_gauges)
