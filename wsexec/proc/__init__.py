"""Handler processes: spawning, reaping, stderr, stdout framing."""
