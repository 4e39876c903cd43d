"""accessctl: the core access-control domain, and (``accessctl.project``) the Django project that wires the apps."""
