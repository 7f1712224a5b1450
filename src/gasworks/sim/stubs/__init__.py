"""Local stand-ins for outside platforms, speaking their documented protocols over real HTTP."""
