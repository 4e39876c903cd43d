"""Write the broker's password/ACL files (server + enabled devices); optionally a Mosquitto config."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandParser

from accessctl.project.mqtt_identities import mosquitto_conf, secret_write
from devices.broker_auth import broker_identities_sync


class Command(BaseCommand):
    help = "Write the MQTT broker's identity files (Mosquitto password_file/acl_file format) under MQTT_AUTH_DIR."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--mosquitto-conf", type=Path, help="also write a Mosquitto 2.0 config using the files")
        parser.add_argument("--device-port", type=int, default=8883, help="Mosquitto listener for devices")
        parser.add_argument("--server-port", type=int, default=1884, help="Mosquitto listener for the server")
        parser.add_argument("--server-host", default="127.0.0.1", help="address of the server listener")

    def handle(self, *args: object, **options: object) -> None:
        folder = broker_identities_sync()
        self.stdout.write(f"broker identity files in {folder} (send Mosquitto a SIGHUP after each change)")
        conf: Path | None = options["mosquitto_conf"]  # type: ignore[assignment]
        if conf:
            secret_write(
                conf,
                mosquitto_conf(
                    auth_dir=folder,
                    device_port=int(options["device_port"]),  # type: ignore[arg-type]
                    server_port=int(options["server_port"]),  # type: ignore[arg-type]
                    server_host=str(options["server_host"]),
                ),
            )
            self.stdout.write(f"wrote {conf}")
