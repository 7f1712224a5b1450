"""The city simulator: meters, channels and faults that drive gasworks through its real interfaces."""
