from django.apps import AppConfig


class DevicesConfig(AppConfig):
    name = "devices"
    verbose_name = "Edge devices"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from accessctl.door_commands import door_commands_register
        from accessctl.selectors import door_devices_register
        from devices import tasks
        from devices.allowlist_triggers import allowlist_tasks_register, allowlist_triggers_connect
        from devices.broker_auth import device_changed
        from devices.commands import MqttDoorCommands
        from devices.models import EdgeDevice
        from devices.selectors import devices_running_model, door_devices_prefetch
        from recognition.model_registry import model_users_register

        # The domain asks for door commands and shows devices through its interfaces; this app answers.
        door_commands_register(MqttDoorCommands())
        door_devices_register(door_devices_prefetch)
        # The model registry asks which devices still run a version before retiring it.
        model_users_register(devices_running_model)
        from accessctl.metrics import collector_register
        from devices.metric_gauges import device_gauges

        collector_register("devices", device_gauges)

        # Disabling, enabling or deleting a device anywhere (admin included) revokes or restores
        # its broker login: the broker's identity files follow the committed registry.
        post_save.connect(device_changed, sender=EdgeDevice, dispatch_uid="devices-broker-identities-save")
        post_delete.connect(device_changed, sender=EdgeDevice, dispatch_uid="devices-broker-identities-delete")

        # Offline allow-lists follow every change that affects them: revoke at once, recompile soon.
        allowlist_triggers_connect()
        allowlist_tasks_register(recompile=tasks.allowlist_door_recompile, push=tasks.allowlist_device_push)
