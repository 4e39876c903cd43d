#!/bin/sh
# Install pgvector into the distribution's PostgreSQL (Debian/Ubuntu), for deploy/topology.py and any
# server accessctl's DATABASE_URL points at. Run as root. PG_MAJOR: the server's major version [15].
#
# 1. The distribution's package when it has one (Debian 13, Ubuntu 24.04: postgresql-<major>-pgvector).
# 2. Else (Debian 12 has none for PostgreSQL 15): build Debian's own pgvector source package against
#    the installed server: its headers from postgresql-server-dev-<major>, the source from the
#    distribution's next release (deb-src, PGVECTOR_SUITE [trixie]), `make install` with pg_config.
# Then, once per database, a superuser runs CREATE EXTENSION vector (`manage.py db_provision` does).
set -eu
PG_MAJOR="${PG_MAJOR:-15}"
SUITE="${PGVECTOR_SUITE:-trixie}"
PG_CONFIG="/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config"

if [ -e "/usr/share/postgresql/${PG_MAJOR}/extension/vector.control" ]; then
    echo "pgvector is already installed for PostgreSQL ${PG_MAJOR}"
    exit 0
fi
apt-get update -q
if apt-get install -y -q "postgresql-${PG_MAJOR}-pgvector" 2>/dev/null; then
    echo "installed postgresql-${PG_MAJOR}-pgvector"
    exit 0
fi

echo "no postgresql-${PG_MAJOR}-pgvector package: building Debian's pgvector source package (${SUITE})"
apt-get install -y -q --no-install-recommends "postgresql-server-dev-${PG_MAJOR}" build-essential dpkg-dev
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/sources"
cat > "$work/sources/pgvector-src.sources" <<SOURCES
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: ${SUITE}
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
: > "$work/empty.list"
apt_src="-o Dir::Etc::sourceparts=$work/sources -o Dir::Etc::sourcelist=$work/empty.list -o APT::Get::List-Cleanup=false"
# shellcheck disable=SC2086
apt-get $apt_src update -q
cd "$work"
# shellcheck disable=SC2086
apt-get $apt_src source --download-only pgvector
tar xzf pgvector_*.orig.tar.gz
cd pgvector-*/
make PG_CONFIG="$PG_CONFIG" OPTFLAGS=""
make PG_CONFIG="$PG_CONFIG" install
apt-get update -q  # back to the machine's own package lists
echo "pgvector $(sed -n "s/default_version = '\(.*\)'/\1/p" vector.control) installed for PostgreSQL ${PG_MAJOR}"
