from django.apps import AppConfig


class RecognitionConfig(AppConfig):
    name = "recognition"
    verbose_name = "Face recognition"

    def ready(self) -> None:
        from accessctl.metrics import collector_register
        from recognition.metric_gauges import recognition_gauges

        # The staged queue and the gallery, read at each /metrics scrape.
        collector_register("recognition", recognition_gauges)
