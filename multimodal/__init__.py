"""mimkit.multimodal: domain subpackage (see shared/DESIGN.md)."""
