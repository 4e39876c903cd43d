"""Create an edge device, print its config and write its private key (shown once, never stored)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accessctl.models import Door
from devices.provisioning import agent_config, device_provision, secret_file_write


class Command(BaseCommand):
    help = "Provision an edge device: Ed25519 key pair, broker password, registry entry, agent config."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("uid", help="device id (used in MQTT topics)")
        parser.add_argument("--door", help="name of the door this device watches")
        parser.add_argument("--name", default="", help="human-readable name")
        parser.add_argument("--out", type=Path, help="folder to write device.key and agent.toml (both 0600) into")
        parser.add_argument("--mqtt-url", help="broker URL as seen from the device (default: MQTT_URL)")
        parser.add_argument("--rotate", action="store_true", help="issue a new key for an existing device")

    def handle(self, *args: object, **options: object) -> None:
        door = None
        if options["door"]:
            door = Door.objects.filter(name=options["door"]).first()
            if door is None:
                raise CommandError(f"no door named {options['door']!r}")
        try:
            provisioned = device_provision(
                uid=str(options["uid"]), door=door, name=str(options["name"]), rotate=bool(options["rotate"])
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        out: Path | None = options["out"]  # type: ignore[assignment]
        key_path = str(out / "device.key") if out else "device.key"
        config = agent_config(provisioned, key_path=key_path, mqtt_url=options["mqtt_url"])  # type: ignore[arg-type]
        if out:
            out.mkdir(parents=True, exist_ok=True)
            key_file = out / "device.key"
            secret_file_write(key_file, provisioned.private_key_pem)
            secret_file_write(out / "agent.toml", config)  # holds the device's broker password
            self.stdout.write(f"wrote {key_file} and {out / 'agent.toml'} (both 0600: keep them secret)")
        else:
            self.stdout.write("# device private key (store as device.key, mode 0600; not kept on the server):")
            self.stdout.write(provisioned.private_key_pem)
            self.stdout.write("# agent.toml (mode 0600: it holds the device's broker password):")
            self.stdout.write(config)
        self.stdout.write(self.style.SUCCESS(f"device {provisioned.device.uid} provisioned"))
