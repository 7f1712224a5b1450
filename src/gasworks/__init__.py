"""gasworks: every yuan a resident pays becomes gas at their meter, and the system can prove it."""
