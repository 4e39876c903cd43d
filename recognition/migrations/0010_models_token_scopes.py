"""The model API gets its own token scopes, ``models:read`` and ``models:write`` (it was read with
``devices:read``, and sessions needed ``devices.view_edgedevice``).

Existing tokens keep doing what they did, and nothing more: every token holding ``devices:read``
gets ``models:read``, and every user and group holding ``devices.view_edgedevice`` gets
``recognition.view_modelversion`` (a token's rights are its scopes intersected with its owner's
permissions, ``accessctl/tokens.py``). Nobody gets ``models:write``: moving versions was for
sessions only. The reverse leaves scopes and permissions as they are (it cannot tell what this added
from what was granted since).
"""

from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.db import migrations


def _permission(apps, db: str, app_label: str, codename: str):
    Permission = apps.get_model("auth", "Permission")
    return Permission.objects.using(db).filter(content_type__app_label=app_label, codename=codename).first()


def forwards(apps, schema_editor) -> None:
    db = schema_editor.connection.alias  # the owner's connection (the application's role may not write here yet)
    ApiToken = apps.get_model("accessctl", "ApiToken")
    for token in ApiToken.objects.using(db).only("pk", "scopes"):
        scopes = list(token.scopes or [])
        if "devices:read" in scopes and "models:read" not in scopes:
            token.scopes = [*scopes, "models:read"]
            token.save(update_fields=["scopes"], using=db)
    device_view = _permission(apps, db, "devices", "view_edgedevice")
    if device_view is None:  # a new database: nobody holds it yet
        return
    config = apps.get_app_config("recognition")
    previous = getattr(config, "models_module", None)
    config.models_module = previous or True  # create_permissions skips an app config without models
    try:
        create_permissions(config, apps=apps, verbosity=0, using=db)
    finally:
        config.models_module = previous  # (with the live registry, None would hide the app's models for good)
    model_view = _permission(apps, db, "recognition", "view_modelversion")
    User = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    Group = apps.get_model("auth", "Group")
    for user in User.objects.using(db).filter(user_permissions=device_view).exclude(user_permissions=model_view):
        user.user_permissions.add(model_view)
    for group in Group.objects.using(db).filter(permissions=device_view).exclude(permissions=model_view):
        group.permissions.add(model_view)


class Migration(migrations.Migration):
    dependencies = [
        ("recognition", "0009_shadow_decisions"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
