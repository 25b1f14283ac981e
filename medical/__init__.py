"""mimkit.medical: domain subpackage (see shared/DESIGN.md)."""
