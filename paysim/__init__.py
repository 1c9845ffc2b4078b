"""paysim: a command-line card-payment simulator and load tool on Apache Kafka and Redis."""

from paysim.infra import compiled as _compiled

__version__ = "0.1.0"

# Before any other paysim module loads: the hot modules' Cython builds, where current.
_compiled.install()
