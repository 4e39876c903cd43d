"""Create an edge device, print its config and write its private key (shown once, never stored)."""

from __future__ import annotations

import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accessctl.models import Door
from devices.provisioning import agent_config, device_provision


class Command(BaseCommand):
    help = "Provision an edge device: Ed25519 key pair, registry entry, agent config."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("uid", help="device id (used in MQTT topics)")
        parser.add_argument("--door", help="name of the door this device watches")
        parser.add_argument("--name", default="", help="human-readable name")
        parser.add_argument("--out", type=Path, help="folder to write device.key (0600) and agent.toml into")
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
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(provisioned.private_key_pem)
            (out / "agent.toml").write_text(config)
            self.stdout.write(f"wrote {key_file} (keep it secret) and {out / 'agent.toml'}")
        else:
            self.stdout.write("# device private key (store as device.key, mode 0600; not kept on the server):")
            self.stdout.write(provisioned.private_key_pem)
        self.stdout.write(config)
        self.stdout.write(self.style.SUCCESS(f"device {provisioned.device.uid} provisioned"))
