"""mimkit.remote_sensing: domain subpackage (see shared/DESIGN.md)."""
