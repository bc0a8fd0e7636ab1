"""The health agent: readiness-ordered start-up, restarts on crash and hang, status everywhere."""
