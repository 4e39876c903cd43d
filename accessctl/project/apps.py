from django.apps import AppConfig


class ProjectConfig(AppConfig):
    """The project as an app: its management commands (``up``, ``migrate``, ``flush``) and the
    database role checks."""

    name = "accessctl.project"
    label = "project"
    verbose_name = "accessctl project"

    def ready(self) -> None:
        from django.apps import apps
        from django.core import checks
        from django.db.models.signals import post_migrate

        from accessctl.project.dbroles import db_roles_check, post_migrate_privileges

        checks.register(db_roles_check)
        post_migrate.connect(
            post_migrate_privileges, sender=apps.get_app_config("accessctl"), dispatch_uid="accessctl.db_privileges"
        )
