from django.apps import AppConfig


class AccessctlConfig(AppConfig):
    name = "accessctl"
    verbose_name = "Access control"
