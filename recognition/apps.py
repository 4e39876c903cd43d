from django.apps import AppConfig


class RecognitionConfig(AppConfig):
    name = "recognition"
    verbose_name = "Face recognition"

    def ready(self) -> None:
        from accessctl.metrics import collector_register
        from recognition.metric_gauges import broker_gauges, recognition_gauges

        # The staged queue and the gallery, read at each /metrics scrape; the broker's queue apart.
        collector_register("recognition", recognition_gauges)
        collector_register("broker", broker_gauges)
