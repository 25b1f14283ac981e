"""mimkit.faces: domain subpackage (see shared/DESIGN.md)."""
