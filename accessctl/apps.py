from django.apps import AppConfig


class AccessctlConfig(AppConfig):
    name = "accessctl"
    verbose_name = "Access control"

    def ready(self) -> None:
        from django.core import checks
        from django.db.models.signals import post_migrate

        from accessctl.dbroles import db_roles_check, post_migrate_privileges

        checks.register(db_roles_check)
        post_migrate.connect(post_migrate_privileges, sender=self, dispatch_uid="accessctl.db_privileges")
